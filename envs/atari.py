"""The one way to build Atari environments for lot_rl.

``make_atari_env(env_id, num_envs, seed)`` returns a gymnasium 1.x ``VectorEnv`` with CleanRL's Atari
preprocessing: up to 30 no-op starts, frame-skip 4 with max-pooling of the last two frames, fire on reset
(when the game has FIRE), 84x84 grayscale, a 4-frame stack (observations ``uint8 (num_envs, 4, 84, 84)``),
and, for training, a termination signal on every life loss (``episodic_life``). No sticky actions unless
asked (or the id is an ``ALE/...-v5`` id, whose protocol uses 0.25).

Rewards are the raw game rewards: learners clip them themselves (``np.sign``, as CleanRL's ClipRewardEnv).
Episode statistics follow gymnasium's vector ``RecordEpisodeStatistics``: when a *game* ends (all lives
lost or the 108,000-frame cap), ``info["episode"]["r"]`` / ``["l"]`` hold its true return (unclipped,
summed over lives) and length in emulator frames (what CleanRL and SB3's Monitor report; agent steps are
frames / 4), and ``info["_episode"]`` marks which envs finished.
Environments reset themselves on the same step (gymnasium's ``AutoresetMode.SAME_STEP``): the returned
observation is already the first one of the next episode, as PPO's rollout expects.

Two backends build the same pipeline:

- ``"gymnasium"`` (default): ``gymnasium.make`` plus SB3's Atari wrappers in CleanRL's order, frames turned gray
  as CleanRL's gymnasium 0.29 did (:func:`luminance_grayscale`), in a ``SyncVectorEnv``: the same observations,
  rewards and terminations as CleanRL's ``make_env`` for the same seed and actions (tested). The default since
  issue 18: on Breakout our PPO learned about twice the return at 300k steps on it than on the native env (5
  seeds each, docs/learning_parity.md), for about 0.9x the env steps/s end to end on a CPU. Needed for game
  modes/difficulties and RGB rendering (videos); a resumed run continues its games exactly.
- ``"ale"`` (fast): ale-py's native C++ ``AtariVectorEnv`` stepping all envs in threads (about 3x the wrappers'
  env steps/s; ``groups`` overlaps its games with the network). On its own it differs from CleanRL after a life
  loss: it reports the termination and the game runs on, with no hidden steps; the frame stack keeps the frames
  around the life loss, and in games that wait for FIRE (Breakout) the ball stays put until the agent presses
  it. CleanRL's EpisodicLifeEnv + FireResetEnv instead take NOOP, FIRE and action 2 inside the reset (12
  emulator frames the agent never sees) and restart the stack with four copies of the frame after them.
  ale-py 0.12's options cannot do the same (``episodic_life=True`` restarts the whole game at every life
  loss, lives back to 5) and one env of the vector cannot be stepped alone, so ``life_loss_restart``
  (:class:`CleanRLRestarts`, ``lot-rl train --life-loss-restart``) forces those actions in the env's next
  steps, marks them for the learner to leave out of its loss, and restarts the stack. It did not close the
  learning gap to the wrappers (issue 18, docs/learning_parity.md), which lies in the native env's games (below).
  Tested in ``tests/test_atari_envs.py``. Its grayscale and resize run in the other order (gray, then
  resize) than CleanRL's, so pixels differ by rounding (at most one gray level).

The native env differs from the wrappers in three things, each of which the wrappers can take on for issue 18's
experiment: its life losses (``life_loss_continue``), its pixels (``gray_first``) and its game start
(``native_game_start``: one FIRE frame, 0-28 NOOP frames, a blank-padded stack). With all three the wrappers play a
whole Breakout game frame for frame, reward for reward, as the native env does (tested); only the random number
of NOOPs at each game start comes from another generator. The other way round, the native env takes on CleanRL's
life restarts (``life_loss_restart``) and game start (``cleanrl_game_start``: its NOOPs, then FIRE and RIGHT as
forced steps, a fresh stack): with both it plays CleanRL's games, every observation the agent decides on, reward
and termination equal to the wrappers' (with ``gray_first`` pixels; tested), at the native env's speed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import ale_py
import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper

from lot_rl.envs.groups import EnvGroups
from lot_rl.errors import LoTUserError, require

gym.register_envs(ale_py)

BACKENDS = ("ale", "gymnasium")
DEFAULT_BACKEND = "gymnasium"  # CleanRL's wrappers since issue 18 (docs/learning_parity.md)
LEGACY_DEFAULT_BACKEND = "ale"  # before issue 18; a run's config that names no env trained on it
MAX_EPISODE_FRAMES = 108_000  # 30 minutes of play at 60 Hz, the standard cap
FRAME_STACK = 4
NOOP, FIRE = 0, 1  # action indices in every minimal action set that has FIRE (SB3's FireResetEnv asserts it)
_ID_PATTERN = re.compile(r"^(?:ALE/)?(?P<name>[A-Za-z0-9]+?)(?P<noframeskip>NoFrameskip)?(?:-v(?P<version>\d+))?$")


@dataclass(frozen=True)
class AtariGame:
    """A parsed env id: the ROM (``breakout``), its display name (``Breakout``) and the id's protocol."""

    rom: str
    name: str
    env_id: str
    default_sticky: float  # 0.25 for ALE/...-v5 ids, 0.0 for ...NoFrameskip-v4 / -v4 ids

    # The rest of lot_rl's game interface (lot_rl.envs.Game).
    family: ClassVar[str] = "atari"
    frames_per_step: ClassVar[int] = 4  # frame-skip: episode lengths are emulator frames
    video_fps: ClassVar[int] = 15  # one frame per agent step: 60 Hz emulator / frame-skip 4
    backends: ClassVar[tuple[str, ...]] = BACKENDS

    @property
    def gymnasium_id(self) -> str:
        return f"ALE/{self.name}-v5"

    @property
    def key(self) -> str:
        return f"atari:{self.rom}"

    def validate_flavour(self, mode: int | None, difficulty: int | None) -> None:
        if mode is not None or difficulty is not None:
            validate_flavour(self, mode, difficulty)

    def flavours(self) -> tuple[list[int], list[int]]:
        return game_flavours(self.env_id)

    def choose_backend(self, requested: str | None, *, render: bool = False, flavoured: bool = False) -> str:
        """Flavours and RGB frames exist only on the gymnasium backend, the default (CleanRL's wrappers)."""
        return "gymnasium" if render or flavoured else (requested or DEFAULT_BACKEND)


