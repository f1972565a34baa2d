"""Prints a run's history (JSON from GET /api/admin/runs/{id} on stdin) as a table."""
import json
import sys

h = json.load(sys.stdin)
print("round  test acc  test loss  max client eps  clients  failures  seconds")
for r in h["rounds"]:
    print(f"{r['server_round']:5d}  {r['test_accuracy'] * 100:7.2f}%  {r['test_loss']:9.4f}"
          f"  {r['epsilon'] or 0:14.3f}  {r['participants']:7d}  {r['failures']:8d}  {r['duration_ms'] / 1000:7.1f}")
if h["rounds"]:
    best = max(h["rounds"], key=lambda r: r["test_accuracy"])
    last = h["rounds"][-1]
    eps = [c["epsilon"] for c in h["ledger"] if c["epsilon"] is not None]
    print(f"final: {last['test_accuracy'] * 100:.2f}% after {len(h['rounds'])} rounds;"
          f" best {best['test_accuracy'] * 100:.2f}% (round {best['server_round']});"
          f" max client eps {max(eps) if eps else 0:.3f}; aggregation {sum(r['aggregate_ms'] for r in h['rounds']):.1f} ms in all")
print(f"run: {h['run']['status']} — {h['run']['finished_reason']}")
