"""CPU micro-benchmark: the torch trainer's training loop against a bare PyTorch loop.

Both train the same MLP (same layers, dropout, AdamW settings and batch size) on the same
preprocessed churn features (the project's feature transform, fitted once), one thread, in
one process. Throughput is training samples per second (rows x epochs / wall time; also per
CPU second of this process, which a busy machine disturbs less):

- `ours`: `TabularNetEstimator.fit`, everything included (validation split and loss each
  epoch, early-stopping bookkeeping, loss checks, logging); no checkpoints.
- `ours + checkpoints`: the same with a checkpoint written every epoch.
- `bare`: a minimal loop over pre-made tensors (seeded randperm, slicing, forward, backward, step).
- `bare DataLoader`: the same through `DataLoader(TensorDataset(...), shuffle=True)`.

`ours / bare` is the number that matters (target: >= 0.9). With CUDA it also reports the
speed-up of mixed precision (AMP) for the torch trainer; without CUDA it says so.

    python bench/torch_throughput.py [--rows 20000] [--epochs 5] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported: one intra-op thread for every contender

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

HIDDEN = (64, 32)
DROPOUT = 0.1
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
BATCH = 256
VALIDATION = 0.1


def churn_matrix(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo's churn data through the project's feature transform: a dense float32 matrix and labels."""
    from prefect_mlops.demo import make_churn_data
    from prefect_mlops.tasks.features import FeatureSpec, make_transform

    spec = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"])
    frame = make_churn_data(0, rows=rows)
    x = make_transform(spec).fit_transform(frame[spec.feature_columns])
    return np.ascontiguousarray(x, dtype=np.float32), frame[spec.target].to_numpy()


