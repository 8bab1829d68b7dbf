"""lot_rl's environments behind one interface: Atari (``envs/atari.py``) and MinAtar (``envs/minatar.py``).

The agent, ``lot-rl eval`` and its videos build envs only through :func:`make_env` and read what they need
about a game from :func:`parse_env_id`'s :class:`Game`; the two families are told apart here and nowhere else.
Both give gymnasium 1.x vector envs with uint8 channels-first observations, raw rewards, true episode
statistics (``info["episode"]``, ``info["_episode"]``) and same-step autoreset.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from gymnasium.vector import VectorEnv

from lot_rl.envs import atari, minatar
from lot_rl.errors import require


class Game(Protocol):
    """What the rest of lot_rl knows about a game, whatever its family."""

    family: str  # "atari" or "minatar"
    name: str  # display name, "Breakout"
    env_id: str
    default_sticky: float  # the id's sticky-action protocol
    frames_per_step: int  # episode lengths are in frames: 4 per agent step on Atari, 1 on MinAtar
    video_fps: int
    backends: tuple[str, ...]  # the first is the default

    @property
    def key(self) -> str:
        """The game itself, whatever the id's spelling: a checkpoint is evaluated and resumed on the same key."""

    def validate_flavour(self, mode: int | None, difficulty: int | None) -> None:
        """Raise a one-line error for a mode/difficulty the game does not offer."""

    def flavours(self) -> tuple[list[int], list[int]]:
        """The (modes, difficulties) the game offers."""

    def choose_backend(self, requested: str | None, *, render: bool = False, flavoured: bool = False) -> str:
        """The backend that can play this game with RGB frames (``render``) or a mode/difficulty."""


def is_minatar_id(env_id: str) -> bool:
    return env_id.strip().startswith("MinAtar/")


def parse_env_id(env_id: str) -> Game:
    """``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5``, ``MinAtar/Breakout-v1``, ... (one-line error otherwise)."""
    return minatar.parse_env_id(env_id) if is_minatar_id(env_id) else atari.parse_env_id(env_id)


def make_env(env_id: str, num_envs: int = 8, seed: int = 1, *, training: bool = True, backend: str | None = None,
             repeat_action_probability: float | None = None, full_action_space: bool = False,
             mode: int | None = None, difficulty: int | None = None, render: bool = False, num_threads: int = 0,
             max_episode_frames: int | None = None, video_frames: bool = False, groups: int = 1,
             life_loss_restart: bool = False, life_loss_continue: bool = False, gray_first: bool = False,
             native_game_start: bool = False, cleanrl_game_start: bool = False) -> VectorEnv:
    """The vector env of any lot_rl env id.

    Args:
        training: Atari: terminate on every life loss (learning); False plays full games. MinAtar games have
            one life.
        backend, full_action_space, mode, difficulty, render, num_threads: Atari options (see
            :func:`lot_rl.envs.atari.make_atari_env`); MinAtar ids reject them unless left at their defaults
            (``render``: MinAtar frames are always drawn by :func:`render_frame`).
        max_episode_frames: cut games after this many frames (None: 108,000 on Atari, no limit on MinAtar).
        groups: Atari's native backend only: the envs in that many groups whose games run while the network
            acts for another (:mod:`lot_rl.envs.groups`).
        life_loss_restart: Atari: restart each life as CleanRL's wrappers do, also when playing full games (see
            :func:`lot_rl.envs.atari.make_atari_env`); MinAtar games have one life, so it changes nothing there.
        life_loss_continue: Atari, gymnasium backend: the native env's life losses on CleanRL's wrappers (the
            opposite of ``life_loss_restart``; see :func:`lot_rl.envs.atari.make_atari_env`).
        gray_first: Atari, gymnasium backend: the native env's gray frames on CleanRL's wrappers (same place).
        native_game_start: Atari, gymnasium backend: the native env's game start on CleanRL's wrappers (same place).
        cleanrl_game_start: Atari, native backend: CleanRL's game start on the native env (same place).
        video_frames: keep the games' pictures for :func:`video_frame` without changing the backend (``render``
            moves Atari to the gymnasium backend): the gymnasium backend then keeps its RGB screens; the native
            Atari backend has none, and MinAtar always draws its own.
    """
    if not is_minatar_id(env_id):
        backend = backend or atari.DEFAULT_BACKEND
        return atari.make_atari_env(
            env_id, num_envs, seed, backend=backend, episodic_life=training,
            repeat_action_probability=repeat_action_probability, full_action_space=full_action_space, mode=mode,
            difficulty=difficulty, render=render or (video_frames and backend == "gymnasium"), num_threads=num_threads,
            max_episode_frames=max_episode_frames or atari.MAX_EPISODE_FRAMES, groups=groups,
            life_loss_restart=life_loss_restart, life_loss_continue=life_loss_continue, gray_first=gray_first,
            native_game_start=native_game_start, cleanrl_game_start=cleanrl_game_start)
    game = minatar.parse_env_id(env_id)
    game.choose_backend(backend)
    game.validate_flavour(mode, difficulty)
    require(not full_action_space, f"--full-action-space is an Atari option; {env_id} has its own action set "
                                   f"(-v0 ids have all six MinAtar actions)")
    require(num_threads == 0, f"--env-threads is an Atari option; {env_id} steps its games in one loop")
    require(groups == 1, f"--env-groups is an Atari option; {env_id} steps its games in one loop")
    for flag, value in (("--life-loss-continue", life_loss_continue), ("--gray-first", gray_first),
                        ("--native-game-start", native_game_start), ("--cleanrl-game-start", cleanrl_game_start)):
        require(not value, f"{flag} is an Atari option (how its games and lives start, or its pixels); "
                           f"{env_id} is a MinAtar game")
    return minatar.make_minatar_env(env_id, num_envs, seed, repeat_action_probability=repeat_action_probability,
                                    max_episode_frames=max_episode_frames)


def render_frame(env: VectorEnv, index: int) -> np.ndarray:
    """RGB frame (H, W, 3) of sub-env ``index`` of a :func:`make_env` env built with ``render=True``."""
    if isinstance(env.unwrapped, minatar.MinAtarVectorEnv):
        return env.unwrapped.render_frame(index)
    return env.unwrapped.envs[index].render()  # the Atari gymnasium backend's SyncVectorEnv


def video_frame(env: VectorEnv, index: int, observation: np.ndarray) -> np.ndarray:
    """A picture of sub-env ``index`` for a video, given its current ``observation``: the game's RGB screen where the
    env keeps one (MinAtar; the Atari gymnasium backend built with ``render`` or ``video_frames``), otherwise (ale-py's
    native Atari env has no screens) the newest 84x84 grayscale frame the agent sees, shown at twice its size."""
    unwrapped = env.unwrapped
    if isinstance(unwrapped, minatar.MinAtarVectorEnv) or getattr(unwrapped, "render_mode", None) == "rgb_array":
        return render_frame(env, index)
    return atari.observation_picture(observation)
