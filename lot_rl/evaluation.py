"""Evaluate saved policies on full Atari or MinAtar games: ``lot-rl eval`` and ``lot-rl compare``.

Evaluation plays *full games*: all lives, unclipped rewards, no reset on life loss, up to 30 no-op starts,
and the standard cap of 108,000 emulator frames (30 minutes) per game; a game stopped by the cap counts
with the score it reached (and is marked ``truncated``). MinAtar games (one life, one frame per step, no
time limit of their own) are cut at the same number of frames. Returns are summarised as rliable recommends
(:mod:`lot_rl.stats`): mean, std, median, and the interquartile mean (IQM) with a 95% bootstrap interval.

Games run in parallel (``num_envs``), with batched inference. To count exactly ``episodes`` games without
favouring short ones, each env plays a fixed share of them (``episodes // num_envs``, one more for the first
``episodes % num_envs``), and games an env plays beyond its share are not counted. Counting "the first N
games to finish" instead would over-represent short (usually bad) games. With the same seed, checkpoint
and settings, an evaluation gives the same returns.

Generalization flavours (LoT's claim is a teacher that generalizes better): sticky actions (``sticky=0.25``,
the ALE v5 protocol of Machado et al., 2018), the game's modes and difficulties (``mode``/``difficulty``,
validated against the ROM), and a sweep over every mode x difficulty (:func:`evaluate_flavours`).

Python use::

    from lot_rl.evaluation import evaluate_policy
    result = evaluate_policy("runs/my-run", policy="teacher", episodes=30)
    print(result.summary.iqm, result.returns)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lot_rl import config as cfg_lib
from lot_rl import stats
from lot_rl.agents.ppo_lot_atari import CHECKPOINT_KIND
from lot_rl.checkpoint import load_checkpoint
from lot_rl.envs import make_env, parse_env_id, render_frame
from lot_rl.envs.atari import BACKENDS, MAX_EPISODE_FRAMES, trained_backend
from lot_rl.errors import LoTUserError, require
from lot_rl.plotting import plot_comparison
from lot_rl.runlog import check_writable_file, ensure_writable_dir, progress_bar
from lot_rl.runtime import resolve_device
from lot_rl.video import EpisodeRecorder

EVAL_FORMAT = "lot_rl-eval"
EVAL_VERSION = 1
VIDEO_FPS = 15  # one frame per agent step: 60 Hz emulator / frame-skip 4
# Settings that must agree for two evaluations to be compared.
COMPARABLE_SETTINGS = ("game", "greedy", "sticky", "mode", "difficulty", "max_frames", "full_action_space")


# ----------------------------------------------------------------------------------------------------
# Results


@dataclass
class EvalResult:
    """Every counted game of one policy on one game flavour, with the settings that produced them."""

    policy: str
    returns: list[float]
    lengths: list[int]  # frames: on Atari emulator frames (agent steps x 4, as CleanRL and SB3's Monitor report)
    truncated: list[bool]  # stopped by the frame cap rather than by the game ending
    settings: dict[str, Any]
    videos: list[str] = field(default_factory=list)

    @property
    def summary(self) -> stats.Summary:
        return stats.summarize(self.returns)

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))

    @property
    def flavour(self) -> str:
        return flavour_name(self.settings.get("mode"), self.settings.get("difficulty"))

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "mode": self.settings.get("mode"),
                "difficulty": self.settings.get("difficulty"), "flavour": self.flavour,
                "summary": {**self.summary.to_dict(), "mean_length": self.mean_length,
                            "truncated": int(sum(self.truncated))},
                "episodes": [{"return": r, "length": l, "truncated": t}
                             for r, l, t in zip(self.returns, self.lengths, self.truncated)],
                "videos": self.videos}


@dataclass
class EvalReport:
    """The results of one checkpoint (one per policy, and per flavour in a sweep) and where they came from."""

    checkpoint: str
    env_id: str
    global_step: int | None
    update: int | None
    config: dict[str, Any]
    settings: dict[str, Any]
    results: list[EvalResult]

    def to_dict(self) -> dict[str, Any]:
        return {"format": EVAL_FORMAT, "version": EVAL_VERSION, "checkpoint": self.checkpoint,
                "env_id": self.env_id, "global_step": self.global_step, "update": self.update,
                "config": self.config, "settings": self.settings,
                "results": [r.to_dict() for r in self.results]}

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        try:
            path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        except OSError as exc:
            raise LoTUserError(f"--json: cannot write {path}: {exc.strerror}") from exc
        return path

    def result(self, policy: str = "teacher", mode: int | None = None,
               difficulty: int | None = None) -> EvalResult:
        for r in self.results:
            if r.policy == policy and r.settings.get("mode") == mode and r.settings.get("difficulty") == difficulty:
                return r
        have = sorted({r.policy for r in self.results})
        raise LoTUserError(f"evaluation of {self.checkpoint} has no results for policy {policy!r} on flavour "
                           f"{flavour_name(mode, difficulty)}; it has policies {', '.join(have)}")


def flavour_name(mode: int | None, difficulty: int | None) -> str:
    """``default``, ``mode 4``, ``mode 4, difficulty 1``."""
    if mode is None and difficulty is None:
        return "default"
    parts = [f"mode {mode}"] if mode is not None else []
    parts += [f"difficulty {difficulty}"] if difficulty is not None else []
    return ", ".join(parts)


def read_eval_json(path: str | os.PathLike) -> EvalReport:
    """Read what ``lot-rl eval --json`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise LoTUserError(f"no evaluation file at {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoTUserError(f"{path} is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != EVAL_FORMAT:
        raise LoTUserError(f"{path} is not a lot-rl eval --json file")
    require(data.get("version", 0) <= EVAL_VERSION, f"{path} has eval format version {data.get('version')}; "
                                                    f"this lot_rl reads up to {EVAL_VERSION}: upgrade lot_rl")
    results = []
    for r in data["results"]:
        settings = {**data["settings"], "mode": r.get("mode"), "difficulty": r.get("difficulty")}
        eps = r["episodes"]
        results.append(EvalResult(policy=r["policy"], returns=[float(e["return"]) for e in eps],
                                  lengths=[int(e["length"]) for e in eps],
                                  truncated=[bool(e["truncated"]) for e in eps],
                                  settings=settings, videos=list(r.get("videos", []))))
    return EvalReport(checkpoint=data["checkpoint"], env_id=data["env_id"], global_step=data.get("global_step"),
                      update=data.get("update"), config=data.get("config", {}), settings=data["settings"],
                      results=results)


# ----------------------------------------------------------------------------------------------------
# Policies from a checkpoint


def load_train_checkpoint(checkpoint: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of ``lot-rl train`` (run folder or file), or one already loaded."""
    if isinstance(checkpoint, dict):
        return checkpoint
    return load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)


def policy_names(checkpoint: dict[str, Any]) -> list[str]:
    """``["teacher", "student:0", ...]`` for the networks saved in a checkpoint."""
    students = checkpoint.get("students") or {}
    return ["teacher"] + [f"student:{i}" for i in range(len(students.get("networks", [])))]


def resolve_policies(checkpoint: dict[str, Any], policy: str | Sequence[str]) -> list[str]:
    """Expand ``all`` and comma lists; reject names the checkpoint does not hold."""
    available = policy_names(checkpoint)
    requested = policy.split(",") if isinstance(policy, str) else list(policy)
    names: list[str] = []
    for name in (n.strip() for n in requested):
        if name == "all":
            names += [n for n in available if n not in names]
            continue
        if name not in available:
            raise LoTUserError(f"unknown --policy {name!r}; {checkpoint.get('path', 'the checkpoint')} holds "
                               f"{', '.join(available)} (or all)")
        if name not in names:
            names.append(name)
    require(bool(names), "--policy is empty; give teacher, student:N or all")
    return names


def load_policy(checkpoint: dict[str, Any], name: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from uint8 observations (B, C, H, W) to policy logits, for the named network."""
    from lot_rl.agents.ppo_lot_atari import ATARI_FRAMES, Agent, StudentPolicy

    resolve_policies(checkpoint, name)
    num_actions = int(checkpoint["num_actions"])
    obs_shape = tuple(checkpoint.get("observation_shape", ATARI_FRAMES))  # older checkpoints: Atari only
    # Built on the meta device (no weight initialisation to throw away), then given the saved tensors.
    with torch.device("meta"):
        if name == "teacher":
            net: torch.nn.Module = Agent(num_actions, obs_shape)
            state = checkpoint["agent"]
        else:
            index = int(name.split(":")[1])
            net = StudentPolicy(num_actions, checkpoint["config"].get("student_arch", "nature"), obs_shape)
            state = checkpoint["students"]["networks"][index]
    try:
        net.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise LoTUserError(f"the {name} network in {checkpoint.get('path')} does not match lot_rl's "
                           f"architecture ({str(exc).splitlines()[0]})") from exc
    net.to(device).eval()
    return net.policy_logits if name == "teacher" else net


# ----------------------------------------------------------------------------------------------------
# Playing games


def episode_shares(episodes: int, num_envs: int) -> list[int]:
    """How many games each env plays: a fixed share, so short games are not favoured."""
    envs = min(num_envs, episodes)
    return [episodes // envs + (1 if i < episodes % envs else 0) for i in range(envs)]


class _VideoRecorder:
    """The chosen games of every env of an evaluation as MP4 files: one :class:`EpisodeRecorder` per env.

    ``wanted`` maps (env index, the env's game index) to a file name.
    """

    def __init__(self, env, folder: Path, wanted: dict[tuple[int, int], str], fps: int = VIDEO_FPS):
        self.env, self.wanted = env, wanted
        self.recorders = [EpisodeRecorder(folder, fps, lambda game, i=i: wanted.get((i, game)))
                          for i in range(env.num_envs)]

    def _picture(self, env_index: int) -> Callable[[], np.ndarray]:
        return lambda: render_frame(self.env, env_index)

    def start(self) -> None:
        """The envs were reset: their first games start."""
        for i, recorder in enumerate(self.recorders):
            recorder.start_game(self._picture(i))

    def step(self, finished: np.ndarray) -> None:
        """After a vector step (``finished``: the envs whose game ended on it)."""
        for i, recorder in enumerate(self.recorders):
            recorder.step(self._picture(i), bool(finished[i]))

    def close(self) -> None:
        for recorder in self.recorders:
            recorder.close()

    @property
    def paths(self) -> list[str]:
        """The videos written, in the order of ``wanted`` (env-major)."""
        written = {path for recorder in self.recorders for path in recorder.paths}
        in_order = [str(self.recorders[i].folder / name) for (i, _), name in self.wanted.items()]
        return [path for path in in_order if path in written]


def _video_slug(policy: str, mode: int | None, difficulty: int | None) -> str:
    parts = [policy.replace(":", "-")]
    if mode is not None:
        parts.append(f"mode{mode}")
    if difficulty is not None:
        parts.append(f"difficulty{difficulty}")
    return "-".join(parts)


def play_games(env, logits_fn: Callable[[torch.Tensor], torch.Tensor], episodes: int, *, greedy: bool = True,
               seed: int = 0, device: torch.device | str = "cpu", recorder: _VideoRecorder | None = None,
               desc: str = "", max_frames: int | None = None) -> tuple[list[float], list[int], list[bool]]:
    """Play until each env has finished its share of games; (returns, lengths, truncated), env-major order.

    Game ``k`` of the result is the ``j``-th game of env ``i`` in env order (env 0's games first), which
    does not depend on which env happens to finish first. A game counts as truncated when the env says so
    or, given the env's frame cap ``max_frames``, when it lasted that long.
    """
    device = torch.device(device)
    shares = episode_shares(episodes, env.num_envs)
    require(len(shares) == env.num_envs, "play_games: build the env with min(num_envs, episodes) envs")
    done = np.zeros(env.num_envs, dtype=np.int64)
    games: list[list[tuple[float, int, bool]]] = [[] for _ in shares]
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    if recorder is not None:
        recorder.start()
    bar = progress_bar(episodes, desc=desc, unit="game")
    threads = torch.get_num_threads()
    if device.type == "cpu" and env.num_envs <= 32:
        # A batch of a few frames gains nothing from intra-op threads, and their spinning between calls
        # slows the emulator threads (measured: 2 ms per batch with one thread, far more with two on a
        # busy 2-core machine).
        torch.set_num_threads(1)
    try:
        while (done < shares).any():
            with torch.inference_mode():
                logits = logits_fn(torch.as_tensor(obs, device=device)).float()
                if greedy:
                    actions = logits.argmax(dim=-1)
                else:
                    actions = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
            obs, _, terminated, truncated, info = env.step(actions.cpu().numpy())
            finished = np.asarray(info.get("_episode", np.zeros(env.num_envs, bool)), dtype=bool)
            for i in np.flatnonzero(finished):
                if done[i] < shares[i]:
                    length = int(info["episode"]["l"][i])
                    cut = bool(truncated[i]) or (max_frames is not None and length >= max_frames)
                    games[i].append((float(info["episode"]["r"][i]), length, cut))
                    bar.update(1)
                done[i] += 1
            if recorder is not None:
                recorder.step(finished)
    finally:
        torch.set_num_threads(threads)
        bar.close()
        if recorder is not None:
            recorder.close()
    flat = [g for env_games in games for g in env_games]
    return [g[0] for g in flat], [g[1] for g in flat], [g[2] for g in flat]


@dataclass
class EvalSettings:
    """How to evaluate (the options ``lot-rl eval`` and ``compare`` share); ``None`` values are resolved from
    the checkpoint (see :func:`resolve_settings`)."""

    episodes: int = cfg_lib.option(30, "games per policy")
    greedy: bool = cfg_lib.option(True, "act by the argmax of the policy logits",
                                  negative=("--sample", "sample actions from the policy"))
    seed: int = cfg_lib.option(0, "seed of the games and of sampling")
    num_envs: int = cfg_lib.option(8, "games played in parallel")
    sticky: float | None = cfg_lib.option(None, "sticky-action probability; 0.25 is the ALE v5 protocol",
                                          flags=("--sticky", "--repeat-action-probability"), metavar="P",
                                          default_text="as trained")
    mode: int | None = cfg_lib.option(None, "ALE game mode", default_text="the game's default")
    difficulty: int | None = cfg_lib.option(None, "ALE game difficulty", default_text="the game's default")
    max_frames: int = cfg_lib.option(MAX_EPISODE_FRAMES, "emulator frames after which a game is cut",
                                     default_text=f"{MAX_EPISODE_FRAMES:,}")
    env_id: str | None = cfg_lib.option(None, "Atari id", default_text="the checkpoint's; must be the same game")
    backend: str | None = cfg_lib.option(None, "env backend", choices=BACKENDS, flags=("--backend", "--env-backend"),
                                         default_text="the env the run trained on (gymnasium if it named none); "
                                                      "gymnasium when flavours or videos need it")
    device: str = cfg_lib.option("auto", "torch device: auto, cpu, cuda, cuda:N")


def resolve_settings(checkpoint: dict[str, Any], settings: EvalSettings) -> dict[str, Any]:
    """Validate ``settings`` against the checkpoint and fill in its game, actions and sticky actions."""
    config = checkpoint.get("config", {})
    trained_id = config.get("env_id")
    require(trained_id is not None, f"checkpoint {checkpoint.get('path')} does not say which game it was trained on")
    env_id = settings.env_id or trained_id
    trained, game = parse_env_id(trained_id), parse_env_id(env_id)
    require(game.key == trained.key, f"--env-id {env_id}: checkpoint {checkpoint.get('path')} was trained on "
                                     f"{trained.name} ({trained_id}), not {game.name}")
    require(settings.episodes >= 1, f"--episodes must be >= 1, got {settings.episodes}")
    require(settings.num_envs >= 1, f"--num-envs must be >= 1, got {settings.num_envs}")
    require(settings.max_frames >= 4, f"--max-frames must be >= 4, got {settings.max_frames}")
    game.choose_backend(settings.backend)  # MinAtar: Atari's backends are refused
    require(settings.backend in (None, *game.backends),
            f"unknown backend {settings.backend!r}; choose one of {', '.join(game.backends)}")
    sticky = settings.sticky
    if sticky is None:
        sticky = config.get("repeat_action_probability") if settings.env_id is None else None
    if sticky is None:
        sticky = game.default_sticky
    require(0.0 <= sticky < 1.0, f"--sticky must be in [0, 1), got {sticky}")
    game.validate_flavour(settings.mode, settings.difficulty)
    return {"env_id": env_id, "game": game.name, "episodes": settings.episodes, "greedy": settings.greedy,
            "seed": settings.seed, "num_envs": min(settings.num_envs, settings.episodes), "sticky": float(sticky),
            "mode": settings.mode, "difficulty": settings.difficulty, "max_frames": settings.max_frames,
            "full_action_space": bool(config.get("full_action_space", False)), "full_games": True,
            # play lives as the policy learnt them: CleanRL's wrappers restart every life (hidden NOOP, FIRE); the
            # native env only with --life-loss-restart; with --life-loss-continue they do not. Runs that name no
            # env trained on the native env (the default before issue 18), those saved before the option existed
            # without the restart.
            "life_loss_restart": (trained_backend(config) == "gymnasium" and not config.get("life_loss_continue"))
                                 or bool(config.get("life_loss_restart", False)),
            "gray_first": bool(config.get("gray_first", False)),  # the pixels it learnt on (issue 18's arm)
            "native_game_start": bool(config.get("native_game_start", False)),  # the game start it learnt from
            "cleanrl_game_start": bool(config.get("cleanrl_game_start", False)),
            "frames_per_step": game.frames_per_step,
            # the env the run trained on unless told otherwise (runs that named none: the default, gymnasium)
            "backend": settings.backend or config.get("env_backend"), "device": settings.device}


def _evaluate_one(checkpoint: dict[str, Any], policy: str, resolved: dict[str, Any], video_dir: Path | None,
                  video_episodes: int) -> EvalResult:
    device = resolve_device(resolved["device"])
    logits_fn = load_policy(checkpoint, policy, device)
    record = video_dir is not None and video_episodes > 0
    game = parse_env_id(resolved["env_id"])
    backend = game.choose_backend(resolved["backend"], render=record,
                                  flavoured=resolved["mode"] is not None or resolved["difficulty"] is not None)
    env = make_env(resolved["env_id"], resolved["num_envs"], resolved["seed"], training=False, backend=backend,
                   repeat_action_probability=resolved["sticky"], full_action_space=resolved["full_action_space"],
                   mode=resolved["mode"], difficulty=resolved["difficulty"], render=record,
                   max_episode_frames=resolved["max_frames"], life_loss_restart=resolved["life_loss_restart"],
                   gray_first=resolved["gray_first"] and backend == "gymnasium" and not record,
                   native_game_start=resolved["native_game_start"] and backend == "gymnasium",
                   cleanrl_game_start=resolved["cleanrl_game_start"] and backend == "ale")
    try:
        actions = int(env.single_action_space.n)
        require(actions == int(checkpoint["num_actions"]),
                f"checkpoint {checkpoint.get('path')} has {checkpoint['num_actions']} actions but "
                f"{resolved['env_id']} has {actions} here (full_action_space differs?)")
        recorder = None
        if record:
            shares = episode_shares(resolved["episodes"], resolved["num_envs"])
            slug = _video_slug(policy, resolved["mode"], resolved["difficulty"])
            order = [(i, j) for i, share in enumerate(shares) for j in range(share)]  # env-major game index
            wanted = {pair: f"{slug}-episode{k:03d}.mp4" for k, pair in enumerate(order[:video_episodes])}
            recorder = _VideoRecorder(env, video_dir, wanted, fps=game.video_fps)
        returns, lengths, truncated = play_games(
            env, logits_fn, resolved["episodes"], greedy=resolved["greedy"], seed=resolved["seed"], device=device,
            recorder=recorder, desc=f"{policy} {flavour_name(resolved['mode'], resolved['difficulty'])}",
            max_frames=resolved["max_frames"])
    finally:
        env.close()
    used = {**resolved, "backend": backend}
    return EvalResult(policy=policy, returns=returns, lengths=lengths, truncated=truncated, settings=used,
                      videos=recorder.paths if record else [])


def evaluate(checkpoint: str | os.PathLike | dict[str, Any], policy: str | Sequence[str] = "teacher",
             settings: EvalSettings | None = None, *, flavours: bool = False,
             video_dir: str | os.PathLike | None = None, video_episodes: int = 1) -> EvalReport:
    """Evaluate one or more policies of a checkpoint (``policy``: teacher, student:N, all, or a list).

    With ``flavours`` every mode x difficulty of the game is played too, after the default flavour (all on
    the gymnasium backend, so that the rows differ only by flavour). ``video_dir`` records the first
    ``video_episodes`` games of each policy (and flavour) as MP4.
    """
    settings = settings or EvalSettings()
    ckpt = load_train_checkpoint(checkpoint)
    names = resolve_policies(ckpt, policy)
    resolved = resolve_settings(ckpt, settings)
    require(video_episodes >= 0, f"--video-episodes must be >= 0, got {video_episodes}")
    folder = ensure_writable_dir(video_dir, "--video") if video_dir is not None else None
    if flavours:
        require(settings.mode is None and settings.difficulty is None,
                "--flavours all already sweeps every mode and difficulty; drop --mode/--difficulty")
        modes, difficulties = parse_env_id(resolved["env_id"]).flavours()
        grid = [(None, None)] + list(itertools.product(modes, difficulties))
        resolved["backend"] = settings.backend or "gymnasium"  # flavours exist only there: every row on it
    else:
        grid = [(settings.mode, settings.difficulty)]
    results = [_evaluate_one(ckpt, name, {**resolved, "mode": mode, "difficulty": difficulty}, folder, video_episodes)
               for name in names for mode, difficulty in grid]
    report_settings = {k: v for k, v in resolved.items() if k not in ("mode", "difficulty")}
    report_settings.update(mode=settings.mode, difficulty=settings.difficulty, flavours="all" if flavours else None,
                           backend=results[0].settings["backend"], policies=names)
    return EvalReport(checkpoint=str(ckpt.get("path", "")), env_id=resolved["env_id"],
                      global_step=ckpt.get("global_step"), update=ckpt.get("update"),
                      config=ckpt.get("config", {}), settings=report_settings, results=results)


def evaluate_policy(checkpoint: str | os.PathLike | dict[str, Any], policy: str = "teacher",
                    settings: EvalSettings | None = None, *, video_dir: str | os.PathLike | None = None,
                    video_episodes: int = 1, **overrides: Any) -> EvalResult:
    """Play full games with one policy (``teacher`` or ``student:N``) of a checkpoint.

    Args:
        checkpoint: a run folder, a ``checkpoint.pt`` file, or a loaded checkpoint dict.
        settings: how to play (:class:`EvalSettings`: episodes, greedy or sampled actions, seed, sticky
            actions, game flavour, frame cap, ...); default ``EvalSettings()``.
        video_dir: record the first ``video_episodes`` games as MP4 there.
        overrides: :class:`EvalSettings` fields that replace those of ``settings``
            (``evaluate_policy(run, episodes=50, sticky=0.25)``).
    Returns:
        an :class:`EvalResult` (returns, lengths in frames, truncation flags, settings, video paths).
    """
    require(isinstance(policy, str) and policy != "all" and "," not in policy,
            f"evaluate_policy evaluates one policy, got {policy!r}; use evaluate() for several")
    names = [f.name for f in fields(EvalSettings)]
    unknown = sorted(set(overrides) - set(names))
    require(not unknown, f"evaluate_policy: unknown setting(s) {', '.join(unknown)}; settings are {', '.join(names)}")
    settings = replace(settings or EvalSettings(), **overrides)
    return evaluate(checkpoint, policy, settings, video_dir=video_dir, video_episodes=video_episodes).results[0]


# ----------------------------------------------------------------------------------------------------
# Tables


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 1e6 else f"{x:.3g}"


def format_table(header: list[str], rows: list[list[str]], align_left: int = 1) -> str:
    """A plain-text table: the first ``align_left`` columns left-aligned, numbers right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if k < align_left else str(c).rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def describe_settings(settings: dict[str, Any], flavour: bool = True) -> str:
    """One line: how the games were played."""
    where = f"{flavour_name(settings.get('mode'), settings.get('difficulty'))} flavour, " if flavour else ""
    return (f"full games, {'greedy' if settings['greedy'] else 'sampled'} actions, sticky {settings['sticky']:g}, "
            f"{where}cap {settings['max_frames']:,} frames, seed {settings['seed']}")


def format_report(report: EvalReport) -> str:
    """The ``lot-rl eval`` table: one row per policy (and per flavour in a sweep)."""
    step = f" at step {report.global_step:,}" if report.global_step is not None else ""
    sweep = report.settings.get("flavours") == "all"
    lines = [f"{report.settings['game']} ({report.env_id}), {report.checkpoint}{step}",
             describe_settings(report.settings, flavour=not sweep)]
    header = (["policy"] + (["flavour"] if sweep else [])
              + ["episodes", "mean", "std", "median", "IQM [95% CI]", "min", "max", "mean length"]
              + (["IQM vs default"] if sweep else []))
    rows = []
    for r in report.results:
        s = r.summary
        row = [r.policy] + ([r.flavour] if sweep else []) + [
            str(s.episodes), _fmt(s.mean), _fmt(s.std), _fmt(s.median),
            f"{_fmt(s.iqm)} [{_fmt(s.iqm_low)}, {_fmt(s.iqm_high)}]", _fmt(s.min), _fmt(s.max),
            f"{r.mean_length:,.0f}"]
        if sweep:
            base = report.result(r.policy).summary.iqm
            row.append("-" if r.flavour == "default" else f"{s.iqm - base:+.1f}")
        rows.append(row)
    lines += ["", format_table(header, rows, align_left=2 if sweep else 1)]
    cut = sum(sum(r.truncated) for r in report.results)
    if cut:
        lines.append(f"({cut} game(s) reached the {report.settings['max_frames']:,}-frame cap and count with "
                     f"the score reached)")
    frames_per_step = report.settings.get("frames_per_step", 4)
    lines.append(f"lengths in emulator frames (agent steps x {frames_per_step})" if frames_per_step > 1
                 else "lengths in agent steps (one frame each)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# compare


@dataclass
class CompareEntry:
    """One run in a comparison: its label and its evaluation result."""

    label: str
    source: str
    result: EvalResult
    game: str


def _label_for(source: str) -> str:
    path = Path(source)
    if path.is_dir():
        return path.resolve().name
    if path.suffix == ".json":
        return path.stem
    return path.resolve().parent.name


def compare_runs(sources: Sequence[str | os.PathLike], settings: EvalSettings | None = None, policy: str = "teacher",
                 labels: Sequence[str] | None = None) -> list[CompareEntry]:
    """Evaluate (or read saved ``eval --json`` files of) several runs with the same settings.

    Each source is a run folder, a checkpoint file, or an evaluation JSON. Raises :class:`LoTUserError`
    when they are of different games or were evaluated with settings that make them incomparable.
    """
    require(len(sources) >= 2, f"compare needs at least two runs, got {len(sources)}")
    require(labels is None or len(labels) == len(sources),
            f"--labels has {len(labels or [])} names for {len(sources)} runs")
    require(policy != "all" and "," not in policy, "compare takes one --policy (teacher or student:N)")
    settings = settings or EvalSettings()
    # First read or check every source (cheap), so that a mismatch is reported before any game is played.
    planned: list[tuple[str, dict[str, Any], EvalResult | dict[str, Any]]] = []
    for source in map(str, sources):
        if source.endswith(".json"):
            result = read_eval_json(source).result(policy, settings.mode, settings.difficulty)
            planned.append((source, result.settings, result))
        else:
            ckpt = load_train_checkpoint(source)
            resolve_policies(ckpt, policy)
            planned.append((source, resolve_settings(ckpt, settings), ckpt))
    first_source, first_settings, _ = planned[0]
    for source, used, _ in planned[1:]:
        for key in COMPARABLE_SETTINGS:
            a, b = first_settings.get(key), used.get(key)
            require(a == b, f"cannot compare {first_source} and {source}: {key} is {a!r} in one and {b!r} in the "
                            f"other (evaluate them with the same settings)")
    entries = []
    for k, (source, used, item) in enumerate(planned):
        result = item if isinstance(item, EvalResult) else evaluate(item, policy, settings).results[0]
        entries.append(CompareEntry(label=labels[k] if labels else _label_for(source), source=source, result=result,
                                    game=result.settings["game"]))
    return entries


def format_comparison(entries: Sequence[CompareEntry]) -> str:
    """Runs side by side, each later run against the first: P(improvement) and IQM difference with CIs."""
    base = entries[0]
    header = [""] + [e.label for e in entries]
    summaries = [e.result.summary for e in entries]
    comparisons = [None] + [stats.compare_returns(e.result.returns, base.result.returns) for e in entries[1:]]
    rows = [
        ["episodes"] + [str(s.episodes) for s in summaries],
        ["mean"] + [_fmt(s.mean) for s in summaries],
        ["std"] + [_fmt(s.std) for s in summaries],
        ["median"] + [_fmt(s.median) for s in summaries],
        ["IQM [95% CI]"] + [f"{_fmt(s.iqm)} [{_fmt(s.iqm_low)}, {_fmt(s.iqm_high)}]" for s in summaries],
        ["min"] + [_fmt(s.min) for s in summaries],
        ["max"] + [_fmt(s.max) for s in summaries],
        ["mean length"] + [f"{e.result.mean_length:,.0f}" for e in entries],
        [f"P(better than {base.label}) [CI]"] + ["-"] + [
            f"{c.probability_of_improvement:.2f} [{c.poi_low:.2f}, {c.poi_high:.2f}]" for c in comparisons[1:]],
        [f"IQM - IQM({base.label}) [CI]"] + ["-"] + [
            f"{c.iqm_difference:+.1f} [{c.difference_low:+.1f}, {c.difference_high:+.1f}]" for c in comparisons[1:]],
    ]
    settings = base.result.settings
    title = f"{base.game}, {base.result.policy}; {describe_settings(settings)}"
    return title + "\n\n" + format_table(header, rows) + "\n" + \
        "P(better): chance that a game of the run beats a game of the first run (0.5: no difference)"


# ----------------------------------------------------------------------------------------------------
# Command line


@dataclass
class EvalArgs:
    """``lot-rl eval``'s own options (the games are played with :class:`EvalSettings`)."""

    policy: str = cfg_lib.option("teacher", "teacher, student:N, all, or a comma list")
    json: str | None = cfg_lib.option(None, "write every game's return and length, the checkpoint's step and config, "
                                            "and the settings as JSON", metavar="PATH", default_text="")
    flavours: str | None = cfg_lib.option(None, "all: also play every mode x difficulty of the game, beside the "
                                                "default flavour", choices=("all",), default_text="")
    video: str | None = cfg_lib.option(None, "record the first games as MP4 in DIR", metavar="DIR", default_text="")
    video_episodes: int = cfg_lib.option(1, "games recorded per policy (and flavour) with --video", metavar="K")


@dataclass
class CompareArgs:
    """``lot-rl compare``'s own options (the games are played with :class:`EvalSettings`)."""

    labels: list[str] | None = cfg_lib.option(None, "a name per run", default_text="folder names")
    policy: str = cfg_lib.option("teacher", "teacher or student:N")
    plot: str | None = cfg_lib.option(None, "also draw the comparison", metavar="FILE.png", default_text="")


def configure_parser(parser: argparse.ArgumentParser, command: str = "eval") -> None:
    if command == "compare":
        parser.description = ("Evaluate several runs with the same settings (or read their saved 'lot-rl eval "
                              "--json' files) and compare them side by side: IQM with 95% bootstrap intervals, "
                              "probability of improvement over the first run, and IQM difference.")
        parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders, checkpoint files or eval JSON files")
        cfg_lib.add_options(parser, CompareArgs)
    else:
        parser.description = ("Play full games (all lives, unclipped rewards, 108,000-frame cap) with the policies "
                              "of a checkpoint and report mean, std, median and IQM with a 95% bootstrap interval.")
        parser.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", help="run folder or checkpoint file")
        cfg_lib.add_options(parser, EvalArgs)
    cfg_lib.add_options(parser, EvalSettings)


def settings_from_args(ns: argparse.Namespace) -> EvalSettings:
    """The :class:`EvalSettings` of a parsed ``lot-rl eval`` or ``compare`` command line."""
    return cfg_lib.from_namespace(EvalSettings, ns)


def run_command(ns: argparse.Namespace, command: str = "eval") -> int:
    settings = settings_from_args(ns)
    if command == "compare":
        args = cfg_lib.from_namespace(CompareArgs, ns)
        if args.plot:
            check_writable_file(args.plot, "--plot")
        entries = compare_runs(ns.runs, settings, policy=args.policy, labels=args.labels)
        print(format_comparison(entries))
        if args.plot:
            print(f"plot: {plot_comparison(entries, args.plot)}")
        return 0
    args = cfg_lib.from_namespace(EvalArgs, ns)
    if args.json:
        check_writable_file(args.json, "--json")
    report = evaluate(ns.run, args.policy, settings, flavours=args.flavours == "all", video_dir=args.video,
                      video_episodes=args.video_episodes)
    print(format_report(report))
    if args.json:
        print(f"json: {report.write_json(args.json)}")
    videos = [v for r in report.results for v in r.videos]
    if videos:
        print(f"videos: {len(videos)} in {args.video}")
    return 0
