"""Wall-time overhead of LoTCallback over plain SB3 PPO at the same settings, side by side in one run.

Breakout through SB3's ``make_atari_env`` + ``VecFrameStack``, ``PPO("CnnPolicy")`` with the LoT reference's
PPO settings (8 envs x 128 steps, 4 epochs x 4 minibatches of 256). Variants:

- ``SB3 PPO``: no callback;
- ``+ LoT paper``: ``LoTCallback(alpha=0.5, num_students=1, student_steps_ratio=5, obs_num=10)``;
- ``+ LoT light``: the same with ``student_steps_ratio=1, obs_num=1``;
- ``+ LoT light, no minibatch imitation``: and ``student_on_ppo_batches=False`` (students learn only
  in the student phase).

Each variant trains one warm-up update; the LoT caches are then topped up to ``obs_num`` rollouts with
copies of the warm-up rollout (the cost of a student step does not depend on which states it sees), so
the timed updates show the steady state of a long run. The timed updates are interleaved (one update of
each variant per round) so that a change in machine load hits every variant alike. Prints a markdown
table: seconds per update (rollout + PPO update + LoT), the student phase's share, the ratio to SB3 PPO.

    python scripts/benchmark_sb3_overhead.py             # 3 rounds, a few minutes on 2 cores
    python scripts/benchmark_sb3_overhead.py --rounds 1  # quicker, noisier
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import ale_py
import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

import stable_baselines3
from lot_rl.sb3 import LoTCallback

N_ENVS, N_STEPS = 8, 128
ROLLOUT = N_ENVS * N_STEPS
VARIANTS = {
    "SB3 PPO": None,
    "+ LoT paper (N 5, obs_num 10)": dict(alpha=0.5, num_students=1, student_steps_ratio=5, obs_num=10),
    "+ LoT light (N 1, obs_num 1)": dict(alpha=0.5, num_students=1, student_steps_ratio=1, obs_num=1),
    "+ LoT light, no minibatch imitation": dict(alpha=0.5, num_students=1, student_steps_ratio=1, obs_num=1,
                                                student_on_ppo_batches=False),
}


def make_model(env_id: str, seed: int, device: str) -> PPO:
    env = VecFrameStack(make_atari_env(env_id, n_envs=N_ENVS, seed=seed), n_stack=4)
    return PPO("CnnPolicy", env, n_steps=N_STEPS, batch_size=256, n_epochs=4, learning_rate=2.5e-4,
               clip_range=0.1, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, seed=seed, device=device, verbose=0)


def top_up_cache(lot: LoTCallback) -> None:
    """Fill the observation cache to ``obs_num`` rollouts with copies of the latest one."""
    latest = lot.cache.entries()[-1].clone()
    while len(lot.cache) < lot.obs_num:
        lot.cache.append(latest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--rounds", type=int, default=3, help="timed updates per variant")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    gym.register_envs(ale_py)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    runs = {}
    for name, lot_options in VARIANTS.items():
        model = make_model(args.env_id, args.seed, args.device)
        lot = LoTCallback(**lot_options) if lot_options else None
        model.learn(ROLLOUT, callback=lot)  # warm-up: first rollout, update (and student phase)
        if lot is not None:
            top_up_cache(lot)
        runs[name] = {"model": model, "lot": lot, "seconds": [], "student": []}

    for _ in range(args.rounds):
        for run in runs.values():
            start = time.perf_counter()
            run["model"].learn(ROLLOUT, callback=run["lot"], reset_num_timesteps=False)
            run["seconds"].append(time.perf_counter() - start)
            if run["lot"] is not None:
                run["student"].append(run["model"].logger.name_to_value["lot/student_phase_seconds"])

    base = statistics.mean(runs["SB3 PPO"]["seconds"])
    print(f"\n{args.env_id}, {N_ENVS} envs x {N_STEPS} steps, PPO 4 epochs x 4 minibatches of 256; "
          f"{args.rounds} timed update(s) per variant after warm-up; device {runs['SB3 PPO']['model'].device}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), SB3 {stable_baselines3.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} (others' work inflates and scatters the times)\n")
    print("| variant | s / update | student phase s | env steps / s | ratio to SB3 PPO |")
    print("| --- | --- | --- | --- | --- |")
    for name, run in runs.items():
        mean = statistics.mean(run["seconds"])
        spread = f" ± {statistics.stdev(run['seconds']):.1f}" if len(run["seconds"]) > 1 else ""
        student = f"{statistics.mean(run['student']):.1f}" if run["student"] else "-"
        print(f"| {name} | {mean:.1f}{spread} | {student} | {ROLLOUT / mean:.0f} | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
