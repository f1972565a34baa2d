#!/usr/bin/env python3
# Usage: python3 benchmarks/cpu-timeline.py <command...>   (issue 17: does the server compute while the workers train?)
# Every ≈ 0.25 s: CPU (cores, over the measured interval) of the server's threads and of Chromium's
# DedicatedWorker threads while a command runs. Processes are found by name: `server` and `chromium`
# (Debian's Chromium; another build's process name would show workers at 0). The log
# benchmarks/server-third-party.log was made by a first version that divided by a nominal 0.25 s.
import importlib.util, os, subprocess, sys, time
# The /proc reading of thread-cpu.py, beside this file.
_spec = importlib.util.spec_from_file_location('thread_cpu', os.path.join(os.path.dirname(__file__), 'thread-cpu.py'))
thread_cpu = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(thread_cpu)
prev = thread_cpu.snap(); p = subprocess.Popen(sys.argv[1:]); t0 = last = time.time()
while p.poll() is None:
    time.sleep(0.25); cur = thread_cpu.snap(); now = time.time(); dt = now - last; last = now
    s = w = 0.0
    for k, (pc, c, t) in cur.items():
        d = t - prev[k][2] if k in prev else t
        if d <= 0: continue
        if pc == 'server': s += d
        elif pc == 'chromium' and c == 'DedicatedWorker': w += d
    print(f'{now - t0:6.2f}  server {s / dt:4.2f}  workers {w / dt:4.2f}', flush=True)
    prev = cur
