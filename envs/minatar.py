"""MinAtar games (Young & Tian, 2019) as a fast gymnasium vector env for lot_rl.

MinAtar plays five Atari games on a 10x10 grid, one channel per kind of object: ``MinAtar/Asterix-v1``,
``Breakout-v1``, ``Freeway-v1``, ``Seaquest-v1`` and ``SpaceInvaders-v1`` (``-v1``: the minimal action set of each
game; ``-v0``: all six actions). The games come from the PyPI package ``minatar`` (GPL-3.0), an optional extra
(``pip install -e ".[minatar]"``) that lot_rl imports only when a MinAtar id is used; no MinAtar code is copied
here.

``make_minatar_env(env_id, num_envs, seed)`` returns a gymnasium 1.x ``VectorEnv`` with the same conventions as
:func:`lot_rl.envs.atari.make_atari_env`:

- observations ``uint8 (num_envs, C, 10, 10)``, channels first, values 0/1 (C = 4 for Asterix and Breakout,
  7 Freeway, 10 Seaquest, 6 SpaceInvaders);
- sticky actions with probability 0.1 (MinAtar's default; ``repeat_action_probability`` overrides), no frame
  skip, no time limit unless ``max_episode_frames`` is given (evaluation cuts games there: one frame is one step);
- raw rewards; true episode statistics in ``info["episode"]["r"]`` / ``["l"]`` (return, length in steps) with
  ``info["_episode"]`` marking the envs whose game ended on this step;
- same-step autoreset: the observation returned with a finished game is the first one of the next.

The envs are stepped in a plain loop: a MinAtar step is 5-50 microseconds of Python, so 64 envs step in 0.5-3 ms,
well below the network's share of a training step (measured: ``scripts/benchmark_minatar.py``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from lot_rl.errors import LoTUserError, require

# Display name -> the name of MinAtar's game module.
GAMES = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway", "Seaquest": "seaquest",
         "SpaceInvaders": "space_invaders"}
INSTALL_COMMAND = 'pip install -e ".[minatar]"'
DEFAULT_STICKY = 0.1  # MinAtar's own default
VIDEO_SCALE = 32  # pixels per grid cell in videos: 320x320 frames
# One colour per channel, in channel order (at most 10 channels: Seaquest); black is the empty cell.
CHANNEL_COLOURS = np.array([
    (80, 200, 80), (230, 70, 70), (250, 200, 40), (70, 130, 240), (230, 120, 220),
    (60, 210, 210), (250, 140, 40), (160, 110, 240), (200, 200, 200), (140, 90, 50)], dtype=np.uint8)
_ID_PATTERN = re.compile(r"^MinAtar/(?P<name>[A-Za-z]+)-v(?P<version>\d+)$")


@dataclass(frozen=True)
class MinAtarGame:
    """A parsed MinAtar env id; the same interface as :class:`lot_rl.envs.atari.AtariGame`."""

    game: str  # "Breakout"
    env_id: str  # "MinAtar/Breakout-v1"

    family: ClassVar[str] = "minatar"
    default_sticky: ClassVar[float] = DEFAULT_STICKY
    frames_per_step: ClassVar[int] = 1
    video_fps: ClassVar[int] = 10
    backends: ClassVar[tuple[str, ...]] = ("minatar",)

    @property
    def name(self) -> str:
        """Display name, distinct from the Atari game's: ``MinAtar-Breakout``."""
        return f"MinAtar-{self.game}"

    @property
    def key(self) -> str:
        """What a checkpoint and an evaluation must agree on: the game (``-v0`` and ``-v1`` differ in actions,
        which the checkpoint's action count checks)."""
        return f"minatar:{GAMES[self.game]}"

    def validate_flavour(self, mode: int | None, difficulty: int | None) -> None:
        require(mode is None and difficulty is None,
                f"--mode/--difficulty are Atari options: MinAtar games ({self.env_id}) have no modes or difficulties")

    def flavours(self) -> tuple[list[int], list[int]]:
        raise LoTUserError(f"--flavours all is an Atari option: MinAtar games ({self.env_id}) have no modes or "
                           f"difficulties")

    def choose_backend(self, requested: str | None, *, render: bool = False, flavoured: bool = False) -> str:
        require(requested in (None, *self.backends),
                f"env backend {requested!r} is an Atari option (--env-backend/--backend): MinAtar games "
                f"({self.env_id}) have one backend")
        return self.backends[0]


def parse_env_id(env_id: str) -> MinAtarGame:
    """``MinAtar/Breakout-v1`` (or ``-v0``); checks that the ``minatar`` package is installed."""
    match = _ID_PATTERN.match(env_id.strip())
    names = {name.lower(): name for name in GAMES}
    name = names.get(match.group("name").lower()) if match else None
    if name is None:
        stem = env_id.strip().removeprefix("MinAtar/").split("-v")[0]
        close = difflib.get_close_matches(stem, list(GAMES), n=3, cutoff=0.5)
        hint = (f"; did you mean {', '.join(f'MinAtar/{c}-v1' for c in close)}?" if close
                else f"; MinAtar ids are {', '.join(f'MinAtar/{g}-v1' for g in GAMES)}")
        raise LoTUserError(f"unknown MinAtar env id {env_id!r}{hint}")
    require(match.group("version") in ("0", "1"),
            f"env id {env_id!r}: MinAtar ids are -v1 (minimal action sets) or -v0 (all six actions)")
    register_minatar()
    return MinAtarGame(game=name, env_id=f"MinAtar/{name}-v{match.group('version')}")


