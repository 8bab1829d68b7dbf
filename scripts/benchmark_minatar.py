"""Throughput on MinAtar: the vector env alone, and `lot-rl train` with the MinAtar presets, in one run.

Reports:

- env steps/s of lot_rl's MinAtar vector env alone (64 envs, uniformly random actions), per game: what the
  envs cost without any network;
- end-to-end env steps/s of ``lot-rl train --preset minatar-ppo`` and ``--preset minatar`` (PPO + LoT at
  the paper's settings) on one game, in fp32 and, where the CPU has bf16 kernels, bf16 autocast: over the
  whole run after the first update (start-up excluded), and over the last update, when LoT's student cache
  is full (its steady state: N 5 passes over obs_num 10 rollouts);
- how much of the last update was LoT's student phase (the rest: rollout and PPO epochs).

Every training configuration runs in its own fresh process, one after the other. Absolute figures move with
the load of the machine (printed at the start and with each row); ratios measured side by side move less.

    python scripts/benchmark_minatar.py                        # about 6 minutes on 2 cores: 100k steps each
    python scripts/benchmark_minatar.py --steps 30000 --games Breakout
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lot_rl.agents.ppo_lot_atari as agent_module
from lot_rl import config as cfg_lib
from lot_rl.envs import make_env
from lot_rl.envs.minatar import GAMES
from lot_rl.runlog import read_metrics
from lot_rl.runtime import cpu_has_bf16_kernels

from benchmark_throughput import StudentPhaseTimer  # scripts/ is on the path of a script run from it


def env_steps_per_second(env_id: str, num_envs: int = 64, steps: int = 2000, seed: int = 0, warmup: int = 0,
                         **env_options) -> float:
    """The vector env alone: random actions, no network (``env_options``: more ``make_env`` options; ``warmup``
    untimed steps first)."""
    env = make_env(env_id, num_envs, seed, **env_options)
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, env.single_action_space.n, (steps, num_envs))
    for batch in actions[:warmup]:
        env.step(batch)
    start = time.perf_counter()
    for batch in actions:
        env.step(batch)
    elapsed = time.perf_counter() - start
    env.close()
    return steps * num_envs / elapsed


def train_throughput(preset: str, env_id: str, steps: int, precision: str, root: Path) -> dict[str, float]:
    """One ``lot-rl train --preset PRESET`` run: env steps/s after the first update and in the last update,
    and how much of the last update was the student phase (the rest: rollout and PPO epochs)."""
    args = cfg_lib.resolve(agent_module.Args, dict(env_id=env_id, total_timesteps=steps, precision=precision,
                                                   run_dir=str(root), run_name="run", save_every=10**6),
                           agent_module.PRESETS, preset)
    with StudentPhaseTimer() as timer:
        run_dir = agent_module.train(args)
    rows = [r for r in read_metrics(run_dir) if "charts/SPS" in r]
    last = rows[-1]["time"] - rows[-2]["time"]
    returns = [r["charts/episodic_return"] for r in read_metrics(run_dir) if "charts/episodic_return" in r]
    return {"sps": (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"]),
            "last_update_sps": args.batch_size / last, "last_update_s": last,
            "student_phase_s": 0.0 if math.isnan(timer.seconds) else timer.seconds,  # last update's
            "updates": len(rows), "mean_return_last_100": float(np.mean(returns[-100:])) if returns else float("nan")}


def measure(spec: dict) -> dict:
    if spec["kind"] == "env":
        return {"sps": env_steps_per_second(spec["env_id"], spec["num_envs"])}
    with tempfile.TemporaryDirectory() as tmp:
        return train_throughput(spec["preset"], spec["env_id"], spec["steps"], spec["precision"], Path(tmp))


def measure_in_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], text=True,
                          stdout=subprocess.PIPE, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="*", default=list(GAMES), choices=list(GAMES),
                        help="games of the vector-env part (default: all five)")
    parser.add_argument("--train-game", default="Breakout", choices=list(GAMES), help="game of the training part")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per training run (default: 100k)")
    parser.add_argument("--parts", nargs="*", default=["env", "train"], choices=["env", "train"])
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one child measurement
    opts = parser.parse_args()
    if opts.measure:
        print(json.dumps(measure(json.loads(opts.measure))))
        return

    precisions = ["fp32"] + (["bf16"] if cpu_has_bf16_kernels() and not opts.no_bf16 else [])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 kernels: {cpu_has_bf16_kernels()}; "
          f"load average at start {os.getloadavg()[0]:.2f}\n", flush=True)
    results: dict[str, dict] = {}
    if "env" in opts.parts:
        print("| MinAtar vector env alone (64 envs, random actions) | env steps/s | load |\n| --- | --- | --- |")
        for game in opts.games:
            env_id = f"MinAtar/{game}-v1"
            results[f"env_{game}"] = measure_in_child({"kind": "env", "env_id": env_id, "num_envs": 64})
            print(f"| {env_id} | {results[f'env_{game}']['sps']:,.0f} | {os.getloadavg()[0]:.1f} |", flush=True)
        print()
    if "train" in opts.parts:
        env_id = f"MinAtar/{opts.train_game}-v1"
        print(f"| lot-rl train on {env_id}, {opts.steps:,} steps | env steps/s (after update 1) | last update: "
              f"steps/s, s (of which student phase) | mean return, last 100 games | load |\n"
              f"| --- | --- | --- | --- | --- |")
        for preset in ("minatar-ppo", "minatar"):
            for precision in precisions:
                key = f"train_{preset}_{precision}"
                r = results[key] = measure_in_child({"kind": "train", "preset": preset, "env_id": env_id,
                                                     "steps": opts.steps, "precision": precision})
                ratio = ""
                if preset == "minatar":
                    ratio = f" ({r['sps'] / results[f'train_minatar-ppo_{precision}']['sps']:.2f}x PPO)"
                if precision != "fp32":
                    ratio += f" ({r['sps'] / results[f'train_{preset}_fp32']['sps']:.2f}x fp32)"
                print(f"| --preset {preset} --precision {precision} | {r['sps']:,.0f}{ratio} | "
                      f"{r['last_update_sps']:,.0f}, {r['last_update_s']:.2f} s ({r['student_phase_s']:.2f} s) | "
                      f"{r['mean_return_last_100']:.2f} | {os.getloadavg()[0]:.1f} |",
                      flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