@lru_cache(maxsize=1)
def _known_games() -> dict[str, str]:
    """Display name -> ROM id, from gymnasium's registry of ALE v5 envs."""
    games = {}
    for env_id, spec in gym.registry.items():
        if env_id.startswith("ALE/") and env_id.endswith("-v5") and "game" in spec.kwargs:
            games[env_id[4:-3]] = spec.kwargs["game"]
    return games


def parse_env_id(env_id: str) -> AtariGame:
    """Accept ``BreakoutNoFrameskip-v4``, ``Breakout-v4``, ``ALE/Breakout-v5`` or ``Breakout``."""
    match = _ID_PATTERN.match(env_id.strip())
    games = _known_games()
    name = match.group("name") if match else None
    if name is not None and name not in games:
        lower = {g.lower(): g for g in games}
        name = lower.get(name.lower())
    if name is None:
        stem = env_id.replace("ALE/", "").split("-v")[0].replace("NoFrameskip", "")
        close = difflib.get_close_matches(stem, list(games), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(f'{c}NoFrameskip-v4' for c in close)}?" if close else \
            "; use ids like BreakoutNoFrameskip-v4 or ALE/Breakout-v5"
        raise LoTUserError(f"unknown Atari env id {env_id!r}{hint}")
    version = match.group("version")
    require(version in (None, "4", "5"), f"env id {env_id!r}: only -v4 and -v5 Atari ids are supported")
    sticky = 0.25 if (env_id.startswith("ALE/") or version == "5") else 0.0
    return AtariGame(rom=games[name], name=name, env_id=env_id, default_sticky=sticky)