class Clock:
    """Wall and process CPU time of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, samples: int) -> tuple[float, float]:
        return samples / self.wall, samples / self.cpu


def ours(x: np.ndarray, y: np.ndarray, epochs: int, *, checkpoint_dir: str | None = None, device: str = "cpu",
         amp: bool = False, batch: int = BATCH) -> tuple[float, float]:
    """Samples/s (wall, CPU) of `TabularNetEstimator.fit`: training rows x epochs / time of the whole fit."""
    from prefect_mlops.tasks.torch_trainer import TabularNetEstimator

    net = TabularNetEstimator(hidden_layers=HIDDEN, dropout=DROPOUT, optimizer="adamw", learning_rate=LEARNING_RATE,
                              weight_decay=WEIGHT_DECAY, batch_size=batch, epochs=epochs, patience=epochs,
                              validation_fraction=VALIDATION, device=device, amp=amp, seed=0,
                              checkpoint_dir=checkpoint_dir)
    with Clock() as clock:
        net.fit(x, y)
    assert net.n_epochs_ == epochs, "early stopping must not shorten a benchmark run"
    train_rows = len(x) - max(1, round(len(x) * VALIDATION))
    return clock.rates(train_rows * epochs)


def _bare_parts(x: np.ndarray, y: np.ndarray) -> tuple[Any, Any, Any, Any]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = x.shape[1]
    for size in HIDDEN:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(DROPOUT)]
        width = size
    net = nn.Sequential(*layers, nn.Linear(width, 2))
    optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    return torch, net, optimizer, torch.nn.functional.cross_entropy


def bare(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, float]:
    """Samples/s of a minimal loop over in-memory tensors, on the same number of training rows as ours."""
    train_rows = len(x) - max(1, round(len(x) * VALIDATION))
    torch, net, optimizer, loss_fn = _bare_parts(x, y)
    with Clock() as clock:
        xt = torch.from_numpy(x[:train_rows])
        yt = torch.from_numpy(y[:train_rows].astype(np.int64))
        generator = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(train_rows, generator=generator)
            for start in range(0, train_rows, BATCH):
                rows = order[start:start + BATCH]
                loss = loss_fn(net(xt[rows]), yt[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return clock.rates(train_rows * epochs)


def bare_dataloader(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, float]:
    """Samples/s of the textbook loop: DataLoader over a TensorDataset, shuffled."""
    from torch.utils.data import DataLoader, TensorDataset

    train_rows = len(x) - max(1, round(len(x) * VALIDATION))
    torch, net, optimizer, loss_fn = _bare_parts(x, y)
    with Clock() as clock:
        dataset = TensorDataset(torch.from_numpy(x[:train_rows]), torch.from_numpy(y[:train_rows].astype(np.int64)))
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
        net.train()
        for _ in range(epochs):
            for xb, yb in loader:
                loss = loss_fn(net(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return clock.rates(train_rows * epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of churn data (default 20000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed fit (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each contender; the median is kept")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    x, y = churn_matrix(args.rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {len(x)} rows x {x.shape[1]} features, "
          f"MLP {list(HIDDEN)}, batch {BATCH}, {args.epochs} epochs, median of {args.repeats}", flush=True)

    with tempfile.TemporaryDirectory() as checkpoints:
        contenders = {
            "ours": lambda: ours(x, y, args.epochs),
            "ours + checkpoints": lambda: ours(x, y, args.epochs, checkpoint_dir=tempfile.mkdtemp(dir=checkpoints)),
            "bare": lambda: bare(x, y, args.epochs),
            "bare DataLoader": lambda: bare_dataloader(x, y, args.epochs),
        }
        for warm_up in (ours, bare, bare_dataloader):  # first-use imports and allocations are not timed
            warm_up(x[:2000], y[:2000], 1)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for _ in range(args.repeats):  # interleaved, so a slow patch of the machine hits everyone
            for name, run in contenders.items():
                runs[name].append(run())
    wall = {name: statistics.median(r[0] for r in values) for name, values in runs.items()}
    cpu = {name: statistics.median(r[1] for r in values) for name, values in runs.items()}
    print(f"  {'':<20} {'samples/s (wall)':>17} {'runs (wall)':>21} {'samples/CPU-s':>15}")
    for name in contenders:
        spread = f"{min(r[0] for r in runs[name]):,.0f}-{max(r[0] for r in runs[name]):,.0f}"
        print(f"  {name:<20} {wall[name]:>17,.0f} {spread:>21} {cpu[name]:>15,.0f}")
    results: dict[str, Any] = {"samples_per_s": wall, "samples_per_cpu_s": cpu,
                               "ratio_ours_bare": wall["ours"] / wall["bare"],
                               "ratio_ours_bare_cpu": cpu["ours"] / cpu["bare"],
                               "ratio_ours_bare_dataloader": wall["ours"] / wall["bare DataLoader"]}
    print(f"  ours / bare            {results['ratio_ours_bare']:.3f} wall, {results['ratio_ours_bare_cpu']:.3f} CPU"
          "  (target >= 0.9)")
    print(f"  ours / bare DataLoader {results['ratio_ours_bare_dataloader']:.3f} wall")

    if torch.cuda.is_available():
        batch = 4096
        ours(x[:2000], y[:2000], 1, device="cuda", amp=True, batch=batch)  # CUDA context and kernels
        fp32 = statistics.median(ours(x, y, args.epochs, device="cuda", amp=False, batch=batch)[0]
                                 for _ in range(args.repeats))
        mixed = statistics.median(ours(x, y, args.epochs, device="cuda", amp=True, batch=batch)[0]
                                  for _ in range(args.repeats))
        results.update(cuda_fp32=fp32, cuda_amp=mixed, amp_speedup=mixed / fp32)
        print(f"  CUDA {torch.cuda.get_device_name()}, batch {batch}: fp32 {fp32:,.0f}, AMP {mixed:,.0f} samples/s, "
              f"AMP speed-up {mixed / fp32:.2f}x")
    else:
        results["amp_speedup"] = None
        print("  no CUDA: AMP speed-up not measured (mixed precision is only used on CUDA)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
