"""Prints a run's history (JSON from GET /api/admin/runs/{id} on stdin) as a table. Rounds the
server did not evaluate (a distributed-DP run evaluates every k rounds) show "—"."""
import json
import sys


def pct(x):
    return "      —" if x is None else f"{x * 100:7.2f}%"


def num(x):
    return "        —" if x is None else f"{x:9.4f}"


h = json.load(sys.stdin)
print("round  test acc  test loss  max client eps  clients  failures  seconds")
for r in h["rounds"]:
    print(f"{r['server_round']:5d}  {pct(r['test_accuracy'])}  {num(r['test_loss'])}"
          f"  {r['epsilon'] or 0:14.3f}  {r['participants']:7d}  {r['failures']:8d}  {r['duration_ms'] / 1000:7.1f}")
evaluated = [r for r in h["rounds"] if r["test_accuracy"] is not None]
if evaluated:
    best = max(evaluated, key=lambda r: r["test_accuracy"])
    last = evaluated[-1]
    eps = [c["epsilon"] for c in h["ledger"] if c["epsilon"] is not None]
    collusion = [c["collusion_epsilon"] for c in h["ledger"] if c.get("collusion_epsilon") is not None]
    seconds = [r["duration_ms"] / 1000 for r in h["rounds"]]
    seconds.sort()
    print(f"final: {last['test_accuracy'] * 100:.2f}% after {len(h['rounds'])} rounds;"
          f" best {best['test_accuracy'] * 100:.2f}% (round {best['server_round']});"
          f" max client eps {max(eps) if eps else 0:.3f}; aggregation {sum(r['aggregate_ms'] for r in h['rounds']):.1f} ms in all;"
          f" median round {seconds[len(seconds) // 2]:.2f} s")
    ms = sorted(r["duration_ms"] for r in h["rounds"])
    quartile = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))]
    reused = sum(1 for r in h["rounds"] if r.get("keys_reused"))
    print(f"round time: median {quartile(0.5)} ms, quartiles {quartile(0.25)}–{quartile(0.75)} ms;"
          f" secure-aggregation keys reused in {reused} of {len(ms)} rounds")
    if collusion:
        print(f"distributed DP: max client eps if every other client colluded with the server {max(collusion):.2f}")
print(f"run: {h['run']['status']} — {h['run']['finished_reason']}")