def make_atari_env(env_id: str, num_envs: int = 8, seed: int = 1, *, backend: str = DEFAULT_BACKEND,
                   episodic_life: bool = True, repeat_action_probability: float | None = None,
                   full_action_space: bool = False, mode: int | None = None, difficulty: int | None = None,
                   render: bool = False, num_threads: int = 0,
                   max_episode_frames: int = MAX_EPISODE_FRAMES, groups: int = 1,
                   life_loss_restart: bool = False, life_loss_continue: bool = False,
                   gray_first: bool = False, native_game_start: bool = False,
                   cleanrl_game_start: bool = False) -> VectorEnv:
    """Build ``num_envs`` preprocessed Atari envs (see the module docstring), already validated.

    Args:
        env_id: ``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5``, ...
        episodic_life: terminate on every life loss (training); False for full-game evaluation.
        repeat_action_probability: sticky actions; None takes the id's protocol (v4: 0, v5: 0.25).
        mode, difficulty: ALE game flavour (``gymnasium`` backend only; chosen automatically if given).
        render: keep full-resolution RGB frames available through ``env.call("render")`` (gymnasium).
        groups: native backend only: the envs as that many native vector envs, one :class:`EnvGroups`, so that
            one group's games run in the emulator while the network acts for another (``interleaved_steps``).
            ``num_threads`` is then split between the groups.
        life_loss_restart: restart each life as CleanRL's wrappers do: on the native backend with
            :class:`CleanRLRestarts`; on the gymnasium backend with their EpisodicLifeEnv + FireResetEnv, which it
            always has in training (``episodic_life``) and then also has playing full games (evaluating a run that
            learned its lives that way). The true game's statistics count whole games either way.
        life_loss_continue: the other way round, gymnasium backend only: CleanRL's wrappers with the native env's
            life losses (:class:`LifeLossContinue`: terminate and play on, no hidden steps, the stack runs on;
            full games are then played without EpisodicLifeEnv's restarts), the arm of issue 18's experiment
            that moves only the life-loss handling.
        gray_first: gymnasium backend only: the native env's pixels on CleanRL's wrappers: ALE's grayscale screen,
            max-pooled and resized (CleanRL max-pools and resizes RGB screens, then turns them gray; the two differ
            by rounding, at most one gray level), the arm of issue 18's experiment that moves only that.
        native_game_start: gymnasium backend only: the native env's game start on CleanRL's wrappers
            (:class:`NativeGameStart`: one FIRE frame, then 0-28 NOOP frames, three blank frames in the stack;
            lives lost still restart as CleanRL's do), the arm of issue 18's experiment that moves only that.
        cleanrl_game_start: native backend only: start each game as CleanRL's wrappers do (:class:`CleanRLRestarts`:
            0-28 NOOP frames, then FIRE and RIGHT as forced steps, and a stack of four copies of the frame after
            them; the native env presses FIRE on the first frame, before its NOOPs). With ``life_loss_restart``
            the native env plays CleanRL's games (tested), at the native env's speed.
    Reset the returned env with ``env.reset(seed=seed)``; ``seed`` here seeds action-space sampling.
    """
    game = parse_env_id(env_id)
    require(num_envs >= 1, f"--num-envs must be >= 1, got {num_envs}")
    require(backend in BACKENDS, f"unknown env backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    sticky = game.default_sticky if repeat_action_probability is None else repeat_action_probability
    require(0.0 <= sticky < 1.0, f"--repeat-action-probability must be in [0, 1), got {sticky}")
    require(not (life_loss_restart and life_loss_continue), "--life-loss-restart and --life-loss-continue are "
            "opposites (CleanRL's restarts on the native env / the native env's life losses on CleanRL's wrappers): "
            "choose one")
    if mode is not None or difficulty is not None or render:
        backend = "gymnasium"  # the native vector env has no flavours and no RGB frames
        validate_flavour(game, mode, difficulty)
    validate_groups(groups, num_envs, backend)
    require(not life_loss_continue or backend == "gymnasium", "--life-loss-continue gives CleanRL's wrappers the "
            "native env's life losses, which the native env (--env-backend ale) has already: use --env-backend "
            "gymnasium")
    require(not gray_first or (backend == "gymnasium" and not render), "--gray-first gives CleanRL's wrappers the "
            "native env's gray frames: use --env-backend gymnasium (the native env has them already) and no RGB "
            "rendering (videos)")
    require(not native_game_start or backend == "gymnasium", "--native-game-start gives CleanRL's wrappers the "
            "native env's game start, which the native env (--env-backend ale) has already: use --env-backend "
            "gymnasium")
    require(not cleanrl_game_start or backend == "ale", "--cleanrl-game-start gives the native env CleanRL's game "
            "start, which CleanRL's wrappers (--env-backend gymnasium) have already: use --env-backend ale")
    if backend == "ale":
        fire = "FIRE" in _action_meanings(game.gymnasium_id, full_action_space)
        restarts = life_loss_restart or cleanrl_game_start

        def native(size: int, threads: int) -> VectorEnv:
            env = ale_py.vector_env.AtariVectorEnv(
                game.rom, size, num_threads=threads, autoreset_mode=AutoresetMode.SAME_STEP,
                repeat_action_probability=sticky, full_action_space=full_action_space,
                noop_max=30, frameskip=4, maxpool=True, stack_num=1 if restarts else FRAME_STACK,
                img_height=84, img_width=84, grayscale=True, use_fire_reset=not cleanrl_game_start,
                reward_clipping=False,
                episodic_life=False, life_loss_info=episodic_life,  # episodic_life=True would reset the game
                max_num_frames_per_episode=max_episode_frames)
            env = AleEpisodeStatistics(env, frame_skip=4, max_frames=max_episode_frames)
            if not restarts:
                return env
            return CleanRLRestarts(env, fire=fire, lives=life_loss_restart, games=cleanrl_game_start)

        if groups == 1:
            env = native(num_envs, num_threads)
        else:  # the same games as one vector env of num_envs (tested): env i is seeded seed + i either way
            env = EnvGroups([native(num_envs // groups, -(-num_threads // groups)) for _ in range(groups)])
    else:
        if life_loss_continue:  # full games (evaluation) need no wrapper: nothing restarts a life
            life = "continue" if episodic_life else None
        else:
            life = "restart" if (episodic_life or life_loss_restart) else None
        fns = [_gymnasium_env_fn(game, sticky, full_action_space, mode, difficulty, life, render,
                                 max_episode_frames, gray_first, native_game_start) for _ in range(num_envs)]
        env = GameEpisodeStatistics(SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP))
    env.action_space.seed(seed)
    return env


def trained_backend(config: dict[str, Any]) -> str:
    """The Atari backend a run trained on, from its saved config (runs saved before issue 18 name none)."""
    return config.get("env_backend") or LEGACY_DEFAULT_BACKEND


def validate_groups(groups: int, num_envs: int, backend: str) -> None:
    """Raise a one-line error for an ``--env-groups`` that cannot split these envs."""
    require(groups >= 1, f"--env-groups must be >= 1, got {groups}")
    require(groups == 1 or backend == "ale", f"--env-groups {groups} needs the native Atari backend (--env-backend "
                                             f"ale), whose games step in the background; {backend} steps them in turn")
    require(num_envs % groups == 0, f"--env-groups {groups} does not divide --num-envs {num_envs}; choose a divisor")


def observation_picture(observation: np.ndarray, scale: int = 2) -> np.ndarray:
    """The newest frame of a stacked ``(4, 84, 84)`` observation as an RGB picture, ``scale`` times its size."""
    frame = np.asarray(observation)[-1]
    return np.repeat(frame.repeat(scale, axis=0).repeat(scale, axis=1)[:, :, None], 3, axis=2)


def game_flavours(env_id: str) -> tuple[list[int], list[int]]:
    """The (modes, difficulties) a game offers."""
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(parse_env_id(env_id).rom))
    return [int(m) for m in ale.getAvailableModes()], [int(d) for d in ale.getAvailableDifficulties()]


def validate_flavour(game: AtariGame | str, mode: int | None, difficulty: int | None) -> None:
    """Raise a clear error for a mode/difficulty the game does not offer, listing the valid ones."""
    game_id = game.env_id if isinstance(game, AtariGame) else game
    modes, difficulties = game_flavours(game_id)
    name = game.name if isinstance(game, AtariGame) else parse_env_id(game_id).name
    require(mode is None or mode in modes, f"{name} has no mode {mode}; valid modes: {modes}")
    require(difficulty is None or difficulty in difficulties,
            f"{name} has no difficulty {difficulty}; valid difficulties: {difficulties}")


def _gymnasium_env_fn(game: AtariGame, sticky: float, full_action_space: bool, mode: int | None,
                      difficulty: int | None, life_loss: str | None, render: bool, max_episode_frames: int,
                      gray_first: bool = False, native_game_start: bool = False):
    """``life_loss``: "restart" (CleanRL's EpisodicLifeEnv), "continue" (the native env's way:
    :class:`LifeLossContinue`), both terminating at a life loss, or None (full games). ``native_game_start``:
    :class:`NativeGameStart` instead of NoopResetEnv, and FIRE, RIGHT only when a life restarts."""
    from stable_baselines3.common.atari_wrappers import (EpisodicLifeEnv, FireResetEnv, MaxAndSkipEnv,
                                                         NoopResetEnv)

    def thunk() -> gym.Env:
        kwargs: dict[str, Any] = dict(frameskip=1, repeat_action_probability=sticky,
                                      full_action_space=full_action_space,
                                      max_num_frames_per_episode=max_episode_frames)
        if mode is not None:
            kwargs["mode"] = mode
        if difficulty is not None:
            kwargs["difficulty"] = difficulty
        if gray_first:
            kwargs["obs_type"] = "grayscale"  # ALE's own gray screen, as the native env reads it
        env = gym.make(game.gymnasium_id, render_mode="rgb_array" if render else None, **kwargs)
        env = gym.wrappers.RecordEpisodeStatistics(env)  # innermost: true game return over all lives
        start = env = NativeGameStart(env) if native_game_start else NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        if life_loss == "restart":
            env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            if not native_game_start:
                env = FireResetEnv(env)
            elif life_loss == "restart":  # the native start pressed FIRE already: only lives restarted need it
                env = LifeRestartFire(env, start)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        if not gray_first:
            env = luminance_grayscale(env)
        env = GameStartFrameStack(env, FRAME_STACK, start) if native_game_start else \
            gym.wrappers.FrameStackObservation(env, FRAME_STACK)
        if life_loss == "continue":
            env = LifeLossContinue(env)
        return env

    return thunk


def luminance_grayscale(env: gym.Env) -> gym.Env:
    """RGB frames to gray as OpenCV converts them (0.299 R + 0.587 G + 0.114 B, rounded).

    This is what CleanRL's pinned gymnasium 0.29 ``GrayScaleObservation`` did, and what ALE's own grayscale
    screen (the native backend) gives. gymnasium 1.x's ``GrayscaleObservation`` weighs the channels
    0.2125/0.7154/0.0721 and truncates: on Breakout 16% of the pixels differ, by up to 11 gray levels.
    """
    import cv2  # gymnasium's ResizeObservation needs OpenCV too

    height, width = env.observation_space.shape[:2]
    space = gym.spaces.Box(0, 255, (height, width), np.uint8)
    return gym.wrappers.TransformObservation(env, lambda frame: cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), space)


class AleEpisodeStatistics(VectorWrapper):
    """True game returns and lengths for ale-py's native vector env, which reports none.

    With ``life_loss_info`` the env terminates on each life loss and keeps playing; a game is over when
    an env terminates without having lost a life (it reset itself: lives went back up, or the game has no
    lives), or is truncated by the frame cap.
    """

    def __init__(self, env: VectorEnv, frame_skip: int = 4, max_frames: int = MAX_EPISODE_FRAMES):
        super().__init__(env)
        self._frame_skip, self._max_frames = frame_skip, max_frames
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lives = np.zeros(self.num_envs, dtype=np.int64)
        self._frames = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        mask = np.ones(self.num_envs, bool) if not options or "reset_mask" not in options else options["reset_mask"]
        self._returns[mask] = 0.0
        self._lives[mask] = info["lives"][mask]
        self._frames[mask] = info["episode_frame_number"][mask]
        return obs, info

    def step(self, actions):
        self.send(actions)
        return self.recv()

    def send(self, actions) -> None:
        """Start stepping the games with ``actions`` in the emulator's threads and return at once."""
        self.env.send(np.asarray(actions))

    def recv(self):
        """Wait for the step that :meth:`send` started; the same results as :meth:`step`."""
        obs, reward, terminated, truncated, info = self.env.recv()
        self._returns += reward
        lives = info["lives"].astype(np.int64)
        frames = info["episode_frame_number"].astype(np.int64)
        game_over = truncated | (terminated & (lives >= self._lives))
        if game_over.any():
            info = dict(info)
            # The info already describes the next game (same-step reset): the finished game lasted the
            # frames seen before this step plus this step's frame-skip.
            info["episode"] = {"r": np.where(game_over, self._returns, 0.0),
                               "l": np.where(game_over, np.minimum(self._frames + self._frame_skip,
                                                                   self._max_frames), 0)}
            info["_episode"] = game_over
            self._returns[game_over] = 0.0
        self._lives = lives
        self._frames = frames
        return obs, reward.astype(np.float32), terminated, truncated, info


class CleanRLRestarts(VectorWrapper):
    """Restart lives and/or games of ale-py's native vector env as CleanRL's wrappers do.

    Lives (``lives``): after a life loss CleanRL's EpisodicLifeEnv + FireResetEnv take NOOP, then FIRE and action 2
    (in games with FIRE) inside their reset, where the agent never acts, and restart the frame stack with four
    copies of the frame after them. Games (``games``): NoopResetEnv's NOOP frames, then FireResetEnv's FIRE and
    action 2 (the native env, built with ``use_fire_reset=False``, takes the NOOP frames in its reset), and the
    same restarted stack; the native env's own start presses FIRE on the game's first frame, before its NOOPs.
    The native env cannot step one env alone, so here those actions replace the agent's in the next steps of
    that env and ``info["forced"]`` marks them: the learner leaves those steps out of its loss (they are not
    its decisions), so it learns from the same decisions as with CleanRL's wrappers, at the cost of the
    forced steps' agent steps (3 per life and 2 per game in games with FIRE, 1 per life in others). The stack is
    restarted after the last forced step, and at every new game (the native env starts games with three blank
    frames instead). Wraps a native env built with ``stack_num=1`` and stacks the frames itself. Life losses are
    read from ``info["lives"]``, so this works for full-game evaluation (no termination at life losses) too: the
    agent then also never has to press FIRE to relaunch the ball, as it never had to in training.
    """

    def __init__(self, env: VectorEnv, fire: bool, stack: int = FRAME_STACK, lives: bool = True,
                 games: bool = False):
        super().__init__(env)
        self._life_plan = ([NOOP, FIRE, 2] if fire else [NOOP]) if lives else []
        self._game_plan = [FIRE, 2] if fire and games else []
        # one plan per env at a time, right-aligned: the actions still to force are the last `pending` of its row
        self._plans = np.zeros((self.num_envs, max(len(self._life_plan), len(self._game_plan), 1)), dtype=np.int64)
        frame = env.single_observation_space.shape[1:]
        self.single_observation_space = gym.spaces.Box(0, 255, (stack, *frame), np.uint8)
        self.observation_space = gym.spaces.Box(0, 255, (self.num_envs, stack, *frame), np.uint8)
        self._stack = np.zeros((self.num_envs, stack, *frame), np.uint8)
        self._pending = np.zeros(self.num_envs, np.int64)  # forced steps still to take, per env
        self._lives = np.zeros(self.num_envs, np.int64)

    def _plan(self, mask: np.ndarray, plan: list[int]) -> None:
        self._plans[mask, self._plans.shape[1] - len(plan):] = plan
        self._pending[mask] = len(plan)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        mask = np.ones(self.num_envs, bool) if not options or "reset_mask" not in options else options["reset_mask"]
        self._stack[mask] = obs[mask]  # broadcast: the frame, `stack` times
        self._plan(mask, self._game_plan)
        self._lives[mask] = info["lives"][mask]
        return self._stack.copy(), info

    def step(self, actions):
        actions = np.array(actions, dtype=np.int64)
        forced = self._pending > 0
        actions[forced] = self._plans[forced, self._plans.shape[1] - self._pending[forced]]
        obs, reward, terminated, truncated, info = self.env.step(actions)
        lives = info["lives"].astype(np.int64)
        new_game = (terminated | truncated) & (lives >= self._lives)  # the env started the next game itself
        life_lost = (lives < self._lives) & ~new_game
        self._pending[forced] -= 1
        restart = new_game | (forced & (self._pending == 0) & ~life_lost)
        self._plan(new_game, self._game_plan)
        self._plan(life_lost, self._life_plan)
        self._lives = lives
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = obs[:, 0]
        self._stack[restart] = obs[restart]
        info = dict(info)
        info["forced"] = forced
        return self._stack.copy(), reward, terminated, truncated, info


class LifeLossContinue(gym.Wrapper):
    """The native env's life losses on CleanRL's wrappers: terminate at a life loss, then play on.

    Outside the frame stack: the reset that a SAME_STEP vector env calls after a life loss's termination returns
    the last observation and leaves the game, the stack and the wrappers inside as they are (no hidden NOOP or
    FIRE: the agent relaunches the ball); at a game's end it resets them all. What ale-py's native vector env
    does with ``life_loss_info`` (issue 18's experiment, ``--life-loss-continue``).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.playing_on = False  # the last step lost a life: the next reset continues the game
        self.last_obs: np.ndarray | None = None

    def reset(self, **kwargs):
        if self.playing_on:
            self.playing_on = False
            return self.last_obs, {"lives": self.lives}
        obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        if not (terminated or truncated) and lives < self.lives:
            terminated, self.playing_on, self.last_obs = True, True, obs
        self.lives = lives
        return obs, reward, terminated, truncated, info


class NativeGameStart(gym.Wrapper):
    """ale-py's native vector env's game start on CleanRL's wrappers (issue 18's ``--native-game-start``).

    Goes where NoopResetEnv goes (on single frames): a new game is one frame of FIRE (games with FIRE), then
    0-28 NOOP frames, as the native env's reset does; NoopResetEnv's start is 1-30 NOOP frames, and
    FireResetEnv then takes FIRE and RIGHT (4 frames each). ``fresh`` tells the wrappers outside that the
    last reset started a game (:class:`LifeRestartFire`, :class:`GameStartFrameStack`).
    """

    def __init__(self, env: gym.Env, noop_max: int = 30):
        super().__init__(env)
        self.fire = "FIRE" in env.unwrapped.get_action_meanings()
        self.noop_max = noop_max
        self.override_num_noops: int | None = None  # tests choose the start
        self.fresh = False

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        noops = self.override_num_noops
        if noops is None:
            noops = int(self.unwrapped.np_random.integers(0, self.noop_max - 1))
        obs, info = _take_actions(self.env, [FIRE] * self.fire + [NOOP] * noops, obs, info, kwargs)
        self.fresh = True
        return obs, info

    def step(self, action):
        self.fresh = False
        return self.env.step(action)


class LifeRestartFire(gym.Wrapper):
    """FireResetEnv's FIRE and RIGHT after EpisodicLifeEnv restarts a life, but not at a game start
    (:class:`NativeGameStart` pressed FIRE there already)."""

    def __init__(self, env: gym.Env, start: NativeGameStart):
        super().__init__(env)
        self.start = start

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.start.fresh:
            return obs, info
        return _take_actions(self.env, (FIRE, 2), obs, info, kwargs)[0], {}  # FireResetEnv's actions and info


def _take_actions(env: gym.Env, actions, obs, info, reset_kwargs: dict[str, Any]):
    """Step ``env`` with ``actions`` inside a reset (resetting again if one ends the game); the last obs, info."""
    for action in actions:
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            obs, info = env.reset(**reset_kwargs)
    return obs, info


class GameStartFrameStack(gym.wrappers.FrameStackObservation):
    """A frame stack that starts a game as the native env does, three blank frames before the first screen,
    and a restarted life as CleanRL's does, four copies of its first screen."""

    def __init__(self, env: gym.Env, stack_size: int, start: NativeGameStart):
        super().__init__(env, stack_size)
        self.start = start

    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        if not self.start.fresh:
            return obs, info
        for i in range(self.stack_size - 1):
            self.obs_queue[i] = np.zeros_like(self.obs_queue[i])
        return np.stack(self.obs_queue), info


