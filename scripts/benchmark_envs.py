"""Env steps/s of the Atari backends side by side, in one run: what CleanRL's restarts cost the native env.

Steps ``--num-envs`` Breakout envs with uniformly random actions (no network: the emulator and the
preprocessing alone) through ``lot_rl.envs.make_env`` for each configuration, in turn, ``--rounds`` times
interleaved so that a machine whose load changes treats them alike; prints env steps/s (median over rounds)
and the ratio to the native env's own behaviour.

    python scripts/benchmark_envs.py                 # about a minute
    python scripts/benchmark_envs.py --num-envs 8 --steps 2000 --rounds 5
"""
from __future__ import annotations

import argparse
import platform
import statistics

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000, help="vector steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, options in CONFIGS.items():
            figures[name].append(env_steps_per_second(args.env_id, args.num_envs, args.steps, seed=1, warmup=50,
                                                      **options))
    print(f"{args.env_id}, {args.num_envs} envs, random actions, {cpu_name()}; "
          f"median of {args.rounds} interleaved rounds of {args.steps} vector steps")
    base = statistics.median(figures[next(iter(CONFIGS))])
    print("| configuration | env steps/s | vs native |\n| --- | --- | --- |")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
