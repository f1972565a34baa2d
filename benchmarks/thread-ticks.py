#!/usr/bin/env python3
# Usage: python3 benchmarks/thread-ticks.py <command...>   (issue 17; log benchmarks/sixth-round.log)
# Every 20 ms, the CPU ticks (1/100 s, as /proc counts them) each thread used since the last poll: T <seconds> S <server>
# C <Chromium threads but its workers> N <node> O <others> W <tid:ticks of each DedicatedWorker thread> # <name=ticks of the
# Chromium and other threads>. Ticks are sampled by the kernel: a 20 ms line is coarse, sums over rounds are not.
import os, sys, time, subprocess
def snap():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try: pc = open(f'/proc/{pid}/comm').read().strip(); tids = os.listdir(f'/proc/{pid}/task')
        except OSError: continue
        for tid in tids:
            try: st = open(f'/proc/{pid}/task/{tid}/stat').read()
            except OSError: continue
            r = st.rfind(')'); comm = st[st.find('(')+1:r]; f = st[r+2:].split()
            out[tid] = (pc, comm, int(f[11]) + int(f[12]))
    return out
p = subprocess.Popen(sys.argv[1:]); t0 = time.time(); prev = snap(); me=str(os.getpid())
while p.poll() is None:
    time.sleep(0.02); now = time.time(); cur = snap()
    g = {'S':0,'C':0,'N':0,'O':0}; w=[]; names={}
    for tid,(pc,c,t) in cur.items():
        d = t - prev.get(tid,(pc,c,t))[2]
        if d <= 0: continue
        if pc=='chromium' and c=='DedicatedWorker': w.append(f'{tid}:{d}')
        elif pc=='chromium': g['C']+=d; names[c]=names.get(c,0)+d
        elif pc=='server': g['S']+=d
        elif pc=='node': g['N']+=d
        elif tid!=me: g['O']+=d; names[pc+'/'+c]=names.get(pc+'/'+c,0)+d
    print(f'T {now-t0:7.3f} S {g["S"]} C {g["C"]} N {g["N"]} O {g["O"]} W {" ".join(w)} # {" ".join(f"{k}={v}" for k,v in names.items())}', flush=True)
    prev = cur
