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
from pathlib import Path

from lot_rl.supervised.cv import CVArgs, train_cv
from lot_rl.supervised.lm import LMArgs, train_lm


def run_pair(task: str, seed: int, epochs: int, root: str, threads: int) -> dict[str, dict]:
    results = {}
    for label, lot in (("teacher-only", dict(alpha=0.0, num_students=0)), ("LoT", {})):
        common = dict(seed=seed, epochs=epochs, run_dir=root, run_name=f"{task}-{label}-{seed}", threads=threads,
                      **lot)
        summary = train_cv(CVArgs(**common)) if task == "cv" else train_lm(LMArgs(**common))
        results[label] = summary
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["cv", "lm"], choices=["cv", "lm"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--cv-epochs", type=int, default=CVArgs.epochs)
    parser.add_argument("--lm-epochs", type=int, default=LMArgs.epochs)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per run (1: steadiest timings on a shared machine)")
    parser.add_argument("--out", default="bench_supervised", help="folder for results.json and results.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as root:
        for task in args.tasks:
            metric = "teacher/test_acc" if task == "cv" else "teacher/test_ppl"
            student_metric = metric.replace("teacher", "student0")
            epochs = args.cv_epochs if task == "cv" else args.lm_epochs
            per_seed = []
            for seed in args.seeds:
                pair = run_pair(task, seed, epochs, root, args.threads)
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

            name = "digits, PreResNet, test accuracy" if task == "cv" else "Python docs, LSTM, test perplexity"
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