@lru_cache(maxsize=None)
def _action_meanings(gymnasium_id: str, full_action_space: bool) -> tuple[str, ...]:
    env = gym.make(gymnasium_id, full_action_space=full_action_space)
    try:
        return tuple(env.unwrapped.get_action_meanings())
    finally:
        env.close()


class GameEpisodeStatistics(VectorWrapper):
    """Lift the per-env ``RecordEpisodeStatistics`` results of a SAME_STEP ``SyncVectorEnv`` to the top."""

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions))
        final = info.get("final_info")
        if final and "episode" in final:
            info = {k: v for k, v in info.items() if k not in ("final_info", "_final_info")}
            mask = final["_episode"]
            info["episode"] = {"r": np.where(mask, final["episode"]["r"], 0.0),
                               "l": np.where(mask, final["episode"]["l"], 0)}
            info["_episode"] = mask
        return obs, np.asarray(reward, dtype=np.float32), terminated, truncated, info


# ----------------------------------------------------------------------------------------------------
# Saving and restoring the environments' state, so that a resumed run continues the very same games.
# Only the gymnasium backend exposes what is needed (ALE's cloneState with its RNG, and the wrappers'
# Python state); ale-py's native vector env has no state API, so a resumed native run starts new games.
# ALE's state does not hold the last action that sticky actions repeat, so with sticky actions a resumed
# game is the same game but may take a different course.

