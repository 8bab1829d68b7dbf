"""Teacher-only versus LoT at equal teacher steps on the built-in data sets (no download).

For each seed, runs ``lot-rl cv`` (digits, PreResNet) and ``lot-rl lm`` (Python-docs corpus, LSTM) twice
with the same options, once with ``--alpha 0 --num-students 0`` and once with LoT, alternating so that any
load on the machine hits both alike. Reports the teacher's test accuracy / perplexity at the epoch chosen on
validation, and the wall-time ratio LoT / teacher-only, as a Markdown table and a JSON file.

    python scripts/benchmark_supervised.py --seeds 1 2 3 --out bench_supervised
    python scripts/benchmark_supervised.py --tasks cv --cv-epochs 4 --seeds 1    # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lot_rl.supervised.cv import PRESETS, CVArgs, train_cv
from lot_rl.supervised.lm import LMArgs, train_lm
from lot_rl.supervised.models import PreResNet
from lot_rl.supervised.training import make_trainer


def run_pair(task: str, seed: int, epochs: int, root: str, threads: int, label_noise: float) -> dict[str, dict]:
    results = {}
    for label, lot in (("teacher-only", dict(alpha=0.0, num_students=0)), ("LoT", {})):
        common = dict(seed=seed, epochs=epochs, run_dir=root, run_name=f"{task}-{label}-{seed}", threads=threads,
                      **lot)
        summary = train_cv(CVArgs(label_noise=label_noise, **common)) if task == "cv" else train_lm(LMArgs(**common))
        results[label] = summary
    return results


def cifar_step_seconds(lot: bool, precision: str, steps: int = 6, batch_size: int = 256) -> float:
    """Median seconds of one teacher step (plus the N-1 student-only steps with LoT) of the CIFAR-10 preset's
    networks (PreResNet-20, batch 256) on random 3x32x32 images: the wall-time ratio at CIFAR scale."""
    args = CVArgs(**{**PRESETS["cifar10"], "precision": precision, **({} if lot else dict(alpha=0.0, num_students=0))})
    device = torch.device("cpu")
    trainer = make_trainer(args, lambda role: PreResNet(args.depth, 10, 3, args.width),
                           lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
                           1000, device)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.teacher_step(x, y)
        for _ in range(args.student_steps_ratio - 1 if lot else 0):
            trainer.student_step(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step pays for allocations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["cv", "lm"], choices=["cv", "lm", "cifar-step"],
                        help="cifar-step: time one teacher step of the CIFAR preset's networks, without and with LoT")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--cv-epochs", type=int, default=CVArgs.epochs)
    parser.add_argument("--lm-epochs", type=int, default=LMArgs.epochs)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per run (1: steadiest timings on a shared machine)")
    parser.add_argument("--label-noise", type=float, default=0.0, help="cv: fraction of flipped training labels")
    parser.add_argument("--out", default="bench_supervised", help="folder for results.json and results.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as root:
        for task in args.tasks:
            if task == "cifar-step":
                torch.set_num_threads(args.threads)
                for precision in ("fp32", "bf16"):
                    alone, lot = cifar_step_seconds(False, precision), cifar_step_seconds(True, precision)
                    raw[f"cifar-step-{precision}"] = {"teacher_only_seconds": alone, "lot_seconds": lot}
                    rows.append(f"| CIFAR-10 preset step time, PreResNet-20, batch 256, {precision} | - | "
                                f"{alone:.2f} s | {lot:.2f} s | - | {lot / alone:.2f} |")
                continue
            metric = "teacher/test_acc" if task == "cv" else "teacher/test_ppl"
            student_metric = metric.replace("teacher", "student0")
            epochs = args.cv_epochs if task == "cv" else args.lm_epochs
            per_seed = []
            for seed in args.seeds:
                pair = run_pair(task, seed, epochs, root, args.threads, args.label_noise)
                per_seed.append({
                    "seed": seed,
                    "teacher_only": pair["teacher-only"]["test"][metric],
                    "lot": pair["LoT"]["test"][metric],
                    "lot_student": pair["LoT"]["test"][student_metric],
                    "teacher_steps": pair["LoT"]["teacher_steps"],
                    "time_ratio": pair["LoT"]["wall_seconds"] / pair["teacher-only"]["wall_seconds"],
                    "teacher_only_seconds": pair["teacher-only"]["wall_seconds"],
                    "lot_seconds": pair["LoT"]["wall_seconds"],
                })
                print(json.dumps({"task": task, **per_seed[-1]}), flush=True)
            raw[task] = per_seed

            def mean_sd(key: str) -> str:
                values = [r[key] for r in per_seed]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{statistics.mean(values):.4g} ± {sd:.2g}"

            noise = f", {args.label_noise:.0%} label noise" if args.label_noise else ""
            name = f"digits{noise}, PreResNet, test accuracy" if task == "cv" else "Python docs, LSTM, test perplexity"
            rows.append(f"| {task} ({name}) | {epochs} ({per_seed[0]['teacher_steps']} teacher steps) | "
                        f"{mean_sd('teacher_only')} | {mean_sd('lot')} | {mean_sd('lot_student')} | "
                        f"{mean_sd('time_ratio')} |")
    table = ("| task | epochs | teacher only | LoT teacher | LoT student | wall time LoT / teacher only |\n"
             "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    (out / "results.json").write_text(json.dumps(raw, indent=2))
    (out / "results.md").write_text(table + f"\n\nseeds: {args.seeds} (mean ± standard deviation), "
                                     f"{args.threads} thread(s) per run\n")
    print(table)


if __name__ == "__main__":
    main()
