#!/usr/bin/env python3
# Usage: python3 benchmarks/cpu-timeline.py <command...>   (issue 17: does the server compute while the workers train?)
# Every ≈ 0.25 s: CPU (cores, over the measured interval) of the server's threads and of Chromium's
# DedicatedWorker threads while a command runs. Processes are found by name: `server` and `chromium`
# (Debian's Chromium; another build's process name would show workers at 0). The log
# benchmarks/server-third-party.log was made by a first version that divided by a nominal 0.25 s.
import os, sys, time, subprocess
HZ = os.sysconf('SC_CLK_TCK')
def snap():
    srv = wrk = 0.0; per = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try: pcomm = open(f'/proc/{pid}/comm').read().strip(); tids = os.listdir(f'/proc/{pid}/task')
        except OSError: continue
        if pcomm not in ('server', 'chromium'): continue
        for tid in tids:
            try: st = open(f'/proc/{pid}/task/{tid}/stat').read()
            except OSError: continue
            r = st.rfind(')'); comm = st[st.find('(')+1:r]; f = st[r+2:].split()
            per[(pid, tid)] = (pcomm, comm, (int(f[11]) + int(f[12])) / HZ)
    return per
prev = snap(); p = subprocess.Popen(sys.argv[1:]); t0 = last = time.time()
while p.poll() is None:
    time.sleep(0.25); cur = snap(); now = time.time(); dt = now - last; last = now
    s = w = 0.0
    for k, (pc, c, t) in cur.items():
        d = t - prev.get(k, (pc, c, 0.0))[2] if k in prev else t
        if d <= 0: continue
        if pc == 'server': s += d
        elif c == 'DedicatedWorker': w += d
    print(f'{now - t0:6.2f}  server {s / dt:4.2f}  workers {w / dt:4.2f}', flush=True)
    prev = cur
