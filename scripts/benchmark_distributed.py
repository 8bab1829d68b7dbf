"""Data-parallel `lot-rl train`: env steps/s and seconds per update with 1 and with K processes, side by side.

Each configuration is one real ``lot-rl train`` run in fresh processes (``--nproc K`` launches K through
``torch.distributed.run``, gloo on the CPU, NCCL with ``--device cuda``). Every process runs ``--num-envs`` envs,
so K processes take K times the env steps per update (the global batch is K x envs x steps): on K free
devices, seconds per update stay about the same and env steps/s grow about K-fold, minus the cost of the
gradient all-reduces. Figures are read back from the run's ``metrics.jsonl`` (its ``time`` stamps), with the
first update (start-up) left out. Absolute figures move with the load of the machine (printed with each row);
on a machine with fewer free cores than processes the processes share them, and speed-ups shrink.

    python scripts/benchmark_distributed.py                                 # MinAtar LoT, 1 and 2 processes
    python scripts/benchmark_distributed.py --nproc 1 2 4 --device cuda     # on a machine with 4 GPUs
    python scripts/benchmark_distributed.py --env-id BreakoutNoFrameskip-v4 --preset paper --num-envs 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lot_rl.runlog import read_metrics


def run(nproc: int, args: argparse.Namespace, root: Path) -> dict[str, float]:
    """One `lot-rl train` run of ``args.updates`` updates in ``nproc`` processes; its figures."""
    run_name = f"nproc{nproc}"
    batch = nproc * args.num_envs * args.num_steps
    command = [sys.executable, "-m", "lot_rl", "train", "--preset", args.preset, "--env-id", args.env_id,
               "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
               "--total-timesteps", str(batch * args.updates), "--device", args.device, "--threads",
               str(args.threads), "--save-every", str(10 ** 9), "--run-dir", str(root), "--run-name", run_name]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    rows = [row for row in read_metrics(root / run_name) if "losses/value_loss" in row]  # one per update
    times = np.array([row["time"] for row in rows])
    seconds_per_update = float(np.mean(np.diff(times)))  # the first update (start-up) left out
    return {"processes": nproc, "env_steps_per_update": batch, "seconds_per_update": seconds_per_update,
            "env_steps_per_second": batch / seconds_per_update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--preset", default="minatar", help="lot-rl train preset (default: minatar, LoT)")
    parser.add_argument("--env-id", default="MinAtar/Breakout-v1")
    parser.add_argument("--num-envs", type=int, default=16, help="envs per process")
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--updates", type=int, default=6, help="updates per run (the first is start-up)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"{args.preset} on {args.env_id}, {args.num_envs} envs x {args.num_steps} steps per process, "
          f"{args.updates} updates, device {args.device}")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for nproc in args.nproc:
            figures = run(nproc, args, Path(folder))
            figures["load_average"] = os.getloadavg()[0]
            results.append(figures)
            print(f"{nproc} process(es): {figures['env_steps_per_second']:8.0f} env steps/s, "
                  f"{figures['seconds_per_update']:6.2f} s/update ({figures['env_steps_per_update']} env steps "
                  f"per update), load average {figures['load_average']:.1f}", flush=True)
    base = results[0]["env_steps_per_second"]
    for figures in results[1:]:
        print(f"{figures['processes']} processes vs {results[0]['processes']}: "
              f"{figures['env_steps_per_second'] / base:.2f}x env steps/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
