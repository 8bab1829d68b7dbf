"""Throughput of lot_rl's PPO (teacher only and with LoT) beside Stable-Baselines3 PPO, in one run.

Reports, for the same game and PPO hyperparameters (8 envs x 128 steps, 4 epochs x 4 minibatches):

- env steps/s of our teacher-only PPO: in CleanRL's configuration (gymnasium wrappers in a SyncVectorEnv,
  NCHW, fp32: the same computation as CleanRL's ``ppo_atari.py``, a same-machine stand-in for it); with
  channels-last (our default) on the same wrappers (our default env); with ale-py's native vector env; with
  bf16 autocast (only where the CPU has bf16 kernels, or with ``--force-bf16``);
- env steps/s of SB3 PPO with the same hyperparameters (``make_atari_env`` + ``VecFrameStack``);
- the same with ``--env-groups 2`` (the network acts for one half of the envs while the other half's games
  run in the emulator), beside the row it changes;
- seconds per update of LoT at the paper's settings (N 5, obs_num 10) once the student cache is full,
  split into the teacher phase (rollout + PPO with the penalty) and the student phase; then the same update
  with ``--env-groups 2``, with ``--overlap-students`` (the student phase in a worker thread beside the next
  rollout) and with both, each as a ratio to the sequential update;
- one student phase on a full cache (obs_num rollouts) done our way (the teacher's targets once per update
  under inference mode, channels-last) beside the LoT reference's way (the teacher re-run with autograd for
  every student minibatch, NCHW): the same math, timed side by side;
- the same LoT update run by ``lot-rl train --preset paper`` (the command in its own process) beside it: what
  the command adds per update;
- issue 15's changes side by side with the code before them (``before_issue_15``: default Adam instead of the
  fused one, frames scaled in fp32, the teacher acting with fp32 weights under autocast) in the PPO, LoT and
  student-phase rows;
- one imitation step of K = 1, 2, 4 students, sequential beside batched (``--batch-students on``);
- with CUDA (``--parts ... gpu``, on by default): the same student rows on the GPU, and teacher-only PPO and
  LoT on the GPU: env steps/s, s/update and the share of the time spent stepping the envs;
- the compute floor of a LoT update on this CPU: the floating-point operations of one update at the paper's
  settings, counted by ``torch.utils.flop_counter`` on the real networks and losses, divided by the rate this
  CPU reaches on a large matrix multiply (its best case for dense math). No implementation of the same math
  can do an update faster than that.

Every configuration runs in its own fresh process (so that allocator settings, thread pools and caches of
one do not help or hurt the next); the CleanRL configuration and the reference-style phase run with the
C library's default allocator settings (``LOT_RL_KEEP_FREED_MEMORY=0``), as their own code would.

Steps/s are measured between the first and the last logged update (start-up excluded). CleanRL's
``ppo_atari.py`` (227 env steps/s) and the LoT reference (48 s per update) were measured with their own code
on an AVX-512 machine of this project (../shared/reference-notes.md); they are printed for scale only, as
they come from another CPU. Ratios to SB3 and to the reference-style student phase are measured here.

    python scripts/benchmark_throughput.py            # about 30 minutes on 2 idle cores
    python scripts/benchmark_throughput.py --quick    # 3 updates, LoT with a cache of 3 rollouts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lot_rl.agents.ppo_lot_atari as agent_module
from lot_rl.agents.ppo_lot_atari import Agent, Args, lot_ppo_loss, lr_factor, make_students, train
from lot_rl.regularizer import ObservationCache
from lot_rl.runlog import read_metrics
from lot_rl import runtime
from lot_rl.regularizer import Students
from lot_rl.runtime import autocast_for, cpu_has_bf16_kernels, keep_freed_memory

CLEANRL_SPS = 227.0  # CleanRL ppo_atari.py, AVX-512 machine (reference-notes.md)
REFERENCE_LOT_SECONDS = 48.0  # the LoT reference at the paper's settings, cache full, same machine


def update_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "charts/SPS" in r]


@contextlib.contextmanager
def before_issue_15():
    """lot_rl's training as it was before issue 15's speed work, for rows side by side with today's: PyTorch's
    default Adam (not fused), frames scaled in fp32 (autocast casts them at the first layer), the teacher
    acting with its fp32 weights (autocast casts every weight on every forward) and the trunks' last ReLU before
    Flatten (:func:`relu_before_flatten_trunks`). The same math."""
    saved = agent_module.adam, agent_module.scale_frames, agent_module.InferenceCopy
    agent_module.adam = torch.optim.Adam
    agent_module.scale_frames = lambda x: x.to(torch.float32, copy=True).div_(255.0)
    agent_module.InferenceCopy = lambda module, precision: runtime.InferenceCopy(module, "fp32")
    try:
        with relu_before_flatten_trunks():
            yield
    finally:
        agent_module.adam, agent_module.scale_frames, agent_module.InferenceCopy = saved


@contextlib.contextmanager
def relu_before_flatten_trunks():
    """The Atari trunks as CleanRL writes them, last ReLU before Flatten: under channels-last its backward meets a
    gradient of the other memory layout (PyTorch's strided slow path). The same parameters and math."""
    saved = agent_module.nature_cnn, agent_module.small_cnn
    agent_module.nature_cnn = lambda *a, **k: relu_before_flatten(saved[0](*a, **k))
    agent_module.small_cnn = lambda *a, **k: relu_before_flatten(saved[1](*a, **k))
    try:
        yield
    finally:
        agent_module.nature_cnn, agent_module.small_cnn = saved


def relu_before_flatten(trunk: torch.nn.Sequential) -> torch.nn.Sequential:
    """The same trunk (same parameters) with its last convolution's ReLU before Flatten."""
    mods = list(trunk)
    at = next(i for i, m in enumerate(mods) if isinstance(m, torch.nn.Flatten))
    mods[at], mods[at + 1] = mods[at + 1], mods[at]
    return torch.nn.Sequential(*mods)


class EnvTimer:
    """Adds up the seconds the training loop waits for the envs during one run: in ``envs.step`` (the emulator,
    and the wrappers), and with ``--env-groups`` in ``send`` and ``recv`` (a group's games run in the background
    between the two, so only the wait in ``recv`` for a group not yet done is counted: the env time the
    overlap did not hide)."""

    def __enter__(self):
        self._original = agent_module.make_env
        self.seconds = 0.0

        def make_timed_env(*a, **k):
            envs = self._original(*a, **k)
            for method in ("step", "send", "recv"):
                if hasattr(envs, method):
                    setattr(envs, method, timed(getattr(envs, method), self._add))
            return envs

        agent_module.make_env = make_timed_env
        return self

    def _add(self, seconds: float) -> None:
        self.seconds += seconds

    def __exit__(self, *exc):
        agent_module.make_env = self._original
        return False


def timed(function, record):
    """``function`` that hands the seconds of each call to ``record``."""
    def wrapper(*a, **k):
        start = time.perf_counter()
        out = function(*a, **k)
        record(time.perf_counter() - start)
        return out

    return wrapper


# ----------------------------------------------------------------------------------------------------
# One measurement each, run in a child process (see ``measure``)


def ppo_sps(env_id: str, updates: int, root: Path, precision: str, channels_last: bool, backend: str,
            device: str = "cpu", env_groups: int = 1) -> dict[str, float]:
    """Teacher-only PPO: env steps/s between the first and the last update, and the share of the whole run's
    time spent stepping the envs."""
    args = Args(env_id=env_id, total_timesteps=1024 * (updates + 1), alpha=0.0, num_students=0,
                student_steps_ratio=0, lr_schedule="linear", run_dir=str(root), save_every=10**6, run_name="ppo",
                precision=precision, channels_last=channels_last, env_backend=backend, device=device,
                env_groups=env_groups)
    start = time.perf_counter()
    with EnvTimer() as env_timer:
        rows = update_rows(train(args))
    return {"sps": (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"]),
            "env_fraction": env_timer.seconds / (time.perf_counter() - start)}


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


class StudentPhaseTimer:
    """Times the agent module's ``student_phase`` during one run (the last call wins)."""

    def __enter__(self):
        self._original = agent_module.student_phase
        self.seconds = float("nan")

        agent_module.student_phase = timed(self._original, lambda seconds: setattr(self, "seconds", seconds))
        return self

    def __exit__(self, *exc):
        agent_module.student_phase = self._original
        return False


def lot_update(env_id: str, obs_num: int, root: Path, precision: str, device: str = "cpu", env_groups: int = 1,
               overlap_students: bool = False) -> dict[str, float]:
    """LoT at the paper's settings, our defaults: the update once the cache is full, split in two phases (the
    split means something only when the student phase does not overlap the rollout), and the share of the
    whole run's time spent stepping the envs."""
    args = Args(env_id=env_id, total_timesteps=1024 * (obs_num + 1), obs_num=obs_num, student_steps_ratio=5,
                run_dir=str(root), save_every=10**6, run_name="lot", precision=precision, device=device,
                env_groups=env_groups, overlap_students=overlap_students, env_backend="ale")
    start = time.perf_counter()
    with StudentPhaseTimer() as timer, EnvTimer() as env_timer:
        train(args)
    env_fraction = env_timer.seconds / (time.perf_counter() - start)
    rows = update_rows(root / "lot")
    total = rows[-1]["time"] - rows[-2]["time"]
    return {"total": total, "student": timer.seconds, "teacher": total - timer.seconds, "env_fraction": env_fraction}


def command_update(env_id: str, obs_num: int, root: Path, precision: str, threads: int) -> dict[str, float]:
    """The same LoT update run by the command a user types (``lot-rl train --preset paper``, its own process,
    with its logging, progress bar and default checkpoint schedule), read from its metrics as ``lot_update``'s
    figure is: what the command adds to ``train`` per update."""
    command = [sys.executable, "-m", "lot_rl", "train", "--preset", "paper", "--env-id", env_id,
               "--total-timesteps", str(1024 * (obs_num + 1)), "--obs-num", str(obs_num), "--precision", precision,
               "--threads", str(threads), "--run-dir", str(root), "--run-name", "command", "--device", "cpu",
               "--env-backend", "ale"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    rows = update_rows(root / "command")
    return {"total": rows[-1]["time"] - rows[-2]["time"]}


def student_step_seconds(num_students: int, precision: str, batched: bool, device: str = "cpu",
                         repeats: int = 5) -> float:
    """One imitation step of K students (the student phase's unit of work: 256 frames, Nature CNN,
    channels-last), sequential or batched; the best of ``repeats`` after a warm-up step."""
    torch.manual_seed(0)
    dev = torch.device(device)
    args = Args(num_students=num_students, precision=precision, batch_students="on" if batched else "off")
    students = make_students(args, 4, dev, lr_factor(args))
    if batched and not students.stack:  # one student: a stack of one, to see what batching costs alone
        students = Students(students.networks, make_optimizer=lambda p: runtime.adam(p, lr=args.learning_rate),
                            max_grad_norm=args.student_max_grad_norm, batched=True)
    frames = torch.randint(0, 256, (256, 4, 84, 84), dtype=torch.uint8, device=dev)
    frames = frames.contiguous(memory_format=torch.channels_last)
    targets = torch.randn(256, 4, device=dev)
    autocast = autocast_for(dev, precision)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    students.imitate(frames, targets, autocast=autocast)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        students.imitate(frames, targets, autocast=autocast)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


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


def student_phase_seconds(obs_num: int, precision: str, style: str, channels_last: bool) -> float:
    """One student phase (N 5) on a full cache of ``obs_num`` rollouts of frames, after a warm-up phase.

    The frames are random: the cost of a phase does not depend on what the frames show.
    """
    torch.manual_seed(0)
    args = Args(obs_num=obs_num, student_steps_ratio=5, precision=precision, channels_last=channels_last)
    device = torch.device("cpu")
    agent = Agent(4)
    if channels_last:
        agent = agent.to(memory_format=torch.channels_last)
    students = make_students(args, 4, device, lr_factor(args))
    autocast = autocast_for(device, precision)
    phase = agent_module.student_phase if style == "ours" else reference_style_student_phase

    def full_cache(rollouts: int) -> ObservationCache:
        cache = ObservationCache(rollouts)
        for _ in range(rollouts):
            frames = torch.randint(0, 256, (1024, 4, 84, 84), dtype=torch.uint8)
            cache.append(frames.contiguous(memory_format=torch.channels_last) if channels_last else frames)
        return cache

    if style == "ours":  # the teacher's targets as lot-rl train computes them (bf16: from bf16 weights)
        agent = agent_module.InferenceCopy(agent, precision).refresh()
    phase(agent, students, full_cache(1), args, autocast)  # warm-up
    cache = full_cache(obs_num)
    start = time.perf_counter()
    phase(agent, students, cache, args, autocast)
    return time.perf_counter() - start


def lot_update_flops(obs_num: int, student_steps_ratio: int = 5) -> dict[str, float]:
    """Floating-point operations of one LoT update at these settings (cache full), by phase.

    Counted by ``FlopCounterMode`` (matrix multiplies and convolutions, forward and backward) on one minibatch
    of each kind of work, then multiplied by how often an update does it. Element-wise work (activations,
    Adam) is left out, so this is a lower bound.
    """
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    args = Args(obs_num=obs_num, student_steps_ratio=student_steps_ratio)
    agent, students = Agent(4), make_students(args, 4, torch.device("cpu"), lr_factor(args))
    size = args.minibatch_size
    obs = torch.randint(0, 256, (size, 4, 84, 84), dtype=torch.uint8)
    actions, zeros = torch.randint(0, 4, (size,)), torch.zeros(size)

    def flops(work) -> float:
        with FlopCounterMode(display=False) as counter:
            work()
        return float(counter.get_total_flops())

    def ppo_minibatch():
        loss, _ = lot_ppo_loss(agent, students, obs, actions, zeros, torch.randn(size), zeros, zeros, args,
                               alpha_now=args.alpha)
        loss.backward()

    def teacher_targets() -> torch.Tensor:  # as the observation cache computes them for the student phase
        with torch.inference_mode():
            return agent.policy_logits(obs).float()

    targets = teacher_targets()
    per_batch = args.batch_size // size  # minibatches in one rollout
    teacher = (flops(lambda: agent.get_action_and_value(obs)) * per_batch  # acting during the rollout
               + flops(ppo_minibatch) * args.update_epochs * args.num_minibatches)
    student = (flops(teacher_targets) * per_batch * obs_num
               + flops(lambda: students.imitate(obs, targets)) * student_steps_ratio * obs_num * args.num_minibatches)
    return {"teacher": teacher, "student": student, "total": teacher + student}


def matmul_flops_per_second(precision: str, n: int = 2048, repeats: int = 20) -> float:
    """The best rate of an n x n matrix multiply on the CPU (where the LoT rows run): its practical peak for
    dense math."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measure(spec: dict) -> dict:
    """Run one measurement described by ``spec`` (in this process) and return its figures; ``legacy`` in the
    spec measures lot_rl as it was before issue 15 (:func:`before_issue_15`)."""
    with before_issue_15() if spec.get("legacy") else contextlib.nullcontext():
        return _measure(spec)


def _measure(spec: dict) -> dict:
    kind = spec["kind"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])  # every kind of run keeps the threads it finds (lot-rl's --threads 0)
    if kind == "sb3":
        return {"sps": sb3_sps(spec["env_id"], spec["updates"])}
    if kind == "floor":
        return {**lot_update_flops(spec["obs_num"]), "rate": matmul_flops_per_second(spec["precision"])}
    if kind == "phase":
        return {"seconds": student_phase_seconds(spec["obs_num"], spec["precision"], spec["style"],
                                                 spec["channels_last"])}
    if kind == "students":
        return {"seconds": student_step_seconds(spec["num_students"], spec["precision"], spec["batched"],
                                                spec.get("device", "cpu"))}
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "command":
            return command_update(spec["env_id"], spec["obs_num"], Path(tmp), spec["precision"], spec["threads"])
        if kind == "ppo":
            return ppo_sps(spec["env_id"], spec["updates"], Path(tmp), spec["precision"], spec["channels_last"],
                           spec["backend"], spec.get("device", "cpu"), spec.get("env_groups", 1))
        return lot_update(spec["env_id"], spec["obs_num"], Path(tmp), spec["precision"], spec.get("device", "cpu"),
                          spec.get("env_groups", 1), spec.get("overlap_students", False))


def measure_in_child(spec: dict, keep_memory: bool = True) -> dict:
    env = {**os.environ, "LOT_RL_KEEP_FREED_MEMORY": "1" if keep_memory else "0"}
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], env=env, text=True,
                          stdout=subprocess.PIPE, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--updates", type=int, default=6, help="measured PPO updates per configuration")
    parser.add_argument("--quick", action="store_true", help="3 updates, LoT cache of 3 rollouts")
    parts = ["sb3", "ppo", "lot", "phase", "students", "floor", "gpu"]
    parser.add_argument("--parts", nargs="*", default=parts, choices=parts,
                        help="gpu: the CUDA rows (only where CUDA is available)")
    parser.add_argument("--force-bf16", action="store_true",
                        help="also run bf16 on a CPU without bf16 kernels (emulated: very slow)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of every measured run (0: torch's default, one per core); 1 on a busy "
                             "machine, where idle threads spinning for cores others hold slow each step down")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one child measurement
    opts = parser.parse_args()
    if opts.measure:
        keep_freed_memory()  # what lot-rl's training functions do (unless LOT_RL_KEEP_FREED_MEMORY=0)
        print(json.dumps(measure(json.loads(opts.measure))))
        return

    updates = 3 if opts.quick else opts.updates
    obs_num = 3 if opts.quick else 10
    bf16 = cpu_has_bf16_kernels() or opts.force_bf16
    precisions = ["fp32"] + (["bf16"] if bf16 else [])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{opts.env_id}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{opts.threads or torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 kernels: {cpu_has_bf16_kernels()}; CUDA: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; load average at start "
          f"{load:.2f}; {updates} measured updates; LoT cache {obs_num} rollouts\n", flush=True)

    results: dict[str, float] = {}
    common = {"env_id": opts.env_id, "updates": updates, "obs_num": obs_num, "threads": opts.threads}
    before = "before issue 15 (default Adam, fp32 frames, autocast casting the teacher's weights every forward)"

    def row(name: str, value: float, unit: str, *ratios: str) -> None:
        print(f"| {name} | {value:,.1f} {unit} | {' | '.join(ratios)} |", flush=True)

    def env_share(figures: dict) -> str:
        return f"env {figures['env_fraction']:.0%} of the time"

    print("| configuration | figure | ratio |\n| --- | --- | --- |", flush=True)
    row("CleanRL ppo_atari.py (notes; AVX-512 machine)", CLEANRL_SPS, "steps/s", "for scale")
    if "sb3" in opts.parts:
        results["sb3_sps"] = measure_in_child({**common, "kind": "sb3"}, keep_memory=False)["sps"]
        row("SB3 PPO, same hyperparameters, fp32", results["sb3_sps"], "steps/s", "1.00x SB3")
    if "ppo" in opts.parts:
        # CleanRL's configuration first: gymnasium wrappers in a SyncVectorEnv, NCHW, fp32, default allocator;
        # then each of our configurations, those issue 15 changed (channels-last) before and after it, and
        # --env-groups 2 right after the row it is compared with
        configs = [("fp32", False, "gymnasium", False, False, 1), ("fp32", False, "ale", True, False, 1)]
        configs += [(p, True, backend, True, legacy, groups) for p in precisions
                    for backend, legacy, groups in (("gymnasium", False, 1), ("ale", True, 1), ("ale", False, 1),
                                                    ("ale", False, 2))]
        for precision, channels_last, backend, keep_memory, legacy, groups in configs:
            key = (f"ppo_{precision}_{'cl' if channels_last else 'nchw'}_{backend}{'_before' if legacy else ''}"
                   f"{'_groups2' * (groups == 2)}_sps")
            spec = {**common, "kind": "ppo", "precision": precision, "channels_last": channels_last,
                    "backend": backend, "legacy": legacy, "env_groups": groups}
            figures = measure_in_child(spec, keep_memory)
            results[key], results[key.replace("_sps", "_env_fraction")] = figures["sps"], figures["env_fraction"]
            ratios = [f"{results[key] / results['ppo_fp32_nchw_gymnasium_sps']:.2f}x CleanRL's configuration"]
            ratios += [f"{results[key] / results['sb3_sps']:.2f}x SB3"] if "sb3_sps" in results else []
            if groups == 2:
                ratios.append(f"{results[key] / results[key.replace('_groups2', '')]:.2f}x one env group")
            ratios += [env_share(figures)]
            env_name = {"ale": "native ALE", "gymnasium": "gymnasium wrappers"}[backend]
            if backend == "gymnasium":
                env_name += (" (the default env), our defaults" if channels_last
                             else ", default allocator (CleanRL's configuration)")
            name = (f"lot_rl PPO {precision}, {'channels-last' if channels_last else 'NCHW'}, {env_name}"
                    + (f", {before}" if legacy else "") + (", --env-groups 2" if groups == 2 else ""))
            row(name, results[key], "steps/s", *ratios)
    if "lot" in opts.parts:
        row("LoT reference, paper settings (notes; AVX-512 machine)", REFERENCE_LOT_SECONDS, "s/update",
            "for scale")
        # bf16 before and after issue 15 (the work it did is mostly bf16's), fp32 as it is
        for precision, legacy in [("fp32", False)] + [("bf16", legacy) for legacy in (True, False) if bf16]:
            lot = measure_in_child({**common, "kind": "lot", "precision": precision, "legacy": legacy})
            suffix = "_before" if legacy else ""
            results.update({f"lot_{precision}{suffix}_{part}_s": value for part, value in lot.items()
                            if part != "env_fraction"})
            row(f"lot_rl LoT {precision}, native ALE, N 5, obs_num {obs_num}, once the cache is full: teacher phase "
                f"{lot['teacher']:.1f} s + student phase {lot['student']:.1f} s ({1024 / lot['total']:.0f} env "
                f"steps/s)" + (f", {before}" if legacy else ""),
                lot["total"], "s/update", f"{REFERENCE_LOT_SECONDS / lot['total']:.2f}x the reference's "
                f"speed (its figure)", env_share(lot))
            if legacy:
                continue
            # the command a user types, same settings: what it adds to ``train`` per update
            command = measure_in_child({**common, "kind": "command", "precision": precision})
            results[f"lot_{precision}_command_total_s"] = command["total"]
            row(f"`lot-rl train --preset paper --precision {precision}`, same settings (the command: logging, "
                f"progress bar, checkpoints)", command["total"], "s/update",
                f"{command['total'] / lot['total']:.2f}x the update above")
            # the rollout's and the student phase's overlaps, each beside the sequential update above
            for groups, overlap in ((2, False), (1, True), (2, True)):
                timed = measure_in_child({**common, "kind": "lot", "precision": precision, "env_groups": groups,
                                          "overlap_students": overlap})
                key = f"lot_{precision}{'_groups2' * (groups == 2)}{'_overlap' * overlap}"
                results[f"{key}_total_s"] = timed["total"]
                what = " and ".join(["--env-groups 2"] * (groups == 2) + ["--overlap-students"] * overlap)
                row(f"lot_rl LoT {precision}, same settings, {what} ({1024 / timed['total']:.0f} env steps/s; "
                    f"student phase {timed['student']:.1f} s{', beside the rollout' if overlap else ''})",
                    timed["total"], "s/update", f"{lot['total'] / timed['total']:.2f}x the sequential update")
    if "phase" in opts.parts:
        for precision in precisions:
            reference = measure_in_child({**common, "kind": "phase", "precision": precision,
                                          "style": "reference", "channels_last": False}, keep_memory=False)["seconds"]
            results[f"phase_{precision}_reference_style_s"] = reference
            row(f"student phase ({precision}, N 5, {obs_num} rollouts), the reference's way: teacher re-run "
                f"with autograd per minibatch, NCHW", reference, "s", "1.00x")
            for legacy in (True, False):
                ours = measure_in_child({**common, "kind": "phase", "precision": precision, "style": "ours",
                                         "channels_last": True, "legacy": legacy})["seconds"]
                results[f"phase_{precision}_ours{'_before' if legacy else ''}_s"] = ours
                row(f"student phase ({precision}, same cache), ours: teacher targets once, channels-last"
                    + (f", {before}" if legacy else ""), ours, "s", f"{reference / ours:.2f}x the reference's speed")
    devices = ["cpu"] + (["cuda"] if "gpu" in opts.parts and torch.cuda.is_available() else [])
    if "students" in opts.parts:
        for device in devices:
            for precision in (precisions if device == "cpu" else ["fp32", "bf16"]):
                for k in (1, 2, 4):
                    seconds = {batched: measure_in_child({"kind": "students", "num_students": k, "precision": precision,
                                                          "batched": batched, "device": device})["seconds"]
                               for batched in (False, True)}
                    results[f"students_{device}_{precision}_k{k}_sequential_s"] = seconds[False]
                    results[f"students_{device}_{precision}_k{k}_batched_s"] = seconds[True]
                    row(f"{k} student(s), one imitation step of 256 frames ({device}, {precision}): sequential",
                        seconds[False] * 1000, "ms", "1.00x")
                    row(f"{k} student(s), same step, batched (vmap over stacked parameters)", seconds[True] * 1000,
                        "ms", f"{seconds[False] / seconds[True]:.2f}x the sequential speed")
    if "gpu" in opts.parts and "cuda" in devices:
        for precision in ("fp32", "bf16"):
            spec = {**common, "kind": "ppo", "precision": precision, "channels_last": True, "backend": "ale",
                    "device": "cuda"}
            figures = measure_in_child(spec)
            results[f"gpu_ppo_{precision}_sps"] = figures["sps"]
            row(f"GPU: lot_rl PPO {precision}, channels-last, native ALE", figures["sps"], "steps/s",
                *([f"{figures['sps'] / results['ppo_fp32_cl_ale_sps']:.2f}x the CPU's fp32"]
                  if "ppo_fp32_cl_ale_sps" in results else []), env_share(figures))
            lot = measure_in_child({**common, "kind": "lot", "precision": precision, "device": "cuda"})
            results[f"gpu_lot_{precision}_total_s"] = lot["total"]
            row(f"GPU: lot_rl LoT {precision}, native ALE, N 5, obs_num {obs_num}: teacher phase "
                f"{lot['teacher']:.1f} s + student phase {lot['student']:.1f} s", lot["total"], "s/update",
                f"{1024 / lot['total']:,.0f} env steps/s", env_share(lot))
    if "floor" in opts.parts:
        for precision in precisions:
            floor = measure_in_child({**common, "kind": "floor", "precision": precision})
            seconds = floor["total"] / floor["rate"]
            results[f"floor_{precision}_s"], results["lot_update_tflop"] = seconds, floor["total"] / 1e12
            results[f"matmul_{precision}_gflops"] = floor["rate"] / 1e9
            measured = results.get(f"lot_{precision}_total_s")
            row(f"compute floor of a LoT update ({precision}, N 5, obs_num {obs_num}): "
                f"{floor['total'] / 1e12:.2f} TFLOP (students {floor['student'] / 1e12:.2f}) at the CPU's "
                f"{floor['rate'] / 1e9:.0f} GFLOP/s matrix-multiply rate", seconds, "s/update",
                f"the measured update takes {measured / seconds:.2f}x this" if measured else "no LoT row measured")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