def supports_state(env: VectorEnv) -> bool:
    """Whether :func:`get_env_state` can capture this env exactly."""
    return isinstance(env, GameEpisodeStatistics)


def get_env_state(env: VectorEnv) -> list[dict[str, Any]] | None:
    """Everything that determines the future of each sub-env (None where the backend cannot tell)."""
    if not supports_state(env):
        return None
    states = []
    for sub in env.env.envs:
        state: dict[str, Any] = {"ale": bytes(sub.unwrapped.ale.cloneState(include_rng=True).__getstate__()),
                                 "np_random": sub.unwrapped.np_random.bit_generator.state}
        for wrapper in _wrappers(sub):
            name = type(wrapper).__name__
            if isinstance(wrapper, gym.wrappers.FrameStackObservation):
                state["frames"] = torch.from_numpy(np.stack(wrapper.obs_queue))  # tensors: safe to torch.load
            elif name == "RecordEpisodeStatistics":
                state["episode"] = (float(wrapper.episode_returns), int(wrapper.episode_lengths))
            elif name == "EpisodicLifeEnv":
                state["life"] = (int(wrapper.lives), bool(wrapper.was_real_done))
            elif name == "LifeLossContinue":
                state["life"] = (int(wrapper.lives), bool(wrapper.playing_on))  # last_obs: the stack's frames
        states.append(state)
    return states


