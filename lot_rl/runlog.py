"""Run folders: TensorBoard events, the same scalars as JSON lines (and in W&B with ``--track``), a progress bar.

Every training command writes ``runs/<run-name>/`` with ``events.out.tfevents.*`` (TensorBoard, CleanRL's
tag names), ``metrics.jsonl`` (one ``{"step": ..., "tag": value, ...}`` object per logging call) and
``config.yaml``; a tracked run also sends each scalar, once, to its tracker (:mod:`lot_rl.tracking`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lot_rl.checkpoint import CHECKPOINT_NAME
from lot_rl.errors import LoTUserError, require
from lot_rl.video import gif_bytes

METRICS_NAME = "metrics.jsonl"
RETURN_TAG = "charts/episodic_return"
FINAL_EPISODES = 100  # a run's score: the mean return of its last 100 games


def make_run_dir(root: str | Path, run_name: str, exist_ok: bool = False) -> Path:
    """Create ``root/run_name``; refuse to reuse a folder that already has a checkpoint (use --resume)."""
    run_dir = Path(root) / run_name
    if not exist_ok and (run_dir / CHECKPOINT_NAME).exists():
        raise LoTUserError(f"run folder {run_dir} already holds a checkpoint; continue it with "
                           f"--resume {run_dir} or choose another --run-name")
    return ensure_writable_dir(run_dir, "run folder")


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` if needed and prove it writable, or raise one line naming ``what`` it is for."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lot-rl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise LoTUserError(f"{what}: cannot write to folder {path}: {exc.strerror}") from exc
    return path


def check_writable_file(path: str | os.PathLike, option: str) -> Path:
    """Prove output file ``path`` writable before long work, or raise one line naming ``option``.

    A file that did not exist is removed again; an existing one is left as it was.
    """
    path = Path(path)
    require(not path.is_dir(), f"{option}: {path} is a folder; give a file name")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise LoTUserError(f"{option}: cannot write {path}: {exc.strerror}") from exc
    if not existed:
        path.unlink()
    return path


class Tracker(Protocol):
    """Where a :class:`RunLogger` sends what it logs besides its own files (:class:`lot_rl.tracking.WandbTracker`)."""

    def log(self, step: int, scalars: dict[str, float]) -> None: ...
    def log_video(self, tag: str, path: Path, step: int) -> None: ...
    def summary(self, values: dict[str, Any]) -> None: ...
    def close(self, failed: bool = False) -> None: ...


class RunLogger:
    """Scalars to TensorBoard, ``metrics.jsonl`` and the ``tracker`` (W&B) at once: the same tags, the same steps.

    ``step`` is the run's step axis (``global_step`` in ``train``, the epoch in ``cv``/``lm``).
    """

    def __init__(self, run_dir: str | Path, hparams: dict[str, Any] | None = None, purge_step: int | None = None,
                 tracker: Tracker | None = None):
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        if purge_step is not None:
            drop_metrics_from(self.run_dir, purge_step)
        self._jsonl = open(self.run_dir / METRICS_NAME, "a", buffering=1)
        if hparams is not None and purge_step is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}
        for tag, value in clean.items():
            self.writer.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        if self.tracker is not None:
            self.tracker.log(step, clean)

    def log_video(self, tag: str, path: str | Path, step: int) -> None:
        """A video file of the run folder: an animated GIF in TensorBoard's image dashboard (what ``add_video``
        writes, without its moviepy dependency), the MP4 itself in W&B."""
        try:
            gif = gif_bytes(path)
        except RuntimeError as exc:  # a video TensorBoard cannot show is no reason to stop training
            warnings.warn(f"{exc}; TensorBoard will not show it", stacklevel=2)
        else:
            width, height = int.from_bytes(gif[6:8], "little"), int.from_bytes(gif[8:10], "little")
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
            self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        if self.tracker is not None:
            self.tracker.log_video(tag, Path(path), step)

    def summary(self, values: dict[str, Any]) -> None:
        """The run's final values (W&B's run summary; the files already hold them)."""
        if self.tracker is not None:
            self.tracker.summary(values)

    def close(self) -> None:
        """Close the files and finish the tracker's run (marked failed when closed while an exception propagates,
        as from a ``finally`` block)."""
        self.writer.close()
        self._jsonl.close()
        if self.tracker is not None:
            self.tracker.close(failed=sys.exc_info()[0] is not None and sys.exc_info()[0] is not KeyboardInterrupt)
            self.tracker = None


class QuietLogger:
    """The :class:`RunLogger` of the processes other than rank 0 in a distributed run: it writes nothing (rank 0
    alone writes the run folder)."""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_video(self, tag: str, path: str | Path, step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (skips a final partial line left by a crash)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise LoTUserError(f"{run_dir} has no {METRICS_NAME}: not a lot_rl run folder")
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def final_score(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
    """A run's score from its :func:`read_metrics` rows: the mean return of the last :data:`FINAL_EPISODES`
    finished games (of all of them if fewer; None before the first), and how many games that mean is over."""
    returns = [float(row[RETURN_TAG]) for row in rows if RETURN_TAG in row][-FINAL_EPISODES:]
    return (float(sum(returns) / len(returns)) if returns else None), len(returns)


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a reader (another process too) never sees half a file, and a
    file that exists is complete. The temporary name is this process's own, so two writers never share it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def drop_metrics_from(run_dir: str | Path, step: int) -> None:
    """Remove the rows logged at ``step`` or later, as TensorBoard's ``purge_step`` hides those events.

    A run stopped between two checkpoints (killed, or crashed) logged rows that its resumption logs
    again; a resumed run drops them first so that no episode or update is counted twice.
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if _row_step(line) is not None and _row_step(line) < step]
    write_atomically(path, "".join(kept))


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # a partial last line left by a crash


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "step") -> tqdm:
    """A tqdm bar (steps, rate, ETA); quiet when stderr is not a terminal unless LOT_RL_PROGRESS=1, and in the
    processes other than rank 0 of a torchrun launch."""
    disable = (not (sys.stderr.isatty() or os.environ.get("LOT_RL_PROGRESS") == "1")
               or os.environ.get("RANK", "0") != "0")
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=disable, smoothing=0.1)


class GracefulInterrupt:
    """Turn the first Ctrl-C into a request that the training loop honours at the next safe point.

    The loop checks :attr:`requested` after each update/epoch, saves a checkpoint and stops, so no work is
    lost and no half-updated state is saved. A second Ctrl-C interrupts at once (the last checkpoint, being
    written atomically, stays intact). Outside the main thread it does nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
