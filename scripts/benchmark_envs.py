"""Env steps/s of the Atari backends side by side, in one run: what CleanRL's restarts cost the native env.

Steps ``--num-envs`` Breakout envs with uniformly random actions (no network: the emulator and the
preprocessing alone) through ``lot_rl.envs.make_env`` for each configuration, in turn, ``--rounds`` times
interleaved so that a machine whose load changes treats them alike; prints env steps/s (median over rounds)
and the ratio to the native env's own behaviour. With ``--train N``, also end to end: ``lot-rl train --preset ppo``
on each configuration for N updates (8 envs x 128 steps), each in a fresh process, env steps/s between the first
and the last update: what a user of each env gets, the network's work included.

    python scripts/benchmark_envs.py                 # about a minute
    python scripts/benchmark_envs.py --num-envs 8 --steps 2000 --rounds 5
    python scripts/benchmark_envs.py --train 5 --threads 1    # + end to end, 10-15 minutes more
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile

from benchmark_minatar import env_steps_per_second  # scripts/ is on the path of a script run from it

CONFIGS = {  # name -> make_env options
    "native (--env-backend ale: ale-py's own life losses)": dict(backend="ale", life_loss_restart=False),
    "native + --life-loss-restart": dict(backend="ale", life_loss_restart=True),
    "native + --life-loss-restart --cleanrl-game-start (CleanRL's games)": dict(backend="ale", life_loss_restart=True,
                                                                               cleanrl_game_start=True),
    "gymnasium (the default env: CleanRL's wrappers)": dict(backend="gymnasium"),
}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_steps_per_second(env_id: str, updates: int, threads: int, backend: str, **env_options) -> float:
    """``lot-rl train --preset ppo`` on one env configuration (in this process): env steps/s between the first
    and the last update (start-up excluded)."""
    import torch

    from lot_rl import config as cfg_lib
    from lot_rl.agents import ppo_lot_atari as agent
    from lot_rl.runlog import read_metrics

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as root:
        args = cfg_lib.resolve(agent.Args, dict(env_id=env_id, total_timesteps=1024 * (updates + 1), run_dir=root,
                                                run_name="run", save_every=10**6, env_backend=backend,
                                                **env_options), agent.PRESETS, "ppo")
        rows = [row for row in read_metrics(agent.train(args)) if "charts/SPS" in row]
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def in_fresh_process(spec: dict) -> float:
    done = subprocess.run([sys.executable, __file__, "--measure-train", json.dumps(spec)], text=True,
                          capture_output=True)  # the emulator's banner on stderr: shown only if the run fails
    if done.returncode != 0:
        raise SystemExit(f"the --train run {spec} failed (exit code {done.returncode}):\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def table(figures: dict[str, list[float]], unit: str) -> None:
    base = statistics.median(figures[next(iter(CONFIGS))])
    print(f"| configuration | {unit} | vs native |\n| --- | --- | --- |")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {median / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000, help="vector steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", type=int, default=0, metavar="UPDATES",
                        help="also train teacher-only PPO this many updates on each configuration (default: 0, no)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the --train runs (0: torch's)")
    parser.add_argument("--measure-train", default=None, help=argparse.SUPPRESS)  # internal: one child measurement
    args = parser.parse_args()
    if args.measure_train:
        spec = json.loads(args.measure_train)
        print(train_steps_per_second(spec.pop("env_id"), spec.pop("updates"), spec.pop("threads"), **spec))
        return
    figures: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, options in CONFIGS.items():
            figures[name].append(env_steps_per_second(args.env_id, args.num_envs, args.steps, seed=1, warmup=50,
                                                      **options))
    print(f"{args.env_id}, {args.num_envs} envs, random actions, {cpu_name()}; "
          f"median of {args.rounds} interleaved rounds of {args.steps} vector steps")
    table(figures, "env steps/s")
    if args.train:
        trained: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name, options in CONFIGS.items():
                trained[name].append(in_fresh_process(dict(options, env_id=args.env_id, updates=args.train,
                                                           threads=args.threads)))
        print(f"\nEnd to end: lot-rl train --preset ppo (8 envs x 128 steps, fp32), {args.train} updates, "
              f"{args.threads or 'default'} torch thread(s), each run a fresh process; median of {args.rounds} "
              f"interleaved rounds")
        table(trained, "env steps/s")


if __name__ == "__main__":
    main()
