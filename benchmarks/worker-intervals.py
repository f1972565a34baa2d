#!/usr/bin/env python3
# Usage: python3 benchmarks/worker-intervals.py <command...>   (issue 17; log benchmarks/rounds-claims.log)
# Who else runs while a tab's workers train: every 0.25 s, per-thread CPU deltas; intervals are classed by how many
# DedicatedWorker threads used > 0.5 of a core in them (1 or 2); per class, the mean cores of each (process type, thread).
import os, sys, time, subprocess, collections
HZ = os.sysconf('SC_CLK_TCK')
def ptype(pid):
    try: c = open(f'/proc/{pid}/cmdline','rb').read().split(b'\0')
    except OSError: return '?'
    for a in c:
        if a.startswith(b'--type='): return a[7:].decode()
    return 'main'
def snap():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try: pcomm = open(f'/proc/{pid}/comm').read().strip(); tids = os.listdir(f'/proc/{pid}/task')
        except OSError: continue
        kind = pcomm + ('/' + ptype(pid) if pcomm == 'chromium' else '')
        for tid in tids:
            try: st = open(f'/proc/{pid}/task/{tid}/stat').read()
            except OSError: continue
            r = st.rfind(')'); comm = st[st.find('(')+1:r]; f = st[r+2:].split()
            out[(pid, tid)] = (kind, comm, (int(f[11]) + int(f[12])) / HZ)
    return out
p = subprocess.Popen(sys.argv[1:])
prev = snap(); tprev = time.time()
sums = {1: collections.Counter(), 2: collections.Counter()}; secs = {1: 0.0, 2: 0.0}
while p.poll() is None:
    time.sleep(0.25)
    cur = snap(); t = time.time(); dt = t - tprev
    d = collections.Counter()
    busy = 0
    for k, (kind, comm, c) in cur.items():
        if k in prev:
            x = max(0.0, c - prev[k][2]) / dt
            d[(kind, comm)] += x
            if comm == 'DedicatedWorker' and x > 0.5: busy += 1
    if busy in (1, 2):
        secs[busy] += dt
        for k, v in d.items(): sums[busy][k] += v * dt
    prev, tprev = cur, t
for b in (1, 2):
    print(f'# intervals with {b} worker thread(s) busy: {secs[b]:.1f} s; mean cores by (process, thread):')
    for k, v in sums[b].most_common(14):
        if v / max(secs[b], 1e-9) >= 0.005: print(f'  {v / max(secs[b], 1e-9):5.3f}  {k[0]} / {k[1]}')
