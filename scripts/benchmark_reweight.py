"""Sample reweighting under label noise: none / l2rw / mwnet / deep, side by side in one run.

On the default data (scikit-learn's 8x8 digits, bilinearly upsampled to 16x16) with 40% symmetric label
noise, for a few seeds, each method trains the same small CNN student with the same SGD (Nesterov momentum
0.9, weight decay 5e-4, cosine learning rate) on the same noisy training set, with a clean class-balanced
meta set held out of the training data. Reported per method (mean +- std over seeds):

- test accuracy of the last epoch (clean test labels);
- mean weight the teacher gave to corrupted and to clean training samples over the last epochs
  (weights have mean 1 per batch; a teacher doing its job puts corrupted < clean);
- wall time relative to ``none``.

CIFAR-10 is added when its python batches are found (``--cifar-root``, default ``data/cifar-10-batches-py``).

    python scripts/benchmark_reweight.py                     # digits, 3 seeds (about 4 minutes on 2 cores)
    python scripts/benchmark_reweight.py --quick             # 1 seed, fewer epochs
    python scripts/benchmark_reweight.py --json out.json     # also write the raw figures

The training loop here is the benchmark's own (the student's step, the reweighter call, the weighted task
loss), so that the comparison does not depend on the rest of ``lot-rl cv``.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lot_rl.supervised.reweight import (REWEIGHT_METHODS, build_reweighter, corrupt_labels, split_meta_set,
                                        validate_reweight_options, weighted_task_loss)


@dataclass
class BenchConfig:
    method: str = "none"
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_noise: float = 0.4
    noise_type: str = "symmetric"
    meta_size: int = 100
    meta_batch_size: int = 100
    meta_interval: int = 1
    meta_lr: float = 1e-3
    width: int = 16  # channels of the student's first conv block
    stats_epochs: int = 10  # weight statistics averaged over the last this-many epochs
    device: str = "cpu"


class SmallCNN(nn.Module):
    """A small student: two conv blocks with BatchNorm, global average pooling, linear classifier ``fc``."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def digits_data(seed: int = 0, size: int = 16) -> dict[str, torch.Tensor]:
    """scikit-learn's digits, upsampled to ``size`` x ``size``, standardized; a stratified 20% test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y.numpy(), random_state=seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return {"x_train": x[train_idx], "y_train": y[train_idx], "x_test": x[test_idx], "y_test": y[test_idx],
            "num_classes": 10}


def cifar10_data(root: str | Path) -> dict[str, torch.Tensor] | None:
    """CIFAR-10 from its python batches (``data_batch_1..5``, ``test_batch``), or None when absent."""
    root = Path(root)
    if not (root / "test_batch").is_file():
        return None

    def load(name):
        with open(root / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = torch.tensor(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        return x.float() / 255.0, torch.tensor(batch[b"labels"], dtype=torch.int64)

    parts = [load(f"data_batch_{i}") for i in range(1, 6)]
    x_train, y_train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    x_test, y_test = load("test_batch")
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True)
    return {"x_train": (x_train - mean) / std, "y_train": y_train, "x_test": (x_test - mean) / std,
            "y_test": y_test, "num_classes": 10}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train()
    return correct / len(x)


def train_one(cfg: BenchConfig, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Train one student with ``cfg.method``; return accuracy, weight statistics and seconds."""
    validate_reweight_options(cfg.method, cfg.meta_size, cfg.meta_interval, cfg.label_noise, cfg.noise_type,
                              train_size=len(data["y_train"]))
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    num_classes = data["num_classes"]
    # the clean meta split is held out first, then the noise goes into the rest only
    train_idx, meta_idx = split_meta_set(data["y_train"], cfg.meta_size, num_classes, seed=cfg.seed)
    noisy, corrupted = corrupt_labels(data["y_train"], cfg.label_noise, cfg.noise_type, num_classes,
                                      seed=cfg.seed, protected=meta_idx)
    x_train = data["x_train"][train_idx].to(device)
    y_train = torch.as_tensor(noisy[train_idx]).to(device)
    corrupted_train = torch.as_tensor(corrupted[train_idx]).to(device)
    x_test, y_test = data["x_test"].to(device), data["y_test"].to(device)
    # `none` trains on the meta samples too (it has no use for a clean split); the others learn from them
    if cfg.method == "none":
        x_train = torch.cat([x_train, data["x_train"][meta_idx].to(device)])
        y_train = torch.cat([y_train, data["y_train"][meta_idx].to(device)])
        corrupted_train = torch.cat([corrupted_train, torch.zeros(len(meta_idx), dtype=torch.bool, device=device)])

    model = SmallCNN(x_train.shape[1], num_classes, cfg.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    reweighter = build_reweighter(cfg.method, model, optimizer, data["x_train"][meta_idx],
                                  data["y_train"][meta_idx], num_classes, meta_batch_size=cfg.meta_batch_size,
                                  meta_interval=cfg.meta_interval, meta_lr=cfg.meta_lr, seed=cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_train), generator=order_gen).to(device)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x, y = x_train[idx], y_train[idx]
            logits = model(x)
            weights = None
            if reweighter is not None:
                weights = reweighter.weights(x, y, logits, progress=step / total_steps)
                reweighter.record(weights, corrupted_train[idx])
            loss = weighted_task_loss(logits, y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        row = {"epoch": epoch + 1, "test_accuracy": accuracy(model, x_test, y_test)}
        if reweighter is not None:
            row.update(reweighter.epoch_summary())
        history.append(row)
    seconds = time.perf_counter() - start
    last = history[-cfg.stats_epochs:]

    def mean_of(key):
        values = [r[key] for r in last if key in r and not math.isnan(r[key])]
        return statistics.fmean(values) if values else 1.0  # `none` weighs every sample 1

    return {"method": cfg.method, "seed": cfg.seed, "test_accuracy": history[-1]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in history),
            "weight_clean": mean_of("reweight/mean_weight_clean"),
            "weight_corrupted": mean_of("reweight/mean_weight_corrupted"),
            "seconds": seconds, "history": history}


