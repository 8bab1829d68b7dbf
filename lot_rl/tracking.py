"""Experiment tracking with Weights & Biases: ``--track`` on ``lot-rl train``, ``cv``, ``lm`` and ``sweep``.

A tracked run is one W&B run per run folder. W&B receives the run's whole configuration, every scalar that
:class:`lot_rl.runlog.RunLogger` writes to TensorBoard and ``metrics.jsonl``, under the same tags (CleanRL's
``charts/...``, ``losses/...``, plus ``lot/...``) against the same step axis (``global_step`` for ``train``,
``epoch`` for ``cv`` and ``lm``), the run's videos and a final summary. Scalars are logged directly, once, from
the logger (no ``sync_tensorboard``: W&B would then tail the TensorBoard files from a thread of its own, which
loses the last events when a run stops and logs every point a second time if one also logs directly).

The W&B run id is kept in the run folder (``wandb.json``): ``--resume`` continues the same W&B run. W&B cannot
take back what was logged, so after a *killed* run (not a Ctrl-C, which checkpoints where it stops) the rows
logged between the last checkpoint and the kill appear twice in W&B, once from each attempt; TensorBoard and
``metrics.jsonl`` drop them.

``wandb`` is an optional extra (``pip install -e ".[track]"``), imported only when ``--track`` is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lot_rl import config as cfg_lib
from lot_rl.errors import LoTUserError

INSTALL_COMMAND = 'pip install -e ".[track]"'
WANDB_MODES = ("online", "offline")
RUN_ID_NAME = "wandb.json"  # in the run folder: which W&B run this folder logs to


@dataclass
class TrackingOptions:
    """The tracking options of every training command (``train``, ``cv`` and ``lm`` inherit them)."""

    track: bool = cfg_lib.option(False, "log the run to Weights & Biases: options, every scalar, videos, final "
                                        "summary (pip install -e \".[track]\")")
    wandb_project: str = cfg_lib.option("lot_rl", "W&B project")
    wandb_entity: str | None = cfg_lib.option(None, "W&B entity, a user or team", default_text="your default entity")
    wandb_group: str | None = cfg_lib.option(None, "W&B group (lot-rl sweep: the sweep's name)", default_text="none")
    wandb_tags: list[str] = cfg_lib.option([], "W&B tags (lot-rl sweep adds the variant and seed<N>)")
    wandb_mode: str | None = cfg_lib.option(None, "W&B mode", choices=WANDB_MODES,
                                            default_text="W&B's own: the WANDB_MODE environment variable, else online")


TRACKING_FIELDS = tuple(f.name for f in fields(TrackingOptions))


def import_wandb() -> Any:
    """The ``wandb`` module, or one line naming the install command."""
    try:
        import wandb
    except ImportError:
        raise LoTUserError(f"--track needs the wandb package: {INSTALL_COMMAND}") from None
    return wandb


def validate_tracking(options: TrackingOptions) -> None:
    """Check the tracking options before anything is built (``--track`` without ``wandb``: one line)."""
    if options.wandb_mode is not None and options.wandb_mode not in WANDB_MODES:
        raise LoTUserError(f"--wandb-mode must be one of {', '.join(WANDB_MODES)}, got {options.wandb_mode!r}")
    if options.track:
        import_wandb()


def read_run_id(run_dir: str | os.PathLike) -> str | None:
    """The id of the W&B run a run folder logs to, or None if it was never tracked."""
    path = Path(run_dir) / RUN_ID_NAME
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["id"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise LoTUserError(f"{path} is not a W&B run record (lot_rl writes {{\"id\": ...}}); remove it to start "
                           f"a new W&B run") from None


class WandbTracker:
    """The W&B side of a :class:`lot_rl.runlog.RunLogger`: scalars, videos and summary of one W&B run."""

    def __init__(self, run: Any, step_metric: str):
        self.run, self.step_metric = run, step_metric
        # Every key is plotted against the run's own step axis, not W&B's internal row counter.
        run.define_metric(step_metric)
        run.define_metric("*", step_metric=step_metric)

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({**scalars, self.step_metric: int(step)})

    def log_video(self, tag: str, path: str | os.PathLike, step: int) -> None:
        """An MP4 file (H.264), shown by W&B's player; W&B copies the file into its run."""
        import wandb

        self.run.log({tag: wandb.Video(str(path), format="mp4"), self.step_metric: int(step)})

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (the run's summary in W&B's tables), beside the last value of each scalar."""
        self.run.summary.update(values)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def start_tracking(options: TrackingOptions, run_dir: str | os.PathLike, config: dict[str, Any],
                   step_metric: str = "global_step") -> WandbTracker | None:
    """Open (or, for a run folder tracked before, continue) the W&B run of ``run_dir``; None without ``--track``.

    The W&B run is named after the run folder; its id is stored in ``run_dir/wandb.json`` so that a resumed run
    continues it. W&B's own files go where W&B puts them (``./wandb``, or ``WANDB_DIR``).
    """
    if not options.track:
        return None
    wandb = import_wandb()
    run_dir = Path(run_dir)
    try:
        run = wandb.init(project=options.wandb_project, entity=options.wandb_entity, group=options.wandb_group,
                         tags=list(options.wandb_tags) or None, name=run_dir.name, id=read_run_id(run_dir),
                         resume="allow", config=config, mode=options.wandb_mode, allow_val_change=True)
    except wandb.errors.Error as exc:  # not logged in, no network, a bad entity...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoTUserError(f"--track: W&B could not start the run: {reason} (log in once with `wandb login`, or "
                           f"log without a network with --wandb-mode offline)") from None
    record = {"id": run.id, "project": options.wandb_project, "entity": options.wandb_entity,
              "url": getattr(run, "url", None)}
    (run_dir / RUN_ID_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return WandbTracker(run, step_metric)


def add_to_summary(options: TrackingOptions, run_dir: str | os.PathLike, values: dict[str, Any]) -> None:
    """Add ``values`` to the summary of the W&B run of a finished run folder (e.g. an evaluation made after
    training); nothing without ``--track``."""
    if not options.track:
        return
    if read_run_id(run_dir) is None:
        return  # the run was trained without --track: there is no W&B run to add to
    tracker = start_tracking(options, run_dir, config={})
    tracker.summary(values)
    tracker.close()
