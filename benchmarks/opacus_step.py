"""The peer of this project's step benchmark: the same TinyCNN in PyTorch, a plain SGD step and
an Opacus DP-SGD step (per-example gradients, clipping to 1.0, Gaussian noise σ = 1.0), on
random image-like inputs, timed over wall-clock seconds like `learning::bench`.

    python benchmarks/opacus_step.py --batch 64 --threads 1

Prints one line per step kind: `<kind> <median samples/s> (runs: a, b, c)`. scripts/bench-speed.sh
runs it (in a virtualenv with torch and opacus from PyPI) beside the project's own numbers.
"""

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")  # Opacus warns about secure RNG and the accountant: not used here


def tiny_cnn() -> nn.Module:
    # 28 → conv 3×3 → 26 → pool → 13 → conv 3×3 → 11 → pool → 5: 32·5·5 = 800 features.
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 10),
    )


def rate(kind: str, batch: int, warmup: int, iters: int) -> float:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = tiny_cnn()
    x = torch.randn(batch, 1, 28, 28)
    y = torch.arange(batch) % 10
    loss_fn = nn.CrossEntropyLoss()
    if kind == "dp":
        model = GradSampleModule(model)
        opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), noise_multiplier=1.0,
                          max_grad_norm=1.0, expected_batch_size=batch)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return iters * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=0, help="timed steps (default: ≈ 3 000 samples)")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    iters = a.iters or max(5, 3000 // a.batch)
    import opacus
    print(f"PyTorch {torch.__version__} + Opacus {opacus.__version__}, {a.threads} thread(s), "
          f"batch {a.batch}, {iters} steps × {a.runs} runs (median)")
    for name, kind in (("plain step", "plain"), ("DP-SGD step", "dp")):
        runs = [rate(kind, a.batch, 3, iters) for _ in range(a.runs)]
        print(f"{name:12} {statistics.median(runs):8.0f} samples/s   (runs: "
              + ", ".join(f"{r:.0f}" for r in runs) + ")")


if __name__ == "__main__":
    main()
