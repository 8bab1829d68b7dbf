"""PPO with Learning-from-Teaching students on Atari, in one file (CleanRL's ``ppo_atari.py`` layout).

Read top to bottom: options, networks, then :func:`train` in the order things happen: rollout, GAE, the PPO
update (with the teachability penalty), the student phase, logging and checkpoints. The LoT additions are
marked ``# LoT:``; their math comes from :mod:`lot_rl.regularizer`, so this file shows *when* things
happen and the regularizer says *what* they are.

    lot-rl train                                   # LoT as the paper states it (the defaults), on Breakout
    lot-rl train --preset reference                # LoT as the reference code ran it (its cache aliasing...)
    lot-rl train --preset cleanrl                  # CleanRL's ppo_atari.py, gradient for gradient
    lot-rl train --preset ppo                      # CleanRL's PPO settings on our faster env and layout
    lot-rl train --preset paper --alpha 0 --num-students 0   # the paper's teacher-only baseline
    lot-rl train --resume runs/<run-name>          # continue a run from its checkpoint
    lot-rl train --track --capture-video           # to Weights & Biases, with videos of env 0's games

``--alpha 0 --num-students 0`` alone is *not* CleanRL's PPO: the defaults anneal the learning rate by a cosine
and run the native ALE env (``docs/reference.md`` lists every difference).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical

from lot_rl import config as cfg_lib
from lot_rl import distributed
from lot_rl.checkpoint import (CHECKPOINT_NAME, load_checkpoint, restore_optimizer, rng_state,
                               save_checkpoint, set_rng_state)
from lot_rl.envs import make_env, parse_env_id, video_frame
from lot_rl.envs.atari import BACKENDS, get_env_state, set_env_state, supports_state, trained_backend
from lot_rl.envs.groups import interleaved_steps
from lot_rl.errors import LoTUserError, require
from lot_rl.overlap import BackgroundWork
from lot_rl.regularizer import (ObservationCache, Students, validate_cache_options, validate_lot_options,
                                validate_student_weights)
from lot_rl.runlog import (GracefulInterrupt, QuietLogger, RunLogger, final_score, make_run_dir, progress_bar,
                           read_metrics)
from lot_rl.runtime import (PRECISIONS, HostToDevice, InferenceCopy, adam, autocast_dtype, autocast_for,
                            flush_denormals, keep_freed_memory, resolve_device, resolve_precision)
from lot_rl.students import BATCHING_MODES, batch_students_here
from lot_rl.tracking import TRACKING_FIELDS, TrackingOptions, start_tracking, validate_tracking
from lot_rl.video import EpisodeRecorder, training_schedule

CHECKPOINT_KIND = "atari-ppo-lot"
STUDENT_ARCHS = ("nature", "small")
# Options a resumed run cannot change (every other option given with --resume is applied).
FIXED_ON_RESUME = {**cfg_lib.FIXED_ON_RESUME,
                "student_arch": "the saved students have the other architecture; start a new run"}


@dataclass
class Args(TrackingOptions):  # --track, --wandb-project, ... (lot_rl.tracking) come first
    # --- experiment
    exp_name: str = cfg_lib.option("ppo_lot", "name of the experiment (part of the run name)")
    seed: int = cfg_lib.option(1, "seed of the experiment")
    torch_deterministic: bool = cfg_lib.option(True, "set torch.backends.cudnn.deterministic")
    device: str = cfg_lib.option("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:N")
    run_dir: str = cfg_lib.option("runs", "folder under which the run folder is created")
    run_name: str | None = cfg_lib.option(None, "run folder name (default: <env>__<exp>__<seed>__<time>)")
    save_every: int = cfg_lib.option(50, "write a checkpoint every N updates (and always at the end)")
    capture_video: bool = cfg_lib.option(False, "record games of env 0 as MP4 in <run>/videos/, shown in "
                                         "TensorBoard and W&B (native Atari backend: the 84x84 frames it sees)")
    video_every: int = cfg_lib.option(0, "with --capture-video: every N-th game of env 0 (0: CleanRL's schedule, "
                                      "games 0, 1, 8, 27, ..., 729, then every 1000th)")
    # --- environment
    env_id: str = cfg_lib.option("BreakoutNoFrameskip-v4", "Atari id (BreakoutNoFrameskip-v4 or ALE/Breakout-v5) "
                                 "or MinAtar id (MinAtar/Breakout-v1; pip install -e \".[minatar]\")")
    env_backend: str | None = cfg_lib.option(None, "Atari only: gymnasium (the default): CleanRL's wrappers "
                                             "(learns as CleanRL's PPO, exact resume); ale: ale-py's native vector "
                                             "env (faster env, learned slower on Breakout: docs/learning_parity.md)",
                                             choices=BACKENDS)
    num_envs: int = cfg_lib.option(8, "number of parallel environments (per process under torchrun / --nproc: "
                                   "the batch is processes x envs x steps)")
    repeat_action_probability: float | None = cfg_lib.option(
        None, "sticky actions (default: 0 for -v4 ids, 0.25 for ALE/-v5 ids, 0.1 for MinAtar ids)")
    full_action_space: bool = cfg_lib.option(False, "Atari only: use all 18 Atari actions")
    env_threads: int = cfg_lib.option(0, "Atari only: threads of the native vector env (0: one per env up to "
                                      "the cores)")
    life_loss_restart: bool = cfg_lib.option(
        False, "Atari, native backend: after a life loss take CleanRL's hidden NOOP, FIRE, action-2 steps (left "
        "out of the loss) and restart the frame stack, as CleanRL's wrappers do (docs/learning_parity.md; off: "
        "the native env's own behaviour, the agent presses FIRE)")
    life_loss_continue: bool = cfg_lib.option(
        False, "Atari, gymnasium backend: the native env's life losses on CleanRL's wrappers (terminate, then play "
        "on: no hidden steps, the frame stack runs on, the agent presses FIRE); the opposite of "
        "--life-loss-restart, for issue 18's experiment (docs/learning_parity.md)")
    gray_first: bool = cfg_lib.option(
        False, "Atari, gymnasium backend: the native env's pixels on CleanRL's wrappers (ALE's gray screen, max-pooled "
        "and resized; CleanRL turns its RGB frames gray last: at most one gray level apart), for issue 18's "
        "experiment (docs/learning_parity.md)")
    native_game_start: bool = cfg_lib.option(
        False, "Atari, gymnasium backend: the native env's game start on CleanRL's wrappers (one FIRE frame, then "
        "0-28 NOOP frames, three blank frames in the stack; CleanRL: 1-30 NOOP frames, then FIRE and RIGHT), for "
        "issue 18's experiment (docs/learning_parity.md)")
    cleanrl_game_start: bool = cfg_lib.option(
        False, "Atari, native backend: start each game as CleanRL's wrappers do (NOOP frames, then FIRE and RIGHT as "
        "forced steps left out of the loss, a fresh frame stack; the native env presses FIRE on the first frame); "
        "with --life-loss-restart the native env plays CleanRL's games (docs/learning_parity.md)")
    env_groups: int = cfg_lib.option(1, "native Atari env only: step the envs in this many groups, the network "
                                     "acting for one group while the others' games run (2 hides the emulator on "
                                     "machines with cores to spare; same data per update)")
    max_episode_frames: int | None = cfg_lib.option(
        None, "frames before a game is truncated (default: 108,000 on Atari, 30 minutes, the standard; none on "
        "MinAtar, its protocol; the reference's old gym: 400,000)")
    # --- PPO (the teacher)
    total_timesteps: int = cfg_lib.option(20_000_000, "total environment steps (agent steps, all envs of all "
                                          "processes)")
    learning_rate: float = cfg_lib.option(2.5e-4, "Adam learning rate of the teacher")
    lr_schedule: str = cfg_lib.option("cosine", "cosine: anneal to --final-lr (the LoT reference); linear: "
                                      "anneal to 0 (CleanRL); constant", choices=("cosine", "linear", "constant"))
    final_lr: float = cfg_lib.option(2.5e-6, "learning rate at the end of the cosine schedule")
    adam_eps: float = cfg_lib.option(1e-5, "Adam epsilon")
    num_steps: int = cfg_lib.option(128, "steps per environment per rollout")
    gamma: float = cfg_lib.option(0.99, "discount factor")
    gae_lambda: float = cfg_lib.option(0.95, "GAE lambda")
    num_minibatches: int = cfg_lib.option(4, "minibatches per PPO epoch")
    update_epochs: int = cfg_lib.option(4, "PPO epochs per update")
    norm_adv: bool = cfg_lib.option(True, "normalize advantages per minibatch")
    clip_coef: float = cfg_lib.option(0.1, "PPO surrogate clipping coefficient")
    clip_vloss: bool = cfg_lib.option(True, "clip the value loss as in the PPO paper")
    ent_coef: float = cfg_lib.option(0.01, "entropy bonus coefficient")
    vf_coef: float = cfg_lib.option(0.5, "value loss coefficient")
    max_grad_norm: float = cfg_lib.option(0.5, "gradient-norm clip of the teacher")
    target_kl: float | None = cfg_lib.option(None, "stop the PPO epochs early above this approx KL")
    clip_rewards: bool = cfg_lib.option(True, "learn from sign(reward) as CleanRL on Atari (logged returns are "
                                        "always the raw game's); --no-clip-rewards learns from raw rewards")
    # --- LoT
    alpha: float = cfg_lib.option(0.5, "weight of the teachability penalty (0: off)")
    num_students: int = cfg_lib.option(1, "number of students K (0: no students)")
    student_weights: list[float] = cfg_lib.option([], "lambda_i per student (default: equal, summing to 1)")
    student_steps_ratio: int = cfg_lib.option(5, "N: passes of student imitation over the cache per update")
    obs_num: int = cfg_lib.option(10, "rollouts kept in the students' observation cache")
    cache_mode: str = cfg_lib.option("copies", "copies: the last obs_num rollouts; reference: the LoT "
                                     "reference's aliasing (every entry is the latest rollout)",
                                     choices=ObservationCache.MODES)
    temperature: float = cfg_lib.option(1.0, "softmax temperature T of the KL terms")
    detach: bool = cfg_lib.option(True, "each network's KL target is fixed; --no-detach (the reference's --detach 0): "
                                  "the penalty also trains the students and their imitation also trains the "
                                  "teacher, on the PPO minibatches")
    lot_start: float = cfg_lib.option(0.0, "fraction of training before the penalty starts (it is always off "
                                      "in the first update, whose students are untrained)")
    student_arch: str = cfg_lib.option("nature", "student network: nature (the teacher's: the Nature CNN on Atari, "
                                       "Young & Tian's on MinAtar) or small (Atari only: the 2013 DQN CNN)",
                                       choices=STUDENT_ARCHS)
    student_lr: float | None = cfg_lib.option(None, "student learning rate (default: --learning-rate), "
                                              "same schedule as the teacher")
    student_weight_decay: float = cfg_lib.option(1e-4, "student Adam weight decay")
    student_max_grad_norm: float = cfg_lib.option(0.5, "gradient-norm clip of each student")
    student_on_ppo_batches: bool = cfg_lib.option(True, "also train students on every PPO minibatch (as the "
                                                  "reference does)")
    student_minibatches: int = cfg_lib.option(4, "minibatches per cached rollout in the student phase (the "
                                              "reference: its PPO's 4, i.e. 256 states)")
    batch_students: str = cfg_lib.option("auto", "with --num-students >= 2, on: the students run as one batched "
                                         "(vmapped) computation, same math per student; off: one network after "
                                         "another; auto: on with CUDA, off on CPUs (where it measured no faster)",
                                         choices=BATCHING_MODES)
    # --- speed
    precision: str = cfg_lib.option("fp32", "fp32; bf16 autocast (fast on GPUs and AVX-512 CPUs; slow on AVX2-only "
                                    "CPUs); auto: bf16 where it is native (Ampere+ GPUs, CPUs with AVX-512 BF16/AMX), "
                                    "else fp32, the choice printed and logged", choices=PRECISIONS)
    channels_last: bool = cfg_lib.option(True, "channels-last memory format for the CNNs (oneDNN on CPU: about "
                                         "1.45x faster training steps than NCHW); --no-channels-last for NCHW")
    threads: int = cfg_lib.option(0, "torch CPU threads (0: torch's default); the MinAtar presets use 1, as "
                                  "intra-op threads only slow their small networks down")
    overlap_students: bool = cfg_lib.option(False, "run each update's student phase in a worker thread alongside "
                                            "the next rollout (same math; the torch threads are split between "
                                            "the two while both run)")
    flush_denormals: bool = cfg_lib.option(False, "CPU: flush denormal floats to zero (fully with --threads 1); the "
                                           "MinAtar presets turn it on, as their students' weight-decayed weights "
                                           "sink into the denormal range, where every step is 20x slower")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        """Updates of the whole run: under torchrun each of them takes one rollout of every process."""
        return self.total_timesteps // (self.batch_size * distributed.world_size())


PRESETS: dict[str, dict[str, Any]] = {
    # LoT as the paper states it (the defaults above): its run script's settings, a cache of the last obs_num
    # *distinct* rollouts, CleanRL's wrappers (the default env since issue 18) and our channels-last layout.
    # See docs/reference.md for how it differs from `reference`.
    "paper": dict(total_timesteps=20_000_000, lr_schedule="cosine", final_lr=2.5e-6, alpha=0.5,
                  num_students=1, student_steps_ratio=5, obs_num=10, temperature=1.0, student_weight_decay=1e-4),
    # LoT as the reference code ran it (trainer/atari_games.py and its run script): the paper's settings plus
    # its cache aliasing (every cache entry is the latest rollout), CleanRL's wrappers, its seed 0, NCHW, and
    # old gym's 400,000-frame cap. Alpha is 0 in the first update here as in every preset.
    "reference": dict(total_timesteps=20_000_000, lr_schedule="cosine", final_lr=2.5e-6, alpha=0.5,
                      num_students=1, student_steps_ratio=5, obs_num=10, temperature=1.0,
                      student_weight_decay=1e-4, cache_mode="reference", env_backend="gymnasium", seed=0,
                      channels_last=False, max_episode_frames=400_000),
    # CleanRL's ppo_atari.py settings, teacher only (linear annealing to 0, 10M steps), on CleanRL's environment
    # (its wrappers, the default env: named here as the preset is about it) and our channels-last layout. Not the
    # faster native env: on Breakout PPO learned 1.9x the return at 300k steps on the wrappers over 5 seeds for
    # ~0.9x the env steps/s end to end on a CPU (docs/learning_parity.md); `--env-backend ale` gives it back.
    "ppo": dict(total_timesteps=10_000_000, lr_schedule="linear", alpha=0.0, num_students=0,
                student_steps_ratio=0, env_backend="gymnasium"),
    # CleanRL's ppo_atari.py exactly: `ppo` with CleanRL's wrappers and NCHW. Same environment step for step,
    # same gradients bit for bit on the same minibatch (tests/test_ppo_lot_atari.py).
    "cleanrl": dict(total_timesteps=10_000_000, lr_schedule="linear", alpha=0.0, num_students=0,
                    student_steps_ratio=0, env_backend="gymnasium", channels_last=False),
}
# MinAtar: PureJaxRL's PPO for MinAtar (examples/brax_minatar.ipynb in luchris429/purejaxrl, "tuned to do well on
# Gymnax's MinAtar environments"): 64 envs x 128 steps, 4 epochs x 8 minibatches, Adam 5e-3 annealed linearly to
# 0, clip 0.2, entropy 0.01, value 0.5, max-grad-norm 0.5, gamma 0.99, GAE 0.95, raw rewards; here with Young &
# Tian's network and 5M steps. Sources and deviations: docs/minatar.md.
MINATAR_PPO: dict[str, Any] = dict(
    env_id="MinAtar/Breakout-v1", total_timesteps=5_000_000, num_envs=64, num_steps=128, num_minibatches=8,
    update_epochs=4, learning_rate=5e-3, lr_schedule="linear", clip_coef=0.2, ent_coef=0.01, vf_coef=0.5,
    max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95, clip_rewards=False,
    # The students imitate in minibatches of the PPO minibatches' size (1,024), as on Atari (256: 4 per rollout).
    student_minibatches=8,
    # CPU speed, measured (docs/minatar.md): NCHW and one torch thread are faster for this small network, and
    # denormals flushed keep the students' steps from slowing down 20x after a few updates.
    channels_last=False, threads=1, flush_denormals=True)
PRESETS.update({
    # PureJaxRL's MinAtar PPO, teacher only.
    "minatar-ppo": dict(MINATAR_PPO, alpha=0.0, num_students=0, student_steps_ratio=0),
    # The same PPO with LoT at the paper's settings.
    "minatar": dict(MINATAR_PPO, alpha=0.5, num_students=1, student_steps_ratio=5, obs_num=10, temperature=1.0,
                    student_weight_decay=1e-4),
})

OPTION_GROUPS = {**{n: "experiment" for n in ("exp_name", "seed", "torch_deterministic", "device", "run_dir",
                                               "run_name", "save_every", "capture_video", "video_every",
                                               *TRACKING_FIELDS)},
                 **{n: "environment" for n in ("env_id", "env_backend", "num_envs", "repeat_action_probability",
                                                "full_action_space", "env_threads", "env_groups",
                                                "max_episode_frames", "life_loss_restart", "life_loss_continue",
                                                "gray_first", "native_game_start", "cleanrl_game_start")},
                 **{n: "LoT" for n in ("alpha", "num_students", "student_weights", "student_steps_ratio",
                                        "obs_num", "cache_mode", "temperature", "detach", "lot_start",
                                        "student_arch", "student_lr", "student_weight_decay",
                                        "student_max_grad_norm", "student_on_ppo_batches",
                                        "student_minibatches", "batch_students")},
                 **{n: "speed" for n in ("precision", "channels_last", "threads", "overlap_students",
                                          "flush_denormals")}}


def validate_args(args: Args) -> None:
    """Every option's domain, checked before anything is built."""
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps", "save_every",
                 "student_minibatches"):
        require(getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    require(args.max_episode_frames is None or args.max_episode_frames >= 1,
            f"--max-episode-frames must be >= 1, got {args.max_episode_frames}")
    require(args.threads >= 0, f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    require(args.video_every >= 0, f"--video-every must be >= 0 (0: CleanRL's schedule), got {args.video_every}")
    require(args.batch_size % args.num_minibatches == 0,
            f"--num-minibatches {args.num_minibatches} does not divide the batch of {args.batch_size} "
            f"(num_envs x num_steps); choose a divisor of {args.batch_size}")
    # The background student phase all-reduces its gradients while the rollout's own collectives may run: two
    # threads of collectives on one process group would interleave differently on different ranks.
    require(not (args.overlap_students and distributed.world_size() > 1),
            "--overlap-students cannot run under torchrun (several processes): leave it out there")
    rollout = args.batch_size * distributed.world_size()  # under torchrun: one rollout of every process
    require(args.total_timesteps >= rollout,
            f"--total-timesteps {args.total_timesteps} is less than one rollout ({rollout} steps)")
    require(args.learning_rate > 0, f"--learning-rate must be > 0, got {args.learning_rate}")
    require(0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    require(args.clip_coef > 0, f"--clip-coef must be > 0, got {args.clip_coef}")
    require(0.0 <= args.lot_start <= 1.0, f"--lot-start is a fraction of training in [0, 1], got {args.lot_start}")
    require(args.student_lr is None or args.student_lr > 0,
            f"--student-lr must be > 0 (leave it out to follow --learning-rate), got {args.student_lr}")
    validate_lot_options(args.alpha, args.num_students, args.temperature, args.student_steps_ratio)
    validate_student_weights(args.student_weights, args.num_students)
    validate_cache_options(args.obs_num, args.cache_mode)
    validate_tracking(args)


# ----------------------------------------------------------------------------------------------------
# Networks


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weights and constant bias, as CleanRL (and the PPO implementation details) do."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


# Each trunk applies its last convolution's ReLU after Flatten: the same function and the same parameter names
# (Flatten and ReLU have none), but on channels-last activations ReLU-then-Flatten hands ReLU's backward an NCHW
# gradient for an NHWC output, and PyTorch's element-wise kernels take a generic strided path for mixed layouts
# (10-20x slower for that op): 1.03-1.08x the student step, 1.00-1.05x the PPO minibatch (`python
# scripts/profile_steps.py --relu-order`, docs/results/speed/2026-12-01-relu-order.txt).


def nature_cnn(channels: int = 4) -> nn.Sequential:
    """The DQN Nature CNN trunk: 4x84x84 uint8 frames (scaled inside the agent) -> 512 features."""
    return nn.Sequential(
        layer_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.Flatten(), nn.ReLU(),
        layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU())


def small_cnn(channels: int = 4) -> nn.Sequential:
    """A smaller student trunk (the 2013 DQN CNN): about a third of the Nature CNN's compute."""
    return nn.Sequential(
        layer_init(nn.Conv2d(channels, 16, 8, stride=4)), nn.ReLU(),
        layer_init(nn.Conv2d(16, 32, 4, stride=2)), nn.Flatten(), nn.ReLU(),
        layer_init(nn.Linear(32 * 9 * 9, 256)), nn.ReLU())


def minatar_network(channels: int) -> nn.Sequential:
    """Young & Tian's MinAtar trunk: Cx10x10 0/1 grids -> one 3x3 convolution of 16 filters, stride 1 -> 128."""
    return nn.Sequential(
        layer_init(nn.Conv2d(channels, 16, 3, stride=1)), nn.Flatten(), nn.ReLU(),
        layer_init(nn.Linear(16 * 8 * 8, 128)), nn.ReLU())


def scale_frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [0, 1]: ``x / 255.0`` to the bit, with one float buffer instead of two.

    Under bf16 autocast straight to bf16: the values autocast would cast the fp32 frames to at the first layer
    (each of the 256 quotients rounds alike), in half the memory.
    """
    return x.to(autocast_dtype(x.device), copy=True).div_(255.0)  # copy: never scale a float input in place


def grid_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0/1 MinAtar grids -> float, unscaled."""
    return x.to(torch.float32)


ATARI_FRAMES = (4, 84, 84)  # the observation shape of lot_rl's Atari envs


def trunk_for(obs_shape: tuple[int, ...], arch: str = "nature") -> tuple[nn.Sequential, int, Any]:
    """The network that reads observations of ``obs_shape``: (trunk, its output features, input preprocessing).

    84x84 frames (Atari): the Nature CNN (``small``: the 2013 DQN CNN), inputs scaled by 1/255. 10x10 grids
    (MinAtar): Young & Tian's network (``small`` is refused), inputs 0/1, not scaled.
    """
    channels, *size = obs_shape
    if size == [84, 84]:
        trunk, features = (nature_cnn(channels), 512) if arch == "nature" else (small_cnn(channels), 256)
        return trunk, features, scale_frames
    if size == [10, 10]:
        require(arch == "nature", "--student-arch small is for Atari frames; MinAtar students use the "
                                  "teacher's network (Young & Tian's): use --student-arch nature")
        return minatar_network(channels), 128, grid_to_float
    raise LoTUserError(f"no network for observations of shape {tuple(obs_shape)}: lot_rl reads 84x84 Atari "
                       f"frames and 10x10 MinAtar grids")


class Agent(nn.Module):
    """The teacher: a shared trunk (the Nature CNN, or Young & Tian's network on MinAtar) with a policy head
    (logits) and a value head."""

    def __init__(self, num_actions: int, obs_shape: tuple[int, ...] = ATARI_FRAMES):
        super().__init__()
        self.network, features, self.preprocess = trunk_for(obs_shape)
        self.actor = layer_init(nn.Linear(features, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(features, 1), std=1)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(x))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.hidden(x))

    def policy_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(self.hidden(x))

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        """(action, log-prob, entropy, value, logits); samples an action when none is given."""
        hidden = self.hidden(x)
        logits = self.actor(hidden).float()  # the distribution in fp32 even under bf16 autocast
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden).float(), logits


class StudentPolicy(nn.Module):
    """A student: a CNN trunk and a policy head. It has no value head: it only imitates the teacher's policy."""

    def __init__(self, num_actions: int, arch: str = "nature", obs_shape: tuple[int, ...] = ATARI_FRAMES):
        super().__init__()
        require(arch in STUDENT_ARCHS, f"unknown --student-arch {arch!r}; choose one of {', '.join(STUDENT_ARCHS)}")
        self.network, features, self.preprocess = trunk_for(obs_shape, arch)
        self.actor = layer_init(nn.Linear(features, num_actions), std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(self.network(self.preprocess(x)))


def make_students(args: Args, num_actions: int, device: torch.device, lr_lambda,
                  obs_shape: tuple[int, ...] = ATARI_FRAMES) -> Students:
    """K students, each with Adam (weight decay) on the teacher's learning-rate schedule; with
    ``--batch-students`` on (or auto, on CUDA) and K >= 2, run as one batched computation
    (:class:`lot_rl.students.StudentStack`)."""
    student_lr = args.learning_rate if args.student_lr is None else args.student_lr
    networks = [StudentPolicy(num_actions, args.student_arch, obs_shape).to(device)
                for _ in range(args.num_students)]
    if args.channels_last:
        networks = [net.to(memory_format=torch.channels_last) for net in networks]
    return Students(
        networks,
        make_optimizer=lambda params: adam(params, lr=student_lr, eps=args.adam_eps,
                                           weight_decay=args.student_weight_decay),
        make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
        weights=args.student_weights or None, temperature=args.temperature,
        max_grad_norm=args.student_max_grad_norm,
        batched=batch_students_here(args.batch_students, args.num_students, device))


def lr_factor(args: Args):
    """Learning-rate multiplier as a function of the number of finished updates (for LambdaLR)."""
    num_updates = max(args.num_updates, 1)

    def factor(done_updates: int) -> float:
        progress = min(done_updates / num_updates, 1.0)
        if args.lr_schedule == "linear":
            return 1.0 - progress
        if args.lr_schedule == "cosine":
            floor = args.final_lr / args.learning_rate
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


# ----------------------------------------------------------------------------------------------------
# The PPO loss (CleanRL's), as a function so that tests can hold it against an independent computation.


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if mask is None else (x * mask).sum() / mask.sum().clamp_min(1.0)


def ppo_loss(agent: Agent, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor, args: Args,
             mask: torch.Tensor | None = None):
    """CleanRL's clipped PPO loss on one minibatch. Returns (loss, stats dict of tensors, new logits).

    ``mask`` (1: the agent's decision, 0: an action the env forced, see ``LifeLossRestart``) leaves forced
    steps out of every mean, the advantages' normalization included; None is CleanRL's loss exactly.
    """
    _, newlogprob, entropy, newvalue, logits = agent.get_action_and_value(obs, actions.long())
    logratio = newlogprob - old_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = _masked_mean(-logratio, mask)
        approx_kl = _masked_mean((ratio - 1) - logratio, mask)
        clipfrac = _masked_mean(((ratio - 1.0).abs() > args.clip_coef).float(), mask)
    if args.norm_adv:
        if mask is None:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        else:
            mean = _masked_mean(advantages, mask)
            std = ((mask * (advantages - mean) ** 2).sum() / (mask.sum() - 1).clamp_min(1.0)).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
    pg_loss = _masked_mean(torch.max(-advantages * ratio,
                                     -advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)), mask)
    newvalue = newvalue.view(-1)
    if args.clip_vloss:
        v_unclipped = (newvalue - returns) ** 2
        v_clipped = old_values + torch.clamp(newvalue - old_values, -args.clip_coef, args.clip_coef)
        v_loss = 0.5 * _masked_mean(torch.max(v_unclipped, (v_clipped - returns) ** 2), mask)
    else:
        v_loss = 0.5 * _masked_mean((newvalue - returns) ** 2, mask)
    entropy_loss = _masked_mean(entropy, mask)
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    stats = {name: value.detach() for name, value in dict(
        policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss, old_approx_kl=old_approx_kl,
        approx_kl=approx_kl, clipfrac=clipfrac).items()}
    return loss, stats, logits


def students_learn_on_ppo_batches(args: Args, students: Students) -> bool:
    """Whether the students get gradients in the PPO phase (their imitation on the minibatch, or an
    undetached penalty); if not, their logits there are computed without autograd."""
    return len(students) > 0 and (args.student_on_ppo_batches or not args.detach)


def lot_ppo_loss(agent: Agent, students: Students, obs, actions, old_logprobs, advantages, returns,
                 old_values, args: Args, *, alpha_now: float, autocast=contextlib.nullcontext,
                 mask: torch.Tensor | None = None):
    """One PPO minibatch's loss with LoT: the sum whose single backward updates teacher and students.

    ``ppo_loss + alpha_now * sum_i lambda_i kl(teacher, student_i.detach(), T)`` (the teacher's part) plus,
    with ``--student-on-ppo-batches``, ``sum_i kl(student_i, teacher.detach(), T)`` (the students' part,
    which reaches only the students). With ``--no-detach`` neither target is detached, as in the
    reference's ``--detach 0``: each part reaches both sides. Each network is then clipped and stepped with its own optimizer,
    which equals separate updates. ``alpha_now`` is the alpha in force this update (0 while the penalty is
    off); ``args.alpha`` is not read here. ``mask`` leaves forced steps out of the PPO terms (``ppo_loss``);
    the LoT terms keep every state (the teacher's policy there is still its policy). Returns (loss, stats)
    with ``teacher_kl``/``student_kl`` when present.
    """
    with autocast():
        loss, stats, teacher_logits = ppo_loss(agent, obs, actions, old_logprobs, advantages, returns,
                                               old_values, args, mask)
        with torch.set_grad_enabled(students_learn_on_ppo_batches(args, students)):
            student_logits = students.logits(obs) if len(students) else []
    if len(students):
        # LoT: teacher loss += alpha * sum_i lambda_i kl(teacher, student_i.detach(), T)
        penalty = students.penalty(teacher_logits, student_logits, detach=args.detach)
        stats["teacher_kl"] = penalty.detach()
        loss = loss + alpha_now * penalty
        if args.student_on_ppo_batches:
            # LoT: the students imitate the teacher on this minibatch too (the reference does); with
            # --no-detach this loss reaches the teacher as well, as the reference's --detach 0 does
            imitation = students.imitation_loss(student_logits, teacher_logits, detach=args.detach)
            stats["student_kl"] = imitation.detach() / len(students)
            loss = loss + imitation
    return loss, stats


def compute_gae(rewards, values, dones, next_value, next_done, gamma: float, gae_lambda: float):
    """Generalized advantage estimates and returns over a (num_steps, num_envs) rollout."""
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    num_steps = rewards.shape[0]
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal, nextvalues = 1.0 - next_done, next_value
        else:
            nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


# ----------------------------------------------------------------------------------------------------
# Training


def _to_device_obs(x: np.ndarray | torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def train(args: Args, resume: str | Path | None = None, max_updates: int | None = None) -> Path:
    """Train; return the run folder.

    ``resume`` continues the run saved in that folder (or checkpoint file). ``max_updates`` stops this call
    after that many updates (with a checkpoint), as a Ctrl-C does; resuming then continues the same run.
    """
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume, kind=CHECKPOINT_KIND)
    # This process's device; under torchrun the process group starts here (lot_rl.distributed)
    device = distributed.setup(args.device)  # before the run folder exists: a bad --device leaves nothing behind
    validate_args(args)
    game = parse_env_id(args.env_id)
    keep_freed_memory()
    if checkpoint is not None:
        saved = checkpoint["config"]
        require(parse_env_id(saved["env_id"]).key == game.key,
                f"checkpoint {checkpoint['path']} is from {saved['env_id']}, not {args.env_id}")
        cfg_lib.require_unchanged_on_resume(args, saved, FIXED_ON_RESUME)
        distributed.require_same_world_size(checkpoint)
        if game.family == "atari" and args.env_backend is None:
            args = replace(args, env_backend=trained_backend(saved))  # a resumed run keeps its env
    if game.family == "atari":
        args = replace(args, env_backend=game.choose_backend(args.env_backend))  # the saved config names its env

    # Seeding (CleanRL); under torchrun each process's envs and RNGs start from its own seed
    seed = distributed.rank_seed(args.seed, stride=args.num_envs)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    envs = make_env(args.env_id, args.num_envs, seed, backend=args.env_backend,
                    repeat_action_probability=args.repeat_action_probability,
                    full_action_space=args.full_action_space, num_threads=args.env_threads,
                    max_episode_frames=args.max_episode_frames, video_frames=args.capture_video,
                    life_loss_restart=args.life_loss_restart, life_loss_continue=args.life_loss_continue,
                    gray_first=args.gray_first, native_game_start=args.native_game_start,
                    cleanrl_game_start=args.cleanrl_game_start, groups=args.env_groups)
    num_actions = int(envs.single_action_space.n)
    obs_shape = envs.single_observation_space.shape  # the networks follow it: Atari frames or MinAtar grids
    if checkpoint is not None:
        require(checkpoint["num_actions"] == num_actions,
                f"checkpoint {checkpoint['path']} has {checkpoint['num_actions']} actions, this env has "
                f"{num_actions} (--full-action-space differs?)")

    agent = Agent(num_actions, obs_shape).to(device)
    if args.channels_last:
        agent = agent.to(memory_format=torch.channels_last)
    optimizer = adam(agent.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args))
    precision, precision_reason = resolve_precision(args.precision, device)
    autocast = autocast_for(device, precision)
    # LoT: the students, their optimizers, and the cache of rollout states they imitate the teacher on
    students = make_students(args, num_actions, device, lr_factor(args), obs_shape)
    cache = ObservationCache(args.obs_num, args.cache_mode)
    distributed.broadcast_parameters(agent, *students.networks)  # every process starts from rank 0's networks
    # LoT: the student phase draws its shuffles from its own generator, so that it can run beside the rollout
    student_rng = torch.Generator(device).manual_seed(seed)
    student_work = BackgroundWork(args.overlap_students and len(students) > 0 and args.student_steps_ratio > 0,
                                  device)
    # The run folder exists only once everything above was built (a refused option leaves nothing behind).
    if checkpoint is not None:
        run_dir = Path(checkpoint["path"]).parent
    else:
        run_name = args.run_name or f"{game.name}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = distributed.on_main(lambda: make_run_dir(args.run_dir, run_name))  # rank 0's, for all
    lot_start_update = max(1, math.ceil(args.lot_start * args.num_updates))
    students_learn_here = students_learn_on_ppo_batches(args, students)

    # Rollout storage (CleanRL), observations kept as uint8
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape,
                      dtype=torch.uint8, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    decided = torch.ones((args.num_steps, args.num_envs), device=device)  # 0: the env forced the action
    values = torch.zeros((args.num_steps, args.num_envs), device=device)

    global_step, start_update = 0, 1
    next_obs_np, _ = envs.reset(seed=seed)
    next_done = torch.zeros(args.num_envs, device=device)
    student_phase_step = None  # --overlap-students: the step of the update whose student phase is running
    if checkpoint is not None:
        own = distributed.own_state(checkpoint)  # this process's envs, RNGs and cache
        agent.load_state_dict(checkpoint["agent"])
        # Options given with --resume win: the optimizers keep the hyperparameters built from them.
        restore_optimizer(optimizer, checkpoint["optimizer"], scheduler, checkpoint["scheduler"])
        students.load_state_dict(checkpoint["students"])
        cache.load_state_dict({**own["cache"], "entries": [e.to(device) for e in own["cache"]["entries"]]})
        global_step, start_update = checkpoint["global_step"], checkpoint["update"] + 1
        set_rng_state(own["rng"])
        if "student_rng" in own:
            student_rng.set_state(own["student_rng"])
        if own.get("env_state") is not None and supports_state(envs):
            set_env_state(envs, own["env_state"])
            next_obs_np = own["next_obs"].numpy()
            next_done = own["next_done"].to(device)
        else:
            # The native vector env cannot restore its games: continue with new ones.
            next_obs_np, _ = envs.reset(seed=seed + start_update)
    upload = HostToDevice(device)  # CUDA: frames through pinned memory, copied asynchronously
    next_obs = upload(next_obs_np).clone()  # updated in place, envs by envs, during rollouts
    inference = InferenceCopy(agent, precision)  # bf16: the teacher's weights cast once per update, not per forward
    acting = inference.refresh()

    def act(step: int, envs_now: slice) -> np.ndarray:
        """The teacher acts for envs ``envs_now`` on what they show at ``step``, recorded in the rollout storage."""
        obs[step, envs_now] = next_obs[envs_now]
        dones[step, envs_now] = next_done[envs_now]
        with torch.inference_mode(), autocast():
            action, logprob, _, value, _ = acting.get_action_and_value(
                _to_device_obs(next_obs[envs_now], device, args.channels_last))
        values[step, envs_now] = value.flatten()
        actions[step, envs_now] = action
        logprobs[step, envs_now] = logprob
        return action.cpu().numpy()

    def finish_background_student_phase() -> None:
        """--overlap-students: wait for the student phase in flight; log its loss at its own update's step."""
        nonlocal student_phase_step
        student_kls = student_work.result()
        students.scheduler_step()
        if student_kls:
            logger.log(student_phase_step, {"lot/student_kl": float(np.mean(student_kls))})
        student_phase_step = None

    def write_checkpoint(update: int) -> None:
        # Each process's own state (rank 0 gathers them all: under torchrun the ranks' envs, RNGs and caches differ)
        cache_state = cache.state_dict()
        ranks = distributed.gather_rank_states({
            "cache": {**cache_state, "entries": [e.cpu() for e in cache_state["entries"]]}, "rng": rng_state(),
            "student_rng": student_rng.get_state(), "env_state": get_env_state(envs), "next_obs": next_obs.cpu(),
            "next_done": next_done.cpu()})
        if distributed.is_main_process():
            save_checkpoint(run_dir / CHECKPOINT_NAME, CHECKPOINT_KIND, {
                "config": cfg_lib.to_dict(args), "num_actions": num_actions, "observation_shape": list(obs_shape),
                "update": update,
                "global_step": global_step, "agent": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "students": students.state_dict(), **ranks,
                "video_games": videos.games_done if videos is not None else video_games})
        distributed.barrier()  # no process goes on before the checkpoint is on disk

    # Rank 0 alone writes the run folder (config, TensorBoard, metrics.jsonl, W&B, videos, checkpoints).
    precision_note = f"precision: {precision} ({precision_reason})"
    if args.precision == "auto" and distributed.is_main_process():
        print(precision_note, flush=True)
    if distributed.is_main_process():
        cfg_lib.save_config(args, run_dir / "config.yaml", comments=[precision_note])
    # A resumed run drops what was logged after its checkpoint (the rows at the checkpoint's step stay).
    # With --track every scalar also goes to W&B (a resumed run continues its W&B run).
    logger = RunLogger(run_dir, hparams={**cfg_lib.to_dict(args), "precision_in_use": precision},
                       purge_step=global_step + 1 if checkpoint is not None else None,
                       tracker=start_tracking(args, run_dir, cfg_lib.to_dict(args))) \
        if distributed.is_main_process() else QuietLogger()
    # --capture-video: env 0's games on a schedule, each to videos/ as it ends, then to TensorBoard and W&B
    video_games = checkpoint.get("video_games", 0) if checkpoint is not None else 0  # env 0's games before
    videos = None
    if args.capture_video and distributed.is_main_process():
        videos = EpisodeRecorder(run_dir / "videos", game.video_fps, training_schedule(args.video_every),
                                 games_done=video_games,
                                 on_saved=lambda path, _: logger.log_video("videos/env0", path, global_step))
        if checkpoint is None or not supports_state(envs):  # fresh games (a restored game is not recorded)
            videos.start_game(lambda: video_frame(envs, 0, next_obs_np[0]))
    steps_per_update = args.batch_size * distributed.world_size()  # the rollouts of every process
    bar = progress_bar(args.num_updates * steps_per_update, initial=global_step, desc=game.name)
    recent_returns: list[float] = []
    start_time, start_step = time.time(), global_step
    interrupt = GracefulInterrupt()
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    restore_denormals = flush_denormals(args.flush_denormals)
    try:
        for update in range(start_update, args.num_updates + 1):
            # ---------------- rollout: the teacher acts (`act`), the games step; with --env-groups the games of
            # one group of envs run while the teacher acts for another (lot_rl.envs.groups)
            finished = []  # (global step, return, length) of the games that ended
            rollout_start = global_step
            for step, stepped, (next_obs_np, reward, terminations, truncations, infos) in interleaved_steps(
                    envs, args.num_steps, act):
                global_step = rollout_start + (step + 1) * args.num_envs * distributed.world_size()
                rewards[step, stepped] = torch.as_tensor(np.sign(reward) if args.clip_rewards else reward,
                                                         device=device)
                if "forced" in infos:
                    decided[step, stepped] = torch.as_tensor(~infos["forced"], device=device, dtype=torch.float32)
                next_obs[stepped] = upload(next_obs_np)
                next_done[stepped] = torch.as_tensor(np.logical_or(terminations, truncations), device=device,
                                                     dtype=torch.float32)
                if "_episode" in infos:
                    for i in np.flatnonzero(infos["_episode"]):
                        finished.append((global_step, float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))
                if videos is not None and stepped.start == 0:  # env 0's step
                    videos.step(lambda: video_frame(envs, 0, next_obs_np[0]),
                                game_over="_episode" in infos and bool(infos["_episode"][0]))
            # Every process's games, logged by rank 0 in step order
            for at_step, ret, length in sorted(distributed.collect_on_main(finished), key=lambda game: game[0]):
                recent_returns = (recent_returns + [ret])[-20:]
                logger.log(at_step, {"charts/episodic_return": ret, "charts/episodic_length": length})

            # ---------------- GAE
            with torch.inference_mode(), autocast():
                next_value = acting.get_value(_to_device_obs(next_obs, device, args.channels_last)).float().reshape(1, -1)
            advantages, returns = compute_gae(rewards, values, dones, next_value, next_done,
                                              args.gamma, args.gae_lambda)
            b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
            b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
            b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
            # Steps whose action the env forced are left out of the PPO loss (None: all are the agent's)
            b_mask = None if bool(decided.all()) else decided.reshape(-1)
            if args.channels_last:
                b_obs = b_obs.contiguous(memory_format=torch.channels_last)

            # LoT: the previous update's student phase (--overlap-students: run alongside this rollout) ends before
            # the cache changes and the PPO update needs the students; then remember this rollout's states
            if student_phase_step is not None:
                finish_background_student_phase()
            if len(students):
                cache.append(b_obs)
            # LoT: the penalty is off until the students have imitated at least once (and until --lot-start)
            alpha_now = args.alpha if (update > lot_start_update and len(students)) else 0.0

            # ---------------- PPO update (+ LoT teachability penalty and student steps on the same batch)
            b_inds = np.arange(args.batch_size)
            clipfracs, teacher_kls, ppo_student_kls = [], [], []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb = torch.as_tensor(b_inds[start:start + args.minibatch_size], device=device)
                    loss, stats = lot_ppo_loss(agent, students, b_obs[mb], b_actions[mb], b_logprobs[mb],
                                               b_advantages[mb], b_returns[mb], b_values[mb], args,
                                               alpha_now=alpha_now, autocast=autocast,
                                               mask=None if b_mask is None else b_mask[mb])
                    if "teacher_kl" in stats:
                        teacher_kls.append(float(stats["teacher_kl"]))
                    if "student_kl" in stats:
                        ppo_student_kls.append(float(stats["student_kl"]))
                    optimizer.zero_grad(set_to_none=True)
                    students.zero_grad()
                    loss.backward()
                    distributed.average_gradients(agent)  # torchrun: the mean over processes, before clipping
                    if students_learn_here:
                        distributed.average_gradients(*students.networks)
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                    if students_learn_here:
                        students.step()
                    clipfracs.append(float(stats["clipfrac"]))
                if args.target_kl is not None and distributed.mean_across_ranks(stats["approx_kl"]) > args.target_kl:
                    break
            acting = inference.refresh()  # the updated teacher: the student phase's targets, the next rollout

            # ---------------- LoT: student phase, N passes of imitation over the cached rollouts; with
            # --overlap-students in a worker thread, alongside the next rollout (lot_rl.overlap)
            student_kls = []
            if len(students) and args.student_steps_ratio > 0:
                student_work.start(student_phase, acting, students, cache, args, autocast, student_rng)
            scheduler.step()
            if student_work.enabled:
                student_phase_step = global_step
            else:
                student_kls = student_work.result() or []
                students.scheduler_step()

            # ---------------- logging (CleanRL's tags, plus lot/*)
            y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
            sps = int((global_step - start_step) / max(time.time() - start_time, 1e-9))
            scalars = {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "losses/value_loss": float(stats["value_loss"]), "losses/policy_loss": float(stats["policy_loss"]),
                "losses/entropy": float(stats["entropy"]), "losses/old_approx_kl": float(stats["old_approx_kl"]),
                "losses/approx_kl": float(stats["approx_kl"]), "losses/clipfrac": float(np.mean(clipfracs)),
                "losses/explained_variance": explained_var, "charts/SPS": sps, "lot/alpha": alpha_now,
            }
            if teacher_kls:
                scalars["lot/teacher_kl"] = float(np.mean(teacher_kls))
            if (student_kls or ppo_student_kls) and student_phase_step is None:  # else logged when the phase ends
                scalars["lot/student_kl"] = float(np.mean(student_kls or ppo_student_kls))
            logger.log(global_step, scalars)
            bar.update(steps_per_update)
            bar.set_postfix(SPS=sps, ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-")
            stop = (distributed.any_rank(interrupt.requested)  # every process stops at the same update
                    or (max_updates is not None and update - start_update + 1 >= max_updates))
            if update % args.save_every == 0 or update == args.num_updates or stop:
                if student_phase_step is not None:  # the checkpoint holds the students after their phase
                    finish_background_student_phase()
                write_checkpoint(update)
            if update == args.num_updates and distributed.is_main_process():
                score, episodes = final_score(read_metrics(run_dir))  # W&B's summary of the finished run
                logger.summary({"final/episodic_return": score, "final/episodes": episodes})
            if stop:
                if interrupt.requested:
                    bar.write(f"interrupted after update {update}: saved; continue with "
                              f"lot-rl train --resume {run_dir}")
                break
    except RuntimeError as exc:
        if distributed.is_peer_error(exc):  # another process died: say so in one line (checkpoint intact)
            raise distributed.peer_failure(exc, run_dir) from exc
        raise
    finally:
        student_work.close()
        restore_denormals()
        torch.set_num_threads(default_threads)
        interrupt.restore()
        bar.close()
        if videos is not None:
            videos.close()  # the game being recorded, as far as it went
        logger.close()
        envs.close()
    if interrupt.requested:
        raise KeyboardInterrupt
    return run_dir


def student_phase(agent: Agent, students: Students, cache: ObservationCache, args: Args, autocast,
                  generator: torch.Generator | None = None) -> list[float]:
    """N passes over the cache; per cached rollout, ``student_minibatches`` shuffled imitation minibatches.

    The cache hands out each minibatch with the teacher's targets, computed once per distinct cached
    rollout: the teacher does not change during the phase (it only reads the teacher, as the rollout does). The
    shuffles draw from ``generator`` (default: torch's global one). Returns each step's mean student loss.
    """
    def teacher_logits(states: torch.Tensor) -> torch.Tensor:
        with autocast():
            return agent.policy_logits(states)

    losses = []
    for mb_obs, mb_targets in cache.student_minibatches(teacher_logits, args.student_steps_ratio,
                                                        args.student_minibatches, generator):
        if args.channels_last:
            mb_obs = mb_obs.contiguous(memory_format=torch.channels_last)
        with autocast():
            student_logits = students.logits(mb_obs)
        # LoT: student loss = sum_i kl(student_i, teacher, T); each student gets its own term's gradient
        imitation = students.imitation_loss(student_logits, mb_targets)
        students.zero_grad()
        imitation.backward()
        distributed.average_gradients(*students.networks)  # torchrun: the mean over processes, before clipping
        students.step()  # each student: clip its gradient norm, then its optimizer step
        losses.append(float(imitation.detach()) / len(students))
    return losses


# ----------------------------------------------------------------------------------------------------
# Command line: `lot-rl train`


def configure_parser(parser: argparse.ArgumentParser, command: str = "train") -> None:
    parser.description = ("Train a PPO teacher with LoT students on an Atari or MinAtar game. Without options: "
                          "LoT with the paper's settings on Breakout.")
    cfg_lib.add_run_options(parser, Args, PRESETS, group_of=OPTION_GROUPS,
                            preset_help="paper: LoT as the paper states it (the defaults); reference: LoT as the "
                                        "reference code ran it; cleanrl: CleanRL's ppo_atari.py exactly; ppo: "
                                        "CleanRL's settings on our faster env and layout; minatar-ppo: PureJaxRL's "
                                        "MinAtar PPO, teacher only, on MinAtar/Breakout-v1; minatar: the same PPO "
                                        "with LoT at the paper's settings")


def run_command(ns: argparse.Namespace, command: str = "train") -> int:
    args, resume = cfg_lib.args_from_namespace(ns, Args, PRESETS, CHECKPOINT_KIND)
    try:
        run_dir = train(args, resume=resume)
    except KeyboardInterrupt:
        return 130
    if distributed.is_main_process():
        print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    import sys

    from lot_rl.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