def summarize(results: list[dict], methods: list[str]) -> list[dict]:
    base = statistics.fmean(r["seconds"] for r in results if r["method"] == methods[0])
    rows = []
    for m in methods:
        rs = [r for r in results if r["method"] == m]

        def ms(key):
            vals = [r[key] for r in rs]
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rows.append({"method": m, "seeds": len(rs), "test_accuracy": ms("test_accuracy"),
                     "weight_clean": ms("weight_clean"), "weight_corrupted": ms("weight_corrupted"),
                     "time_ratio": statistics.fmean(r["seconds"] for r in rs) / base})
    return rows


def markdown_table(title: str, rows: list[dict]) -> str:
    lines = [f"**{title}**", "", "| method | seeds | test accuracy (%) | mean weight, clean | "
             "mean weight, corrupted | wall time vs none |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        acc, wc, wn = r["test_accuracy"], r["weight_clean"], r["weight_corrupted"]
        lines.append(f"| {r['method']} | {r['seeds']} | {100 * acc[0]:.1f} +- {100 * acc[1]:.1f} | "
                     f"{wc[0]:.3f} +- {wc[1]:.3f} | {wn[0]:.3f} +- {wn[1]:.3f} | {r['time_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(REWEIGHT_METHODS), choices=REWEIGHT_METHODS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=BenchConfig.epochs)
    parser.add_argument("--label-noise", type=float, default=0.4)
    parser.add_argument("--noise-type", default="symmetric", choices=("symmetric", "pair"))
    parser.add_argument("--meta-size", type=int, default=BenchConfig.meta_size)
    parser.add_argument("--meta-lr", type=float, default=BenchConfig.meta_lr)
    parser.add_argument("--cifar-root", default="data/cifar-10-batches-py")
    parser.add_argument("--cifar-epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the digits models are tiny: 1 is fastest on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 epochs")
    parser.add_argument("--json", help="write every run's figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 1, 10
    torch.set_num_threads(args.threads)
    suites = [("digits (16x16)", digits_data(), args.epochs, args.meta_size)]
    cifar = cifar10_data(args.cifar_root)
    if cifar is not None:
        suites.append(("CIFAR-10", cifar, args.cifar_epochs, 1000))
    else:
        print(f"CIFAR-10 not found under {args.cifar_root}: digits only")
    report = {}
    for title, data, epochs, meta_size in suites:
        results = []
        for seed in range(args.seeds):
            for method in args.methods:
                cfg = BenchConfig(method=method, seed=seed, epochs=epochs, label_noise=args.label_noise,
                                  noise_type=args.noise_type, meta_size=meta_size, meta_lr=args.meta_lr,
                                  stats_epochs=max(1, epochs // 3), device=args.device)
                r = train_one(cfg, data)
                results.append(r)
                print(f"{title} seed {seed} {method:5s}: acc {100 * r['test_accuracy']:.1f}% "
                      f"w_clean {r['weight_clean']:.3f} w_corrupted {r['weight_corrupted']:.3f} "
                      f"{r['seconds']:.1f}s", flush=True)
        rows = summarize(results, args.methods)
        name = f"{title}, {100 * args.label_noise:.0f}% {args.noise_type} noise, {epochs} epochs"
        print("\n" + markdown_table(name, rows) + "\n")
        report[title] = {"config": asdict(BenchConfig(epochs=epochs, meta_size=meta_size)), "rows": rows,
                         "runs": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
