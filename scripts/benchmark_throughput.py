"""Throughput of lot_rl's PPO (teacher only and with LoT) beside Stable-Baselines3 PPO, in one run.

Reports, for the same game and PPO hyperparameters (8 envs x 128 steps, 4 epochs x 4 minibatches):

- env steps/s of our teacher-only PPO: in CleanRL's configuration (gymnasium wrappers in a SyncVectorEnv,
  NCHW, fp32: the same computation as CleanRL's ``ppo_atari.py``, a same-machine stand-in for it); with
  ale-py's native vector env; with channels-last (our default); with bf16 autocast (only where the CPU
  has bf16 kernels, or with ``--force-bf16``);
- env steps/s of SB3 PPO with the same hyperparameters (``make_atari_env`` + ``VecFrameStack``);
- seconds per update of LoT at the paper's settings (N 5, obs_num 10) once the student cache is full,
  split into the teacher phase (rollout + PPO with the penalty) and the student phase;
- on that same full cache, the student phase done the LoT reference's way (the teacher run with autograd
  for every student minibatch) beside ours (the teacher's targets once per update, under inference mode):
  the same math, timed side by side.

Steps/s are measured between the first and the last logged update (start-up excluded). CleanRL's
``ppo_atari.py`` (227 env steps/s) and the LoT reference (48 s per update) were measured with their own code
on an AVX-512 machine of this project (../shared/reference-notes.md); they are printed for scale only, as
they come from another CPU. Ratios to SB3 and to the reference-style student phase are measured here.

    python scripts/benchmark_throughput.py            # about 20 minutes on 2 cores
    python scripts/benchmark_throughput.py --quick    # 3 updates, LoT with a cache of 3 rollouts
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import lot_rl.agents.ppo_lot_atari as agent_module
from lot_rl.agents.ppo_lot_atari import Args, train
from lot_rl.runlog import read_metrics
from lot_rl.runtime import cpu_has_bf16_kernels

CLEANRL_SPS = 227.0  # CleanRL ppo_atari.py, AVX-512 machine (reference-notes.md)
REFERENCE_LOT_SECONDS = 48.0  # the LoT reference at the paper's settings, cache full, same machine


def update_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "charts/SPS" in r]


def ours_sps(env_id: str, updates: int, root: Path, precision: str, channels_last: bool,
             backend: str = "ale") -> float:
    args = Args(env_id=env_id, total_timesteps=1024 * (updates + 1), alpha=0.0, num_students=0,
                student_steps_ratio=0, lr_schedule="linear", run_dir=str(root), save_every=10**6,
                run_name=f"ppo-{precision}-cl{int(channels_last)}-{backend}", precision=precision,
                channels_last=channels_last, env_backend=backend)
    rows = update_rows(train(args))
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


class _StudentPhaseSpy:
    """Wraps the agent module's ``student_phase`` for one run: times it, keeps the last call's inputs."""

    def __enter__(self):
        self._original = agent_module.student_phase
        self.seconds, self.last_call = float("nan"), None

        def timed(*a, **k):
            start = time.perf_counter()
            out = self._original(*a, **k)
            self.seconds = time.perf_counter() - start
            self.last_call = a
            return out

        agent_module.student_phase = timed
        return self

    def __exit__(self, *exc):
        agent_module.student_phase = self._original
        return False


def reference_style_student_phase(agent, students, cache, args, autocast) -> None:
    """The reference's student phase: the teacher's logits recomputed with autograd for every minibatch."""
    for _ in range(args.student_steps_ratio):
        for entry in cache.entries():
            inds = torch.randperm(entry.shape[0], device=entry.device)
            size = entry.shape[0] // args.num_minibatches
            for start in range(0, size * args.num_minibatches, size):
                mb_obs = entry[inds[start:start + size]]
                if args.channels_last:
                    mb_obs = mb_obs.contiguous(memory_format=torch.channels_last)
                with autocast():
                    teacher_logits = agent.policy_logits(mb_obs)  # with autograd, as the reference
                students.imitate(mb_obs, teacher_logits.detach().float(), autocast=autocast)


def lot_update(env_id: str, obs_num: int, root: Path, precision: str) -> dict[str, float]:
    """LoT at the paper's settings: the update once the cache is full, and its student phase two ways."""
    args = Args(env_id=env_id, total_timesteps=1024 * (obs_num + 1), obs_num=obs_num, student_steps_ratio=5,
                run_dir=str(root), save_every=10**6, run_name=f"lot-{obs_num}-{precision}",
                precision=precision, channels_last=True)
    with _StudentPhaseSpy() as spy:
        train(args)
    rows = update_rows(root / args.run_name)
    total = rows[-1]["time"] - rows[-2]["time"]
    agent, students, cache, run_args, autocast = spy.last_call
    students = copy.deepcopy(students)  # the timing run must not be the students of record
    ours_start = time.perf_counter()
    spy._original(agent, students, cache, run_args, autocast)
    ours = time.perf_counter() - ours_start
    ref_start = time.perf_counter()
    reference_style_student_phase(agent, students, cache, run_args, autocast)
    reference_style = time.perf_counter() - ref_start
    # The reference's layout too (NCHW, the PyTorch default), on copies of the networks
    nchw_args = dataclasses.replace(run_args, channels_last=False)
    nchw_agent = copy.deepcopy(agent).to(memory_format=torch.contiguous_format)
    students.to(memory_format=torch.contiguous_format)
    ref_start = time.perf_counter()
    reference_style_student_phase(nchw_agent, students, cache, nchw_args, autocast)
    reference_style_nchw = time.perf_counter() - ref_start
    return {"total": total, "student": spy.seconds, "teacher": total - spy.seconds,
            "student_ours_again": ours, "student_reference_style": reference_style,
            "student_reference_style_nchw": reference_style_nchw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--updates", type=int, default=6, help="measured PPO updates per configuration")
    parser.add_argument("--quick", action="store_true", help="3 updates, LoT cache of 3 rollouts")
    parser.add_argument("--parts", nargs="*", default=["ppo", "sb3", "lot"], choices=["ppo", "sb3", "lot"])
    parser.add_argument("--force-bf16", action="store_true",
                        help="also run bf16 on a CPU without bf16 kernels (emulated: very slow)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    opts = parser.parse_args()
    updates = 3 if opts.quick else opts.updates
    obs_num = 3 if opts.quick else 10
    bf16 = cpu_has_bf16_kernels() or torch.cuda.is_available() or opts.force_bf16
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{opts.env_id}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 kernels: {cpu_has_bf16_kernels()}; load average at start {load:.2f}; "
          f"{updates} measured updates; LoT cache {obs_num} rollouts\n", flush=True)

    results: dict[str, float] = {}

    def row(name: str, value: float, unit: str, *ratios: str) -> None:
        cells = " | ".join(ratios) if ratios else ""
        print(f"| {name} | {value:,.1f} {unit} | {cells} |", flush=True)

    print("| configuration | figure | ratio |\n| --- | --- | --- |", flush=True)
    row("CleanRL ppo_atari.py (notes; AVX-512 machine)", CLEANRL_SPS, "steps/s", "for scale")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "sb3" in opts.parts:
            results["sb3_sps"] = sb3_sps(opts.env_id, updates)
            row("SB3 PPO, same hyperparameters, fp32", results["sb3_sps"], "steps/s", "1.00x SB3")
        if "ppo" in opts.parts:
            # CleanRL's own configuration first: gymnasium wrappers in a SyncVectorEnv, NCHW, fp32
            configs = [("fp32", False, "gymnasium"), ("fp32", False, "ale"), ("fp32", True, "ale")]
            configs += [("bf16", True, "ale")] if bf16 else []
            for precision, channels_last, backend in configs:
                key = f"ours_{precision}{'_cl' if channels_last else ''}_{backend}_sps"
                results[key] = ours_sps(opts.env_id, updates, root, precision, channels_last, backend)
                first = results["ours_fp32_gymnasium_sps"]
                ratios = [f"{results[key] / first:.2f}x CleanRL's configuration"]
                ratios += [f"{results[key] / results['sb3_sps']:.2f}x SB3"] if "sb3_sps" in results else []
                name = (f"lot_rl PPO {precision}, {'channels-last' if channels_last else 'NCHW'}, "
                        f"{'gymnasium wrappers (CleanRL configuration)' if backend == 'gymnasium' else 'native ALE'}")
                row(name, results[key], "steps/s", *ratios)
        if "lot" in opts.parts:
            row("LoT reference, paper settings (notes; AVX-512 machine)", REFERENCE_LOT_SECONDS, "s/update",
                "for scale")
            for precision in ["fp32"] + (["bf16"] if bf16 else []):
                lot = lot_update(opts.env_id, obs_num, root, precision)
                for part, value in lot.items():
                    results[f"lot_{precision}_{part}_s"] = value
                row(f"lot_rl LoT {precision} channels-last, N 5, obs_num {obs_num}: teacher phase "
                    f"{lot['teacher']:.1f} s + student phase {lot['student']:.1f} s", lot["total"], "s/update",
                    f"{REFERENCE_LOT_SECONDS / lot['total']:.2f}x faster than the reference's figure")
                row(f"student phase, teacher targets once per update (ours), {precision}",
                    lot["student_ours_again"], "s", "1.00x")
                row(f"student phase, teacher re-run with autograd per minibatch (reference's way), {precision}",
                    lot["student_reference_style"], "s",
                    f"{lot['student_reference_style'] / lot['student_ours_again']:.2f}x ours")
                row(f"student phase, the reference's way and layout (NCHW), {precision}",
                    lot["student_reference_style_nchw"], "s",
                    f"{lot['student_reference_style_nchw'] / lot['student_ours_again']:.2f}x ours")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