def set_env_state(env: VectorEnv, states: list[dict[str, Any]]) -> None:
    """Restore what :func:`get_env_state` captured into a freshly built env of the same game and size."""
    subs = env.env.envs
    require(len(subs) == len(states), f"the saved environments are {len(states)}, this run has {len(subs)}: "
                                      f"use the same --num-envs to resume")
    for sub, state in zip(subs, states):
        ale_state = ale_py.ALEState.__new__(ale_py.ALEState)
        ale_state.__setstate__(state["ale"])
        sub.unwrapped.ale.restoreState(ale_state)
        sub.unwrapped.np_random.bit_generator.state = state["np_random"]
        for wrapper in _wrappers(sub):
            name = type(wrapper).__name__
            if isinstance(wrapper, gym.wrappers.FrameStackObservation):
                wrapper.obs_queue.clear()
                wrapper.obs_queue.extend(np.asarray(state["frames"]))
            elif name == "RecordEpisodeStatistics":
                wrapper.episode_returns, wrapper.episode_lengths = state["episode"]
            elif name == "EpisodicLifeEnv":
                wrapper.lives, wrapper.was_real_done = state["life"]
            elif name == "LifeLossContinue":
                wrapper.lives, wrapper.playing_on = state["life"]
                wrapper.last_obs = np.asarray(state["frames"])


def _wrappers(env: gym.Env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env
