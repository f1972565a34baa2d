#!/usr/bin/env python3
# Usage: python3 benchmarks/thread-cpu.py <command...>   (issue 17: who uses the 2 cores while a tab trains)
# Polls /proc every 0.25 s: a thread that starts and ends between two polls is not seen, one that
# ends loses its last ≈ 0.25 s, and a reused thread id's drop in CPU time is ignored.
# Per-thread CPU seconds of every process on the machine while a command runs, by (process, thread) name.
import os, sys, time, subprocess, collections
HZ = os.sysconf('SC_CLK_TCK')
def snap():
    """{(pid, tid): (process name, thread name, CPU seconds)} of every thread on the machine."""
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try: pcomm = open(f'/proc/{pid}/comm').read().strip()
        except OSError: continue
        try: tids = os.listdir(f'/proc/{pid}/task')
        except OSError: continue
        for tid in tids:
            try:
                st = open(f'/proc/{pid}/task/{tid}/stat').read()
            except OSError: continue
            r = st.rfind(')'); comm = st[st.find('(')+1:r]; f = st[r+2:].split()
            out[(pid, tid)] = (pcomm, comm, (int(f[11]) + int(f[12])) / HZ)
    return out
def main():
    first = snap(); last = dict(first)
    p = subprocess.Popen(sys.argv[1:])
    t0 = time.time()
    while p.poll() is None:
        time.sleep(0.25); last.update(snap())
    wall = time.time() - t0
    agg = collections.Counter()
    for k, (pc, c, t) in last.items():
        t0_ = first.get(k, (pc, c, 0.0))[2]
        if t - t0_ > 0: agg[(pc, c)] += t - t0_
    total = sum(agg.values())
    print(f'# wall {wall:.1f} s, CPU {total:.1f} s in all ({total / wall:.2f} of the cores)')
    for (pc, c), t in agg.most_common(25):
        print(f'{t:8.2f} s  {t / wall:5.2f} cores  {pc:>16} / {c}')

if __name__ == '__main__':
    main()
