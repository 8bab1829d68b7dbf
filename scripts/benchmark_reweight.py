"""Sample reweighting under label noise: none / l2rw / mwnet / deep, side by side in one run.

Every run is a real ``lot-rl cv --reweight METHOD`` run (its PreResNet teacher, SGD with Nesterov momentum and
weight decay, cosine schedule, augmentation, clean validation split choosing the best epoch, run folder with
TensorBoard and ``metrics.jsonl``). The data set is cv's default (scikit-learn's digits at 16x16) and CIFAR-10
when ``--data-dir`` holds it. The clean meta set (``--meta-size``) is held out of the training split before the
label noise is injected into the rest; ``none`` holds nothing out (it has no use for a clean set and trains on
those samples, noisy like the rest).

Reported per method, mean +- std over seeds:

- test accuracy of the epoch the clean validation split chose;
- mean weight given to corrupted and to clean training samples over the last third of the epochs
  (weights average 1 per batch; a teacher that does its job puts corrupted < clean);
- wall time relative to ``none``.

    python scripts/benchmark_reweight.py                  # digits, 40% symmetric noise, 3 seeds
    python scripts/benchmark_reweight.py --quick          # 1 seed, 4 epochs
    python scripts/benchmark_reweight.py --alpha 0.5      # the same with LoT (one student, N 2)
    python scripts/benchmark_reweight.py --json out.json  # also write every run's figures
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lot_rl.runlog import read_metrics
from lot_rl.supervised import cv
from lot_rl.supervised.reweight import REWEIGHT_METHODS


def run_cv_with_reweighting(args: cv.CVArgs, method: str, label_noise: float = 0.4, noise_type: str = "symmetric",
                            meta_size: int = 100, meta_interval: int = 1, meta_batch_size: int = 100,
                            meta_lr: float = 1e-3) -> dict:
    """One ``lot-rl cv`` run with ``--reweight METHOD``; returns cv's summary plus ``seconds`` and the mean
    weights on clean and corrupted samples over the last third of the epochs.

    The noise and reweighting options given here replace those of ``args``.
    """
    args = dataclasses.replace(args, reweight=method, label_noise=label_noise, noise_type=noise_type,
                               meta_size=meta_size, meta_interval=meta_interval, meta_batch_size=meta_batch_size,
                               meta_lr=meta_lr)
    start = time.perf_counter()
    summary = cv.train_cv(args)
    run_dir = Path(summary["run_dir"])
    summary["seconds"] = time.perf_counter() - start
    rows = [r for r in read_metrics(run_dir) if "reweight/mean_weight_clean" in r]
    last = rows[-max(1, math.ceil(len(rows) / 3)):]

    def mean_of(key: str) -> float:
        values = [r[key] for r in last if key in r]
        return statistics.fmean(values) if values else 1.0  # `none` weighs every sample 1
    summary["weight_clean"] = mean_of("reweight/mean_weight_clean")
    summary["weight_corrupted"] = mean_of("reweight/mean_weight_corrupted")
    return summary


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


def markdown_table(rows: list[dict], base: str) -> str:
    lines = ["| --reweight | seeds | test accuracy (%) | mean weight, clean | mean weight, corrupted | "
             f"wall time vs {base} |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        acc, wc, wn = r["test_accuracy"], r["weight_clean"], r["weight_corrupted"]
        lines.append(f"| {r['method']} | {r['seeds']} | {100 * acc[0]:.1f} +- {100 * acc[1]:.1f} | "
                     f"{wc[0]:.3f} +- {wc[1]:.3f} | {wn[0]:.3f} +- {wn[1]:.3f} | {r['time_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(REWEIGHT_METHODS), choices=REWEIGHT_METHODS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="digits epochs (cv's default)")
    parser.add_argument("--cifar-epochs", type=int, default=30)
    parser.add_argument("--label-noise", type=float, default=0.4)
    parser.add_argument("--noise-type", default="symmetric", choices=("symmetric", "pair"))
    parser.add_argument("--meta-size", type=int, default=100, help="digits meta set (CIFAR-10: 1000)")
    parser.add_argument("--meta-interval", type=int, default=1, help="for mwnet and deep (l2rw always uses 1)")
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=0.0, help="LoT alpha (0: teacher only, no students)")
    parser.add_argument("--data-dir", default="data", help="folder that may hold cifar-10-batches-py")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (small models: 1 is fastest on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 digits epochs, no CIFAR")
    parser.add_argument("--json", help="write every run's figures to this file")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.seeds, ns.epochs = 1, 4
    torch.set_num_threads(ns.threads)
    suites = [("digits", ns.epochs, ns.meta_size)]
    if not ns.quick and (Path(ns.data_dir) / "cifar-10-batches-py" / "test_batch").is_file():
        suites.append(("cifar10", ns.cifar_epochs, 1000))
    else:
        print(f"CIFAR-10 not used ({'--quick' if ns.quick else 'not found under ' + ns.data_dir}): digits only")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, epochs, meta_size in suites:
            results = []
            for seed in range(1, ns.seeds + 1):
                for method in ns.methods:
                    lot = dict(alpha=ns.alpha, num_students=1 if ns.alpha > 0 else 0)
                    if dataset == "cifar10":
                        lot.update(depth=20, batch_size=128, val_size=5000)
                    args = cv.CVArgs(dataset=dataset, seed=seed, epochs=epochs, device=ns.device, data_dir=ns.data_dir,
                                     run_dir=tmp, run_name=f"{dataset}_{method}_{seed}", **lot)
                    s = run_cv_with_reweighting(args, method, ns.label_noise, ns.noise_type, meta_size,
                                                1 if method == "l2rw" else ns.meta_interval, meta_lr=ns.meta_lr)
                    r = {"method": method, "seed": seed, "test_accuracy": s["test"]["teacher/test_acc"],
                         "best_epoch": s["best_epoch"], "weight_clean": s["weight_clean"],
                         "weight_corrupted": s["weight_corrupted"], "seconds": s["seconds"]}
                    results.append(r)
                    print(f"{dataset} seed {seed} {method:5s}: test acc {100 * r['test_accuracy']:.1f}% "
                          f"(epoch {r['best_epoch']}), weight clean {r['weight_clean']:.3f} corrupted "
                          f"{r['weight_corrupted']:.3f}, {r['seconds']:.0f} s", flush=True)
            rows = summarize(results, ns.methods)
            title = (f"{dataset}, {100 * ns.label_noise:.0f}% {ns.noise_type} noise, {epochs} epochs, "
                     f"alpha {ns.alpha}, meta set {meta_size}")
            print(f"\n{title}\n\n{markdown_table(rows, ns.methods[0])}\n", flush=True)
            report[dataset] = {"title": title, "rows": rows, "runs": results}
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
