"""The compact result of a finished sweep run: what ``lot-rl report`` needs, without checkpoints.

``lot-rl sweep`` writes one JSON file per finished run (``DIR/results/<env>__<variant>__<seed>.json``, a few kB):
which run, its resolved train options, steps, wall time and env steps/s, the final score, a learning curve on a
fixed grid of env steps, and an evaluation summary if asked for. Its fields: ``docs/sweeps.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from lot_rl.errors import LoTUserError, require
from lot_rl.runlog import FINAL_EPISODES, METRICS_NAME, RETURN_TAG, final_score, read_metrics, write_atomically

RESULTS_DIR = "results"
ATTEMPTS_NAME = "sweep_attempts.jsonl"  # one line per attempt at a run: when it began (the wall time counts them)
RESULT_FORMAT = "lot_rl-result"
RESULT_VERSION = 1
UPDATE_TAG = "charts/SPS"  # logged once per update
CURVE_POINTS = 50
FINAL_PROTOCOL = (f"mean return of the last {FINAL_EPISODES} training episodes (full games: true game returns, "
                  f"unclipped, all lives), or of all of them if fewer finished")
CURVE_PROTOCOL = (f"at each of {CURVE_POINTS} evenly spaced env steps: the final-score protocol applied to the "
                  f"episodes finished by then (null before the first)")


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def learning_curve(episode_steps: Sequence[int], returns: Sequence[float], total_steps: int,
                   points: int = CURVE_POINTS, window: int = FINAL_EPISODES) -> tuple[list[int], list[float | None]]:
    """At ``points`` evenly spaced steps up to ``total_steps``: the mean return of the last ``window`` episodes
    finished by then (``None`` before the first). Its last point is the final score."""
    ends = np.asarray(episode_steps, dtype=np.int64)
    values = np.asarray(returns, dtype=np.float64)
    steps = [int(round(total_steps * k / points)) for k in range(1, points + 1)]
    scores = []
    for step in steps:
        finished = int(np.searchsorted(ends, step, side="right"))
        recent = values[max(0, finished - window):finished]
        scores.append(_round(recent.mean()) if recent.size else None)
    return steps, scores


def _attempts_wall_time(run_dir: Path, rows: list[dict[str, Any]], now: float) -> float:
    """Seconds spent training, summed over attempts; an attempt that died counts until the last row it logged."""
    starts = []
    if (run_dir / ATTEMPTS_NAME).is_file():
        starts = sorted(json.loads(line)["start"] for line in (run_dir / ATTEMPTS_NAME).read_text().splitlines()
                        if line.strip())
    times = sorted(float(row["time"]) for row in rows if "time" in row)
    if not starts:
        return (times[-1] - times[0]) if len(times) > 1 else 0.0
    total = 0.0
    for k, start in enumerate(starts):
        if k == len(starts) - 1:
            end = now
        else:
            end = max([t for t in times if start <= t < starts[k + 1]], default=start)
        total += end - start
    return total


def _machine() -> dict[str, Any]:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}


def evaluate_run(run_dir: str | os.PathLike, episodes: int, seed: int, device: str = "auto") -> dict[str, Any]:
    """The final checkpoint's teacher over ``episodes`` full games, as ``lot-rl eval`` plays them (greedy)."""
    from lot_rl.evaluation import describe_settings, evaluate_policy

    require(episodes >= 1, f"--eval-episodes must be >= 1, got {episodes}")
    result = evaluate_policy(run_dir, policy="teacher", episodes=episodes, seed=seed, num_envs=min(8, episodes),
                             device=device)
    summary = {k: _round(v) for k, v in result.summary.to_dict().items()}
    return {"protocol": describe_settings(result.settings) + ", teacher of the final checkpoint", **summary,
            "returns": [_round(r) for r in result.returns]}


def build_result(run_dir: str | os.PathLike, env_id: str, variant: str, seed: int) -> dict[str, Any]:
    """A finished run's compact result, from its folder: what ``lot-rl report`` needs, without checkpoints.

    The final score follows :data:`FINAL_PROTOCOL`; the learning curve :data:`CURVE_PROTOCOL`. Wall time is
    the training's, summed over attempts (env creation, checkpoints and updates redone after a kill included);
    env steps/s is total steps over that wall time.
    """
    from lot_rl import __version__

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    episodes = [(int(row["step"]), float(row[RETURN_TAG])) for row in rows if RETURN_TAG in row]
    updates = [row for row in rows if UPDATE_TAG in row]
    require(bool(updates), f"run {run_dir.name} logged no update in {run_dir / METRICS_NAME}")
    total_steps = int(updates[-1]["step"])
    steps, scores = learning_curve([s for s, _ in episodes], [r for _, r in episodes], total_steps)
    score, final_episodes = final_score(rows)
    wall = _attempts_wall_time(run_dir, rows, time.time())
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return {
        "format": RESULT_FORMAT, "version": RESULT_VERSION, "run": run_dir.name,
        "env_id": env_id, "variant": variant, "seed": seed,
        "total_steps": total_steps, "updates": len(updates), "episodes": len(episodes),
        "wall_time_s": _round(wall, 1), "env_steps_per_s": _round(total_steps / wall, 1) if wall > 0 else None,
        "final": {"protocol": FINAL_PROTOCOL, "score": _round(score), "episodes": final_episodes},
        "curve": {"protocol": CURVE_PROTOCOL, "steps": steps, "scores": scores},
        "evaluation": None,
        "config": {k: v for k, v in config.items() if k not in ("run_dir", "run_name")},
        "machine": _machine(), "lot_rl": __version__,
    }


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write a result file atomically (a reader never sees half a file, and its presence means finished)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, _compact_lists(json.dumps(result, indent=1)) + "\n")
    return path


def _compact_lists(text: str) -> str:
    """Put each list of plain values (a learning curve) on one line of the indented JSON."""
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: " ".join(m.group(0).split()).replace("[ ", "[").replace(" ]", "]"),
                  text)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result file written by :func:`write_result`, checking that it is one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoTUserError(f"cannot read result file {path} ({type(exc).__name__})") from None
    require(isinstance(data, dict) and data.get("format") == RESULT_FORMAT, f"{path} is not a lot-rl sweep result")
    require(data.get("version", 0) <= RESULT_VERSION, f"result file {path} has version {data.get('version')}; this "
                                                      f"lot_rl reads up to {RESULT_VERSION}: upgrade lot_rl")
    return data


def load_results(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every result of a sweep folder (``DIR/results/*.json``) or of a folder holding result files itself."""
    folder = Path(folder)
    require(folder.is_dir(), f"{folder} is not a folder")
    base = folder / RESULTS_DIR if (folder / RESULTS_DIR).is_dir() else folder
    results, seen = [], {}
    for path in sorted(base.glob("*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
            if json.loads(path.read_text()).get("format") != RESULT_FORMAT:
                continue
        result = read_result(path)
        key = (result["env_id"], result["variant"], result["seed"])
        require(key not in seen, f"{path} and {seen.get(key)} are both results of {key[0]}, variant "
                                 f"{key[1]!r}, seed {key[2]}")
        seen[key] = path
        results.append(result)
    require(bool(results), f"no lot-rl sweep results in {folder} (expected {folder / RESULTS_DIR}/*.json from "
                           f"'lot-rl sweep', or such result files in the folder itself)")
    return results
