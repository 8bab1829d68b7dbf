"""Throughput of lot_rl's PPO (teacher only and with LoT) beside Stable-Baselines3 PPO, in one run.

Reports, for the same game and PPO hyperparameters (8 envs x 128 steps, 4 epochs x 4 minibatches):

- env steps/s of our teacher-only PPO (fp32, bf16 autocast, bf16 + channels-last);
- env steps/s of SB3 PPO (``make_atari_env`` + ``VecFrameStack``; the peer users know);
- seconds per update of LoT at the paper's settings (N 5, obs_num 10) once the student cache is full,
  split into the teacher phase (rollout + PPO) and the student phase, in fp32 and bf16.

Steps/s are measured between the first and the last logged update (start-up excluded). Figures for the
LoT reference (48 s per update) and CleanRL's ppo_atari.py (227 env steps/s) were measured on this
machine with their own code (see ../shared/reference-notes.md); they are printed as the baselines.

    python scripts/benchmark_throughput.py            # about 15 minutes on 2 cores
    python scripts/benchmark_throughput.py --quick    # fewer updates, LoT with a cache of 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lot_rl.agents.ppo_lot_atari import Args, train
from lot_rl.runlog import read_metrics

CLEANRL_SPS = 227.0  # CleanRL ppo_atari.py on this machine (reference-notes.md)
REFERENCE_LOT_SECONDS = 48.0  # the LoT reference at the paper's settings, cache full (reference-notes.md)


def update_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "charts/SPS" in r]


def ours_sps(env_id: str, updates: int, root: Path, **overrides) -> float:
    args = Args(env_id=env_id, total_timesteps=1024 * (updates + 1), alpha=0.0, num_students=0,
                student_steps_ratio=0, lr_schedule="linear", run_dir=str(root), save_every=10**6,
                run_name=f"ppo-{overrides.get('precision', 'fp32')}-{overrides.get('channels_last', False)}",
                **overrides)
    run_dir = train(args)
    rows = update_rows(run_dir)
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def sb3_sps(env_id: str, updates: int) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    env = VecFrameStack(make_atari_env(env_id, n_envs=8, seed=1), n_stack=4)
    model = PPO("CnnPolicy", env, n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4,
                clip_range=0.1, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, verbose=0, device="cpu")
    model.learn(1024)  # warm-up: first rollout and update
    start = time.perf_counter()
    model.learn(1024 * updates, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    env.close()
    return 1024 * updates / elapsed


def lot_seconds_per_update(env_id: str, obs_num: int, root: Path, **overrides) -> dict[str, float]:
    """Time of the update after the cache is full, and its split (teacher phase vs student phase)."""
    updates = obs_num + 1
    args = Args(env_id=env_id, total_timesteps=1024 * updates, obs_num=obs_num, student_steps_ratio=5,
                run_dir=str(root), save_every=10**6,
                run_name=f"lot-{obs_num}-{overrides.get('precision', 'fp32')}", **overrides)
    phases = _PhaseTimer()
    with phases:
        train(args)
    rows = update_rows(root / args.run_name)
    total = rows[-1]["time"] - rows[-2]["time"]
    student = phases.last_student_phase
    return {"total": total, "student": student, "teacher": total - student}


class _PhaseTimer:
    """Times the student phase by wrapping the agent module's ``student_phase`` for the run."""

    def __enter__(self):
        import lot_rl.agents.ppo_lot_atari as agent_module

        self._module, self._original = agent_module, agent_module.student_phase
        self.last_student_phase = float("nan")

        def timed(*a, **k):
            start = time.perf_counter()
            out = self._original(*a, **k)
            self.last_student_phase = time.perf_counter() - start
            return out

        agent_module.student_phase = timed
        return self

    def __exit__(self, *exc):
        self._module.student_phase = self._original
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--updates", type=int, default=6, help="measured PPO updates per configuration")
    parser.add_argument("--quick", action="store_true", help="3 updates, LoT cache of 3 rollouts")
    parser.add_argument("--json", default=None, help="also write the figures here")
    opts = parser.parse_args()
    updates = 3 if opts.quick else opts.updates
    obs_num = 3 if opts.quick else 10
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results["ours_fp32_sps"] = ours_sps(opts.env_id, updates, root)
        results["ours_bf16_sps"] = ours_sps(opts.env_id, updates, root, precision="bf16")
        results["ours_bf16_cl_sps"] = ours_sps(opts.env_id, updates, root, precision="bf16", channels_last=True)
        results["sb3_sps"] = sb3_sps(opts.env_id, updates)
        for precision in ("fp32", "bf16"):
            lot = lot_seconds_per_update(opts.env_id, obs_num, root, precision=precision)
            for part, value in lot.items():
                results[f"lot_{precision}_{part}_s"] = value

    def row(name: str, value: float, unit: str, versus: str = "", versus_sb3: str = "") -> None:
        print(f"| {name} | {value:,.1f} {unit} | {versus} | {versus_sb3} |")

    print(f"\n{opts.env_id}, {torch.get_num_threads()} torch threads, updates measured: {updates}, "
          f"LoT cache: {obs_num} rollouts\n")
    print("| configuration | figure | vs baseline | vs SB3 |\n| --- | --- | --- | --- |")
    row("CleanRL ppo_atari.py (notes, fp32)", CLEANRL_SPS, "steps/s", "baseline")
    row("SB3 PPO, same hyperparameters (fp32)", results["sb3_sps"], "steps/s",
        f"{results['sb3_sps'] / CLEANRL_SPS:.2f}x CleanRL", "1.00x")
    for key, label in (("ours_fp32_sps", "lot_rl PPO fp32"), ("ours_bf16_sps", "lot_rl PPO bf16"),
                       ("ours_bf16_cl_sps", "lot_rl PPO bf16 + channels-last")):
        row(label, results[key], "steps/s", f"{results[key] / CLEANRL_SPS:.2f}x CleanRL",
            f"{results[key] / results['sb3_sps']:.2f}x")
    row("LoT reference, paper settings (notes, fp32)", REFERENCE_LOT_SECONDS, "s/update", "baseline")
    for precision in ("fp32", "bf16"):
        total = results[f"lot_{precision}_total_s"]
        row(f"lot_rl LoT {precision}: teacher {results[f'lot_{precision}_teacher_s']:.1f} s + students "
            f"{results[f'lot_{precision}_student_s']:.1f} s", total, "s/update",
            f"{REFERENCE_LOT_SECONDS / total:.2f}x faster than the reference")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