def register_minatar() -> None:
    """Import ``minatar`` and register its gymnasium ids once; one clear line if it is not installed."""
    try:
        import minatar.gym
    except ImportError:
        raise LoTUserError(f"MinAtar ids need the minatar package (GPL-3.0, an optional extra): "
                           f"{INSTALL_COMMAND}") from None
    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()


def make_minatar_env(env_id: str, num_envs: int = 8, seed: int = 1, *,
                     repeat_action_probability: float | None = None,
                     max_episode_frames: int | None = None) -> "MinAtarVectorEnv":
    """Build ``num_envs`` MinAtar games (see the module docstring), already validated.

    Args:
        env_id: ``MinAtar/Breakout-v1``, ...
        repeat_action_probability: sticky actions; None takes MinAtar's 0.1.
        max_episode_frames: cut (truncate) a game after this many steps; None: no limit (MinAtar's protocol).
    Reset the returned env with ``env.reset(seed=seed)``; ``seed`` here seeds action-space sampling.
    """
    game = parse_env_id(env_id)
    require(num_envs >= 1, f"--num-envs must be >= 1, got {num_envs}")
    sticky = DEFAULT_STICKY if repeat_action_probability is None else repeat_action_probability
    require(0.0 <= sticky < 1.0, f"--repeat-action-probability must be in [0, 1), got {sticky}")
    require(max_episode_frames is None or max_episode_frames >= 1,
            f"the frame cap must be >= 1, got {max_episode_frames}")
    env = MinAtarVectorEnv(game, num_envs, sticky, max_episode_frames)
    env.action_space.seed(seed)
    return env


class MinAtarVectorEnv(VectorEnv):
    """``num_envs`` MinAtar games stepped in one loop, with uint8 channels-first observations, episode
    statistics and same-step autoreset (the conventions of lot_rl's Atari envs)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}

    def __init__(self, game: MinAtarGame, num_envs: int, sticky: float, max_episode_frames: int | None = None):
        self.game, self.num_envs, self.max_episode_frames = game, num_envs, max_episode_frames
        # The registered gymnasium env of each game, unwrapped: its step() is MinAtar's act + state, nothing else.
        self.envs = [gym.make(game.env_id, sticky_action_prob=sticky, disable_env_checker=True).unwrapped
                     for _ in range(num_envs)]
        height, width, channels = self.envs[0].observation_space.shape
        self.single_observation_space = gym.spaces.Box(0, 1, (channels, height, width), np.uint8)
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._obs = np.zeros((num_envs, channels, height, width), dtype=np.uint8)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start new games in every env; env ``i`` is seeded with ``seed + i``."""
        for i, env in enumerate(self.envs):
            state, _ = env.reset(seed=None if seed is None else seed + i)
            self._obs[i] = state.transpose(2, 0, 1)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._obs.copy(), {}

    def step(self, actions):
        actions = np.asarray(actions)
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        terminated = np.zeros(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            state, reward, terminated[i], _, _ = env.step(int(actions[i]))
            rewards[i] = reward
            self._obs[i] = state.transpose(2, 0, 1)
        self._returns += rewards
        self._lengths += 1
        truncated = (np.zeros(self.num_envs, dtype=bool) if self.max_episode_frames is None
                     else ~terminated & (self._lengths >= self.max_episode_frames))
        finished = terminated | truncated
        info: dict[str, Any] = {}
        if finished.any():
            info["episode"] = {"r": np.where(finished, self._returns, 0.0),
                               "l": np.where(finished, self._lengths, 0)}
            info["_episode"] = finished
            for i in np.flatnonzero(finished):
                state, _ = self.envs[i].reset()
                self._obs[i] = state.transpose(2, 0, 1)
            self._returns[finished] = 0.0
            self._lengths[finished] = 0
        return self._obs.copy(), rewards, terminated, truncated, info

    def render_frame(self, index: int, scale: int = VIDEO_SCALE) -> np.ndarray:
        """RGB picture ``(10 * scale, 10 * scale, 3)`` of env ``index``'s current grid, one colour per channel."""
        return grid_to_rgb(self._obs[index], scale)

    def close_extras(self, **kwargs: Any) -> None:
        self.envs = []


def grid_to_rgb(grid: np.ndarray, scale: int = VIDEO_SCALE) -> np.ndarray:
    """A ``(C, H, W)`` 0/1 grid as an RGB image, each cell ``scale`` pixels wide. Where objects overlap, the lower
    channel is drawn: MinAtar lists the player and moving objects first (Breakout's ball over a brick)."""
    channels = grid.shape[0]
    require(channels <= len(CHANNEL_COLOURS), f"cannot draw {channels} channels (at most {len(CHANNEL_COLOURS)})")
    occupied = grid > 0
    cell = np.where(occupied.any(axis=0), occupied.argmax(axis=0) + 1, 0)  # 0: empty, else 1 + first channel
    palette = np.vstack([np.zeros((1, 3), np.uint8), CHANNEL_COLOURS[:channels]])
    return palette[cell].repeat(scale, axis=0).repeat(scale, axis=1)
