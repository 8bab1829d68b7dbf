"""One checkpoint writer and reader for every entry point.

A checkpoint is a ``torch.save`` dict with a header (``format``, ``version``, ``kind``) so that a file
from another program, another game or a truncated write is recognised and reported in one line instead
of a traceback from inside torch. Files are written atomically: to a temporary file in the same folder,
flushed to disk, then renamed over the target, so an interrupted save never leaves a half-written
checkpoint and never destroys the previous one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lot_rl.errors import LoTUserError

FORMAT = "lot_rl-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (tensors, state dicts, plain Python values) as a ``kind`` checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, "kind": kind, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave the temporary file behind, whatever interrupted the write.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Accept a run folder (containing ``checkpoint.pt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise LoTUserError(f"no checkpoint at {path} (give a run folder containing {CHECKPOINT_NAME}, "
                           f"or a checkpoint file)")
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its header (and ``kind`` if given)."""
    path = resolve_checkpoint_path(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise LoTUserError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                           f"({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LoTUserError(f"{path} is not a lot_rl checkpoint")
    if data.get("version", 0) > VERSION:
        raise LoTUserError(f"checkpoint {path} has format version {data['version']}; this lot_rl reads "
                           f"up to {VERSION}: upgrade lot_rl")
    if kind is not None and data.get("kind") != kind:
        raise LoTUserError(f"checkpoint {path} is a {data.get('kind')!r} checkpoint, expected {kind!r}")
    data["path"] = str(path)
    return data


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                      scheduler: torch.optim.lr_scheduler.LambdaLR | None = None,
                      scheduler_state: dict[str, Any] | None = None) -> None:
    """Load an optimizer's saved state (and its ``LambdaLR``'s) but keep the hyperparameters it was built with.

    The moments and step counts come from ``state``; the learning rate, epsilon, weight decay, betas...
    stay those of ``optimizer`` as the resumed run's options made it, so an option given with ``--resume``
    is applied instead of being overwritten by the saved one. With a scheduler its step count is restored,
    its base learning rates stay the new ones and the current learning rate is recomputed from them: an
    unchanged option gives back exactly the saved value.
    """
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs) if scheduler is not None else None
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, configured):
        group.update(hyper)
    if scheduler is not None and scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
        scheduler.base_lrs = base_lrs
        lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(base_lrs, scheduler.lr_lambdas)]
        for group, base, lr in zip(optimizer.param_groups, base_lrs, lrs):
            group["initial_lr"], group["lr"] = base, lr
        scheduler._last_lr = lrs
