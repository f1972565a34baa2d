#!/usr/bin/env python3
# Usage: python3 benchmarks/worker-intervals.py <command...>   (issue 17; log benchmarks/rounds-claims.log)
# Who else runs while a tab's workers train: every ≈ 0.25 s, each thread's CPU over the measured
# interval; an interval is classed by how many of Chromium's DedicatedWorker threads used more than
# half a core in it (1 or 2), and per class the mean cores of each (process, thread) name are
# printed. The poller itself shows as python3.
import collections, importlib.util, os, subprocess, sys, time
# The /proc reading of thread-cpu.py, beside this file.
_spec = importlib.util.spec_from_file_location('thread_cpu', os.path.join(os.path.dirname(__file__), 'thread-cpu.py'))
thread_cpu = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(thread_cpu)
p = subprocess.Popen(sys.argv[1:])
prev = thread_cpu.snap(); last = time.time()
cpu = {1: collections.Counter(), 2: collections.Counter()}; seconds = {1: 0.0, 2: 0.0}
while p.poll() is None:
    time.sleep(0.25); cur = thread_cpu.snap(); now = time.time(); dt = now - last; last = now
    used = collections.Counter(); busy = 0
    for k, (pc, c, t) in cur.items():
        if k not in prev: continue
        d = max(0.0, t - prev[k][2])
        used[(pc, c)] += d
        busy += pc == 'chromium' and c == 'DedicatedWorker' and d / dt > 0.5
    if busy in cpu:
        seconds[busy] += dt; cpu[busy].update(used)
    prev = cur
for b in (1, 2):
    print(f'# intervals with {b} worker thread(s) busy: {seconds[b]:.1f} s; mean cores by (process, thread):')
    for (pc, c), v in cpu[b].most_common(14):
        if v / max(seconds[b], 1e-9) >= 0.005: print(f'  {v / max(seconds[b], 1e-9):5.3f}  {pc} / {c}')
