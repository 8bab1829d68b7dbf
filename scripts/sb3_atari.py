"""Train Stable-Baselines3 PPO with Learning from Teaching on an Atari game, and save it.

The SB3 way of building Atari envs (``make_atari_env`` + ``VecFrameStack``) and SB3's ``PPO`` as they are;
LoT is the one extra argument ``callback=LoTCallback(...)``. PPO settings are the LoT reference's (8 envs x
128 steps, 4 epochs x 4 minibatches of 256, clip 0.1, ent 0.01, lr 2.5e-4 decayed linearly).

    python scripts/sb3_atari.py                                   # Breakout, 10M steps, alpha 0.5, N 5, obs_num 10
    python scripts/sb3_atari.py --env-id PongNoFrameskip-v4 --total-timesteps 2000000
    python scripts/sb3_atari.py --no-lot --save-path runs/sb3/breakout-ppo   # plain SB3 PPO, same settings
    python scripts/sb3_atari.py --resume runs/sb3/breakout-lot               # continue, same students
    tensorboard --logdir runs/sb3                                  # SB3's train/* and LoT's lot/* scalars

Saves ``<save-path>.zip`` (SB3's model) and ``<save-path>.lot.pt`` (the students, their optimizers and the
observation cache) at the end, every ``--save-every`` steps and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import gymnasium as gym

from lot_rl import config as cfg_lib
from lot_rl.errors import LoTUserError, require


@dataclasses.dataclass
class Options:
    env_id: str = cfg_lib.option("BreakoutNoFrameskip-v4", "Atari game id (gymnasium, NoFrameskip-v4 flavour)")
    total_timesteps: int = cfg_lib.option(10_000_000, "env steps to train for (in total, including a resumed run)")
    n_envs: int = cfg_lib.option(8, "parallel envs")
    seed: int = cfg_lib.option(1, "seed of envs, networks and sampling")
    device: str = cfg_lib.option("auto", "torch device: auto, cpu, cuda, cuda:1 ...")
    lot: bool = cfg_lib.option(True, "add the LoT callback (--no-lot: plain SB3 PPO, the baseline)")
    alpha: float = cfg_lib.option(0.5, "weight of the teachability penalty")
    num_students: int = cfg_lib.option(1, "number of students")
    student_steps_ratio: int = cfg_lib.option(5, "N: student passes over the cached rollouts per update")
    obs_num: int = cfg_lib.option(10, "rollouts kept in the students' observation cache")
    temperature: float = cfg_lib.option(1.0, "temperature T of the KL terms")
    learning_rate: float = cfg_lib.option(2.5e-4, "initial learning rate (teacher; students follow it)")
    lr_schedule: str = cfg_lib.option("linear", "learning-rate schedule", choices=("linear", "constant"))
    ent_coef: float = cfg_lib.option(0.01, "entropy coefficient of PPO")
    save_path: str = cfg_lib.option("", "where to save (without .zip); default runs/sb3/<game>-<lot|ppo>-seed<seed>")
    save_every: int = cfg_lib.option(1_000_000, "env steps between saves (0: only at the end)")
    tensorboard_log: str = cfg_lib.option("runs/sb3", "TensorBoard folder ('' for none)")
    verbose: int = cfg_lib.option(1, "SB3 verbosity (1: console table every update)")


def default_save_path(opts: Options) -> str:
    game = opts.env_id.removeprefix("ALE/").split("NoFrameskip")[0].split("-")[0].lower()
    return f"runs/sb3/{game}-{'lot' if opts.lot else 'ppo'}-seed{opts.seed}"


def make_env(opts: Options):
    import ale_py
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    require(opts.env_id in gym.registry, f"--env-id {opts.env_id!r} is not a registered gymnasium env "
                                         f"(Atari ids look like BreakoutNoFrameskip-v4)")
    return VecFrameStack(make_atari_env(opts.env_id, n_envs=opts.n_envs, seed=opts.seed), n_stack=4)


def learning_rate(opts: Options):
    if opts.lr_schedule == "constant":
        return opts.learning_rate
    start = opts.learning_rate
    return lambda progress_remaining: start * progress_remaining  # SB3 passes 1 -> 0 over training


LOT_OPTIONS = ("alpha", "num_students", "student_steps_ratio", "obs_num", "temperature")


def build(opts: Options, resume: str | None, typed: set[str] = frozenset()):
    """The model and (unless --no-lot) the LoT callback: new, or loaded from ``resume``.

    When resuming, the LoT options typed on the command line (``typed``) override the saved ones.
    """
    from stable_baselines3 import PPO

    from lot_rl.sb3 import LoTCallback, companion_path

    lot = None
    if resume:
        require(Path(resume.removesuffix(".zip") + ".zip").is_file(), f"--resume {resume}: no SB3 model there")
        if opts.lot:
            require(companion_path(resume).is_file(),
                    f"--resume {resume}: no students file {companion_path(resume)} (a --no-lot run?)")
            lot = LoTCallback.load(resume, **{k: getattr(opts, k) for k in LOT_OPTIONS if k in typed})
        model = PPO.load(resume, env=make_env(opts), device=opts.device, verbose=opts.verbose,
                         tensorboard_log=opts.tensorboard_log or None)
        return model, lot
    if opts.lot:  # built first: a bad LoT option fails before any env starts
        lot = LoTCallback(**{k: getattr(opts, k) for k in LOT_OPTIONS})
    model = PPO("CnnPolicy", make_env(opts), n_steps=128, batch_size=256, n_epochs=4,
                learning_rate=learning_rate(opts), clip_range=0.1, ent_coef=opts.ent_coef, vf_coef=0.5,
                max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95, seed=opts.seed, device=opts.device,
                verbose=opts.verbose, tensorboard_log=opts.tensorboard_log or None)
    return model, lot


def save(model, lot, path: str) -> None:
    model.save(path)
    if lot is not None and lot.students is not None:
        lot.save(path)


def periodic_saver(lot, path: str, every: int):
    """An SB3 callback that saves the model and its students every ``every`` env steps."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SaveModelAndStudents(BaseCallback):
        def _on_step(self) -> bool:
            if every and self.model.num_timesteps // every != (self.model.num_timesteps - self.model.n_envs) // every:
                save(self.model, lot, path)
            return True

    return SaveModelAndStudents()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML or TOML file of options")
    parser.add_argument("--resume", default=None, metavar="PATH", help="continue the run saved at PATH(.zip)")
    cfg_lib.add_options(parser, Options)
    ns = parser.parse_args(argv)
    try:
        cli = {k: v for k, v in vars(ns).items() if k not in ("config", "resume")}
        opts = cfg_lib.resolve(Options, cli, config_file=ns.config)
        path = opts.save_path or (ns.resume.removesuffix(".zip") if ns.resume else default_save_path(opts))
        model, lot = build(opts, ns.resume, typed=set(cli))
        remaining = opts.total_timesteps - model.num_timesteps
        require(remaining > 0, f"--total-timesteps {opts.total_timesteps}: the model has already trained "
                               f"{model.num_timesteps} steps")
        callbacks = [cb for cb in (lot, periodic_saver(lot, path, opts.save_every)) if cb is not None]
        try:
            model.learn(remaining, callback=callbacks, reset_num_timesteps=ns.resume is None,
                        tb_log_name=Path(path).name)
        except KeyboardInterrupt:
            print(f"interrupted at {model.num_timesteps} steps; saving", file=sys.stderr)
        save(model, lot, path)
        print(f"saved {path}.zip" + (f" and {path}.lot.pt" if lot is not None else "")
              + f" after {model.num_timesteps} env steps")
    except LoTUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
