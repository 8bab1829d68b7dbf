"""What ``lot-rl cv`` and ``lot-rl lm`` share: options, the LoT supervised step, and the epoch loop.

One teacher step (:meth:`LoTSupervisedTrainer.teacher_step`), as in the LoT reference's ``--loss`` variants::

    teacher loss = task CE + alpha * sum_i lambda_i kl(teacher, student_i.detach(), T)
                   (+ alpha * sum_i lambda_i kl(student_i.detach(), teacher, T) in the symmetric variants)
    student loss = student_loss(student_i, teacher.detach(), variant, labels, kl_weight)
                   (kl_weight: alpha in kl_ce / symmetric_kl_ce, 1 in kl / symmetric_kl)

both on the same batch, one backward (the two graphs do not touch: each side's target is detached), then
each network steps its own optimizer. Then N-1 student-only steps (:meth:`student_step`) on further
training batches, imitating the teacher's predictions, computed without autograd by the teacher in train
mode as in the reference (``--teacher-target-mode eval``: in eval mode).

Every KL comes from :mod:`lot_rl.regularizer`. The tasks (:mod:`.cv`, :mod:`.lm`) only say where batches
come from and how to evaluate; :func:`fit` runs the epochs, logging, checkpoints, resume and the best-epoch
choice for both.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lot_rl import config as cfg_lib
from lot_rl import distributed
from lot_rl.checkpoint import (CHECKPOINT_NAME, load_checkpoint, restore_optimizer, rng_state, save_checkpoint,
                               set_rng_state)
from lot_rl.errors import LoTUserError, require
from lot_rl.regularizer import (STUDENT_LOSSES, Students, reference_kl_weight, student_loss, validate_lot_options,
                                validate_student_weights)
from lot_rl.runlog import GracefulInterrupt, QuietLogger, RunLogger, make_run_dir, progress_bar
from lot_rl.runtime import autocast_for, keep_freed_memory
from lot_rl.tracking import TRACKING_FIELDS, TrackingOptions, start_tracking, validate_tracking

BEST_NAME = "best.pt"
SUMMARY_NAME = "summary.json"

TEACHER_TARGET_MODES = ("train", "eval")
STUDENT_LR_SCHEDULES = ("cosine", "plateau")

# forward(name, model, inputs) -> logits; name is "teacher" or "student<i>" (lets a task keep per-model state)
Forward = Callable[[str, nn.Module, torch.Tensor], torch.Tensor]


def plain_forward(name: str, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return model(inputs)


# ----------------------------------------------------------------------------------------------------
# Options shared by both commands


@dataclass
class CommonArgs(TrackingOptions):  # --track, --wandb-project, ... (lot_rl.tracking) come first
    # --- experiment
    exp_name: str = cfg_lib.option("lot", "name of the experiment (part of the run name)")
    seed: int = cfg_lib.option(1, "seed of the experiment")
    device: str = cfg_lib.option("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:N")
    run_dir: str = cfg_lib.option("runs", "folder under which the run folder is created")
    run_name: str | None = cfg_lib.option(None, "run folder name (default: <dataset>__<exp>__<seed>__<time>)")
    data_dir: str = cfg_lib.option("data", "folder holding the data set files")
    threads: int = cfg_lib.option(0, "torch CPU threads (0: torch's default; 1 is fastest for the small default "
                                     "models on a busy machine)")
    precision: str = cfg_lib.option("fp32", "fp32, or bf16 autocast (fast on GPUs and AVX-512 CPUs; slow on "
                                    "AVX2-only CPUs)",
                                    choices=("fp32", "bf16"))
    # --- LoT
    alpha: float = cfg_lib.option(0.5, "weight of the teacher's teachability penalty (0: off)")
    num_students: int = cfg_lib.option(1, "number of students K (0 with --alpha 0: plain training)")
    student_weights: list[float] = cfg_lib.option([], "lambda_i per student (default: equal, summing to 1)")
    student_steps_ratio: int = cfg_lib.option(2, "N: student steps per teacher step (1 joint + N-1 student-only)")
    temperature: float = cfg_lib.option(1.5, "softmax temperature T of the KL terms")
    student_loss: str = cfg_lib.option("kl_ce", "student loss variant", choices=STUDENT_LOSSES)
    student_kl_weight: float | None = cfg_lib.option(
        None, "weight of the student's KL term (default as the reference: alpha in kl_ce and symmetric_kl_ce, "
              "1 in kl and symmetric_kl)")
    student_ce_weight: float = cfg_lib.option(1.0, "weight of the student's CE term in *_ce variants")
    teacher_target_mode: str = cfg_lib.option(
        "train", "the teacher's mode when it gives the targets of the student-only steps: train (the reference: "
                 "dropout on, BatchNorm batch statistics, its running statistics updated) or eval (no dropout, "
                 "running statistics; the teacher left untouched)", choices=TEACHER_TARGET_MODES)
    student_lr_schedule: str = cfg_lib.option(
        "cosine", "cosine: the students follow the teacher's schedule; plateau: the reference's LSTM students "
                  "(lstm_ptb.py), a constant learning rate times --student-lr-decay after each epoch where the "
                  "models' summed validation perplexity and the student's own validation loss both got worse",
        choices=STUDENT_LR_SCHEDULES)
    student_lr_decay: float = cfg_lib.option(0.25, "factor of a plateau decay (--student-lr-schedule plateau)")


LOT_FIELDS = ("alpha", "num_students", "student_weights", "student_steps_ratio", "temperature", "student_loss",
              "student_kl_weight", "student_ce_weight", "teacher_target_mode", "student_lr_schedule",
              "student_lr_decay")
EXPERIMENT_FIELDS = ("exp_name", "seed", "device", "run_dir", "run_name", "data_dir", "threads", "precision",
                     *TRACKING_FIELDS)


def validate_common(args: CommonArgs) -> None:
    validate_lot_options(args.alpha, args.num_students, args.temperature, args.student_steps_ratio)
    validate_student_weights(args.student_weights, args.num_students)
    require(args.student_loss in STUDENT_LOSSES,
            f"unknown --student-loss {args.student_loss!r}; choose one of {', '.join(STUDENT_LOSSES)}")
    require(args.num_students == 0 or args.student_steps_ratio >= 1,
            f"--student-steps-ratio must be >= 1 with students (the joint step is one), got "
            f"{args.student_steps_ratio}")
    require(args.student_kl_weight is None or args.student_kl_weight >= 0,
            f"--student-kl-weight must be >= 0, got {args.student_kl_weight}")
    require(args.threads >= 0, f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    require(args.student_ce_weight >= 0, f"--student-ce-weight must be >= 0, got {args.student_ce_weight}")
    require(args.student_lr_schedule in STUDENT_LR_SCHEDULES,
            f"unknown --student-lr-schedule {args.student_lr_schedule!r}; choose one of "
            f"{', '.join(STUDENT_LR_SCHEDULES)}")
    require(0 < args.student_lr_decay <= 1, f"--student-lr-decay must be in (0, 1], got {args.student_lr_decay}")
    require(args.teacher_target_mode in TEACHER_TARGET_MODES,
            f"unknown --teacher-target-mode {args.teacher_target_mode!r}; choose one of "
            f"{', '.join(TEACHER_TARGET_MODES)}")
    validate_tracking(args)


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed Python, NumPy and torch; set torch's CPU thread count when ``threads`` > 0."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_factor(total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> Callable[[int], float]:
    """LR multiplier per teacher step: linear warm-up, then cosine from 1 down to ``final_fraction``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# ----------------------------------------------------------------------------------------------------
# The LoT supervised step


def teacher_task_loss(logits: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None,
                      ignore_index: int = -100) -> torch.Tensor:
    """The teacher's cross-entropy, optionally weighted per sample (reduced after weighting).

    ``logits`` ``(..., classes)``, ``labels`` ``(...)``. ``sample_weights`` has one weight per sample, i.e. the
    shape of ``labels`` or of its first dimension (a weight per sequence in language modeling). The result
    is ``mean(w * CE)`` over the labelled positions, so weights of 1 give the plain mean CE; a reweighter
    that wants a weighted average should hand in weights that average to 1.
    """
    flat_labels = labels.reshape(-1)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), flat_labels, reduction="none",
                         ignore_index=ignore_index)
    valid = flat_labels != ignore_index
    if sample_weights is not None:
        w = sample_weights.to(ce.dtype)
        if w.shape != labels.shape:
            require(w.shape == labels.shape[:1], f"sample weights of shape {tuple(w.shape)} do not match labels "
                                                 f"of shape {tuple(labels.shape)}")
            w = w.reshape(-1, *([1] * (labels.dim() - 1))).expand_as(labels)
        ce = ce * w.reshape(-1)
    return ce[valid].sum() / valid.sum().clamp(min=1)


@dataclass
class LoTSettings:
    """The LoT options the step needs (see :class:`CommonArgs` for their meaning)."""

    alpha: float = 0.5
    temperature: float = 1.5
    student_loss: str = "kl_ce"
    student_kl_weight: float | None = None
    student_ce_weight: float = 1.0
    teacher_max_grad_norm: float | None = None
    teacher_target_mode: str = "train"
    student_lr_schedule: str = "cosine"
    student_lr_decay: float = 0.25

    @property
    def kl_weight(self) -> float:
        """The student's KL weight: ``student_kl_weight``, or the reference's (alpha beside CE, else 1)."""
        if self.student_kl_weight is not None:
            return self.student_kl_weight
        return reference_kl_weight(self.student_loss, self.alpha)

    @property
    def symmetric(self) -> bool:
        return self.student_loss.startswith("symmetric")


def _correct(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> tuple[float, int]:
    valid = labels != ignore_index
    return float(((logits.argmax(-1) == labels) & valid).sum()), int(valid.sum())


class LoTSupervisedTrainer:
    """A teacher with its optimizer and LR schedule, the :class:`~lot_rl.regularizer.Students`, and the steps.

    ``autocast`` is a factory of autocast contexts (see :func:`autocast_for`).
    """

    def __init__(self, teacher: nn.Module, optimizer: torch.optim.Optimizer, scheduler, students: Students,
                 settings: LoTSettings,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.teacher, self.optimizer, self.scheduler = teacher, optimizer, scheduler
        self.students, self.settings, self.autocast = students, settings, autocast
        # --student-lr-schedule plateau: each model's best validation loss, each student's learning-rate factor
        self.best_val_losses: dict[str, float] = {}
        self.student_lr_factors = [1.0] * len(students)

    def teacher_step(self, inputs: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None,
                     forward: Forward = plain_forward) -> tuple[dict[str, float], torch.Tensor]:
        """One teacher step with the students' joint step on the same batch.

        Returns per-batch statistics (means, plus ``count`` labels and ``*/correct``) and the teacher's
        detached logits (for a reweighter that looks at them).
        """
        s = self.settings
        self.teacher.train()
        self.students.train()
        with self.autocast():
            teacher_logits = forward("teacher", self.teacher, inputs)
            student_logits = [forward(f"student{i}", net, inputs) for i, net in enumerate(self.students.networks)]
        task_loss = teacher_task_loss(teacher_logits, labels, sample_weights)
        loss = task_loss
        stats: dict[str, float] = {}
        if len(self.students):
            penalty = self.students.penalty(teacher_logits, student_logits, symmetric=s.symmetric)
            if s.alpha > 0:
                loss = loss + s.alpha * penalty
            stats["lot/teacher_kl"] = float(penalty.detach())
            # Each student's own loss (its target, the teacher, is detached inside student_loss).
            student_terms = [student_loss(sl, teacher_logits, s.temperature, s.student_loss, labels,
                                          ce_weight=s.student_ce_weight, kl_weight=s.kl_weight)
                             for sl in student_logits]
            loss = loss + sum(student_terms)
            stats["lot/student_loss"] = float(sum(t.detach() for t in student_terms)) / len(student_terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.students.zero_grad()
        loss.backward()
        distributed.average_gradients(self.teacher)  # torchrun: the mean over processes, before clipping
        distributed.average_gradients(*self.students.networks)
        if s.teacher_max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.teacher.parameters(), s.teacher_max_grad_norm)
        self.optimizer.step()
        if len(self.students):
            self.students.step()
        with torch.no_grad():
            correct, count = _correct(teacher_logits, labels)
            stats.update({"teacher/loss": float(F.cross_entropy(teacher_logits.detach().float().reshape(
                -1, teacher_logits.shape[-1]), labels.reshape(-1))), "teacher/correct": correct, "count": count})
            for i, sl in enumerate(student_logits):
                stats[f"student{i}/loss"] = float(F.cross_entropy(sl.detach().float().reshape(-1, sl.shape[-1]),
                                                                  labels.reshape(-1)))
                stats[f"student{i}/correct"] = _correct(sl, labels)[0]
        return stats, teacher_logits.detach()

    def student_step(self, inputs: torch.Tensor, labels: torch.Tensor, forward: Forward = plain_forward) -> float:
        """One student-only step: every student imitates the teacher's predictions on ``inputs``.

        The teacher runs without autograd (its weights never change here) in ``teacher_target_mode``: in
        train mode, as the reference, its dropout is on and its BatchNorm layers use and update batch
        statistics; in eval mode it is left untouched. Returns the mean student loss.
        """
        s = self.settings
        self.teacher.train(s.teacher_target_mode == "train")
        with torch.no_grad(), self.autocast():
            target = forward("teacher", self.teacher, inputs)
        self.teacher.train()
        self.students.train()
        self.students.zero_grad()
        with self.autocast():
            logits = [forward(f"student{i}", net, inputs) for i, net in enumerate(self.students.networks)]
        loss = self.students.imitation_loss(logits, target, s.student_loss, labels,
                                            ce_weight=s.student_ce_weight, kl_weight=s.kl_weight)
        loss.backward()
        distributed.average_gradients(*self.students.networks)
        self.students.step()
        return float(loss.detach()) / len(self.students)

    def scheduler_step(self) -> None:
        self.scheduler.step()
        self.students.scheduler_step()

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """After an epoch's validation (``metrics`` holds ``<model>/val_loss``): with the plateau schedule,
        multiply a student's learning rate by ``student_lr_decay`` if the summed validation perplexity of all
        the models is worse than the sum of their bests and the student's own validation loss is worse than
        its best (the reference's lstm_ptb.py); then update the bests."""
        if self.settings.student_lr_schedule != "plateau":
            return
        losses = {name: metrics[f"{name}/val_loss"] for name in self.models()}
        best = self.best_val_losses
        if best:
            perplexity = lambda loss: math.exp(min(loss, 50.0))
            worse = sum(map(perplexity, best.values())) < sum(map(perplexity, losses.values()))
            for i, opt in enumerate(self.students.optimizers):
                if worse and best[f"student{i}"] < losses[f"student{i}"]:
                    self.student_lr_factors[i] *= self.settings.student_lr_decay
                    for group in opt.param_groups:
                        group["lr"] *= self.settings.student_lr_decay
        self.best_val_losses = {name: min(loss, best.get(name, math.inf)) for name, loss in losses.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "students": self.students.state_dict(),
                "best_val_losses": dict(self.best_val_losses), "student_lr_factors": list(self.student_lr_factors)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the optimizers keep their hyperparameters (the options of
        the resumed run, see :func:`lot_rl.checkpoint.restore_optimizer`)."""
        try:
            self.teacher.load_state_dict(state["teacher"])
            restore_optimizer(self.optimizer, state["optimizer"], self.scheduler, state["scheduler"])
            self.students.load_state_dict(state["students"])
        except (RuntimeError, ValueError) as exc:  # another architecture: torch's many-line message
            raise LoTUserError(f"the networks of these options do not fit the saved networks (a model option "
                               f"changed on resume?): {str(exc).splitlines()[0]}") from exc
        self.best_val_losses = dict(state.get("best_val_losses", {}))
        self.student_lr_factors = list(state.get("student_lr_factors", self.student_lr_factors))
        if self.settings.student_lr_schedule == "plateau":  # the decays so far, on the configured rate
            for factor, opt in zip(self.student_lr_factors, self.students.optimizers):
                for group in opt.param_groups:
                    group["lr"] *= factor

    def models(self) -> dict[str, nn.Module]:
        """``{"teacher": ..., "student0": ..., ...}``."""
        return {"teacher": self.teacher, **{f"student{i}": n for i, n in enumerate(self.students.networks)}}


def make_trainer(args: CommonArgs, make_model: Callable[[str], nn.Module],
                 make_optimizer: Callable[[Any], torch.optim.Optimizer], total_steps: int, device: torch.device,
                 warmup_steps: int = 0, teacher_max_grad_norm: float | None = None,
                 student_max_grad_norm: float | None = None) -> LoTSupervisedTrainer:
    """Teacher, students (``make_model("teacher" | "student")``), optimizers and cosine schedules."""
    factor = cosine_factor(total_steps, warmup_steps)
    teacher = make_model("teacher").to(device)
    optimizer = make_optimizer(teacher.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    cosine = args.student_lr_schedule == "cosine"  # plateau: constant, decayed by end_epoch
    students = Students([make_model("student").to(device) for _ in range(args.num_students)], make_optimizer,
                        (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)) if cosine else None,
                        weights=args.student_weights or None, temperature=args.temperature,
                        max_grad_norm=student_max_grad_norm)
    settings = LoTSettings(args.alpha, args.temperature, args.student_loss, args.student_kl_weight,
                           args.student_ce_weight, teacher_max_grad_norm, args.teacher_target_mode,
                           args.student_lr_schedule, args.student_lr_decay)
    return LoTSupervisedTrainer(teacher, optimizer, scheduler, students, settings,
                                autocast_for(device, args.precision))


# ----------------------------------------------------------------------------------------------------
# The epoch loop shared by both commands


@dataclass
class Batch:
    """One training batch: ``inputs``, ``labels`` and how to run a model on it (per-model state for LMs)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    forward: Forward = plain_forward
    indices: torch.Tensor | None = None  # positions in the training set (for a reweighter)


class Task(Protocol):
    """What :func:`fit` needs from a command (see :mod:`.cv` and :mod:`.lm`)."""

    kind: str  # checkpoint kind
    selection: str  # the validation metric that chooses the best epoch, e.g. "teacher/val_acc"
    higher_is_better: bool
    steps_per_epoch: int

    def start_epoch(self, epoch: int) -> None: ...
    def teacher_batch(self) -> Batch: ...
    def student_batch(self) -> Batch: ...
    def evaluate(self, trainer: LoTSupervisedTrainer, split: str) -> dict[str, float]: ...
    def train_metrics(self, means: dict[str, float]) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SampleWeighting(Protocol):
    """Optional per-sample weights of the teacher's task loss: where sample reweighting plugs into :func:`fit`.

    (:class:`lot_rl.supervised.reweight.FitReweighting` is one; a ``reweight.Reweighter`` is what it wraps.)

    ``weights(indices, labels, inputs=...)`` is called before each teacher step with the batch's positions
    in the training set, its labels and its (augmented, normalized) inputs, and returns one weight per
    sample (or None). Optional methods: ``observe(indices, teacher_logits, labels)`` after each step,
    ``epoch_metrics() -> dict`` (logged with the epoch's train metrics), ``state_dict``/``load_state_dict``
    (checkpointed with the run).
    """

    def weights(self, indices: torch.Tensor | None, labels: torch.Tensor,
                inputs: torch.Tensor | None = None) -> torch.Tensor | None: ...


def prepare_run(args: CommonArgs, kind: str, dataset: str, resume: str | Path | None) -> tuple[Path, dict | None]:
    """The run folder (new, or the resumed run's) and the resumed checkpoint (or None)."""
    if resume is not None:
        checkpoint = load_checkpoint(resume, kind=kind)
        cfg_lib.require_unchanged_on_resume(args, checkpoint["config"])
        distributed.require_same_world_size(checkpoint)
        return Path(checkpoint["path"]).parent, checkpoint
    run_name = args.run_name or f"{dataset}__{args.exp_name}__{args.seed}__{int(time.time())}"
    return distributed.on_main(lambda: make_run_dir(args.run_dir, run_name)), None  # rank 0's, for all


def fit(task: Task, trainer: LoTSupervisedTrainer, args: CommonArgs, run_dir: Path, epochs: int,
        checkpoint: dict | None = None, max_steps: int | None = None,
        sample_weighting: SampleWeighting | None = None,
        extra_state: dict[str, Any] | None = None, desc: str = "") -> dict[str, Any]:
    """Train for ``epochs`` epochs of ``task.steps_per_epoch`` teacher steps; return the final summary.

    Per epoch: train metrics, validation metrics, a checkpoint (``checkpoint.pt``), and ``best.pt`` when the
    teacher's validation metric improves. At the end the best epoch's models are evaluated on the test
    split. ``max_steps`` stops this call after that many teacher steps with a checkpoint (resuming continues
    the same run exactly); so does a first Ctrl-C.

    Under torchrun every process trains on its share of each batch (the task shards them), gradients are
    averaged, metrics summed over the processes, and rank 0 alone writes the run folder and evaluates the test
    split at the end.
    """
    keep_freed_memory()
    ratio = args.student_steps_ratio if len(trainer.students) else 0
    epoch, step_in_epoch, global_step, sums = 1, 0, 0, {}
    best = {"epoch": 0, "value": None, "metrics": {}}
    elapsed = 0.0
    distributed.broadcast_parameters(*trainer.models().values())  # every process starts from rank 0's models
    if checkpoint is not None:
        own = distributed.own_state(checkpoint)  # this process's data position, RNGs, BatchNorm statistics
        trainer.load_state_dict(checkpoint["trainer"])
        for name, model in trainer.models().items():
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), own.get("buffers", {}).get(name, [])):
                    buffer.copy_(saved)
        task.load_state_dict(own["task"])
        if checkpoint.get("reweighter") is not None and hasattr(sample_weighting, "load_state_dict"):
            sample_weighting.load_state_dict(checkpoint["reweighter"])
        epoch, step_in_epoch, global_step = checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["global_step"]
        sums, best, elapsed = own["sums"], checkpoint["best"], checkpoint["elapsed"]
        set_rng_state(own["rng"])
    main = distributed.is_main_process()  # rank 0 writes the run folder

    def write_checkpoint() -> None:
        # Each process's own state; its BatchNorm statistics too, which the processes average only at epoch ends
        buffers = {name: [b.detach().cpu() for b in model.buffers()] for name, model in trainer.models().items()}
        ranks = distributed.gather_rank_states({"task": task.state_dict(), "sums": sums, "rng": rng_state(),
                                                "buffers": buffers})
        if main:
            save_checkpoint(run_dir / CHECKPOINT_NAME, task.kind, {
                "config": cfg_lib.to_dict(args), "trainer": trainer.state_dict(), **ranks,
                "reweighter": sample_weighting.state_dict() if hasattr(sample_weighting, "state_dict") else None,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "best": best,
                "elapsed": elapsed + time.time() - start, **(extra_state or {})})
        distributed.barrier()  # no process goes on before the checkpoint is on disk

    if main:
        cfg_lib.save_config(args, run_dir / "config.yaml")
    logger = RunLogger(run_dir, hparams=cfg_lib.to_dict(args), purge_step=epoch if checkpoint else None,
                       tracker=start_tracking(args, run_dir, cfg_lib.to_dict(args), step_metric="epoch")) \
        if main else QuietLogger()
    bar = progress_bar(epochs * task.steps_per_epoch, initial=global_step, desc=desc or task.kind)
    interrupt = GracefulInterrupt()
    start, steps_this_call, stopped = time.time(), 0, False
    try:
        while epoch <= epochs:
            if step_in_epoch == 0:
                task.start_epoch(epoch)
                sums = {}
            epoch_start = time.time()
            while step_in_epoch < task.steps_per_epoch:
                batch = task.teacher_batch()
                weights = None
                if sample_weighting is not None:
                    weights = sample_weighting.weights(batch.indices, batch.labels, inputs=batch.inputs)
                stats, teacher_logits = trainer.teacher_step(batch.inputs, batch.labels, weights, batch.forward)
                if sample_weighting is not None and hasattr(sample_weighting, "observe"):
                    sample_weighting.observe(batch.indices, teacher_logits, batch.labels)
                imitation = [trainer.student_step(b.inputs, b.labels, b.forward)
                             for b in (task.student_batch() for _ in range(max(ratio - 1, 0)))]
                if imitation:
                    stats["lot/student_only_loss"] = float(np.mean(imitation))
                trainer.scheduler_step()
                count = stats.pop("count")
                for key, value in stats.items():
                    weight = 1 if key.endswith("/correct") else count
                    sums[key] = sums.get(key, 0.0) + value * weight
                sums["count"] = sums.get("count", 0) + count
                sums["steps"] = sums.get("steps", 0) + 1
                step_in_epoch += 1
                global_step += 1
                steps_this_call += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{stats['teacher/loss']:.3f}")
                if (distributed.any_rank(interrupt.requested)  # every process stops at the same step
                        or (max_steps is not None and steps_this_call >= max_steps)):
                    stopped = True
                    break
            if stopped and step_in_epoch < task.steps_per_epoch:
                write_checkpoint()
                break
            # ---- end of epoch: train means (over all processes), validation, best, checkpoint
            distributed.average_buffers(*trainer.models().values())  # BatchNorm statistics: one model
            scalars = task.train_metrics(_epoch_means(distributed.sum_across_ranks(sums)))
            if sample_weighting is not None and hasattr(sample_weighting, "epoch_metrics"):
                for key, value in sample_weighting.epoch_metrics().items():
                    scalars.setdefault(key, value)  # a task wrapper may have logged them already
            scalars.update(task.evaluate(trainer, "val"))
            scalars = distributed.broadcast_from_main(scalars)  # one decision (best, plateau) on every process
            trainer.end_epoch(scalars)
            scalars["charts/learning_rate"] = trainer.optimizer.param_groups[0]["lr"]
            if len(trainer.students):
                scalars["charts/student_learning_rate"] = trainer.students.optimizers[0].param_groups[0]["lr"]
            scalars["charts/epoch_seconds"] = time.time() - epoch_start
            scalars["charts/teacher_steps"] = global_step
            logger.log(epoch, scalars)
            value = scalars[task.selection]
            if best["value"] is None or (value > best["value"] if task.higher_is_better else value < best["value"]):
                best = {"epoch": epoch, "value": value, "metrics": scalars}
                if main:
                    save_checkpoint(run_dir / BEST_NAME, task.kind + "-best",
                                    {"config": cfg_lib.to_dict(args), "epoch": epoch, "metrics": scalars,
                                     "models": {k: m.state_dict() for k, m in trainer.models().items()},
                                     **(extra_state or {})})
            # Epoch lines on stderr: stdout carries only the final JSON summary.
            if main:
                bar.write(f"epoch {epoch}: " + ", ".join(f"{k.replace('teacher/', '')} {v:.4g}"
                                                         for k, v in scalars.items() if k.startswith("teacher/")),
                          file=sys.stderr)
            epoch, step_in_epoch = epoch + 1, 0
            write_checkpoint()
            if stopped:
                break
    except RuntimeError as exc:
        if distributed.is_peer_error(exc):  # another process died: say so in one line (checkpoint intact)
            raise distributed.peer_failure(exc, run_dir) from exc
        raise
    finally:
        interrupt.restore()
        bar.close()
    if interrupt.requested:
        logger.close()
        print(f"interrupted: saved; continue with lot-rl {task.kind} --resume {run_dir}", file=sys.stderr)
        raise KeyboardInterrupt
    if epoch <= epochs:  # stopped by max_steps
        logger.close()
        return {"finished": False, "run_dir": str(run_dir), "epoch": epoch, "teacher_steps": global_step}
    if not main:  # rank 0 evaluates the best models on the test split and writes the summary
        return {"finished": True, "run_dir": str(run_dir), "teacher_steps": global_step}
    summary = final_summary(task, trainer, args, run_dir, best, global_step, elapsed + time.time() - start)
    logger.log(epochs, {k: v for k, v in summary["test"].items()})
    logger.summary({"best_epoch": summary["best_epoch"], **summary["val"], **summary["test"]})
    logger.close()
    return summary


def _epoch_means(sums: dict[str, float]) -> dict[str, float]:
    count = max(sums.get("count", 0), 1)
    means = {}
    for key, value in sums.items():
        if key in ("count", "steps"):
            continue
        if key.endswith("/correct"):
            means[key.replace("/correct", "/train_acc")] = value / count
        elif key.startswith("lot/"):
            means[key] = value / count
        else:
            means[key.replace("/loss", "/train_loss")] = value / count
    return means


def final_summary(task: Task, trainer: LoTSupervisedTrainer, args: CommonArgs, run_dir: Path, best: dict,
                  teacher_steps: int, wall_seconds: float) -> dict[str, Any]:
    """Load the best epoch's models, evaluate them on the test split, write ``summary.json``."""
    saved = load_checkpoint(run_dir / BEST_NAME, kind=task.kind + "-best")
    for name, model in trainer.models().items():
        model.load_state_dict(saved["models"][name])
    test = task.evaluate(trainer, "test")
    summary = {"finished": True, "run_dir": str(run_dir), "best_epoch": best["epoch"],
               "selection": task.selection, "best_value": best["value"],
               "val": {k: v for k, v in best["metrics"].items() if "/val_" in k},
               "test": test, "teacher_steps": teacher_steps,
               "student_steps": teacher_steps * (args.student_steps_ratio if args.num_students else 0),
               "wall_seconds": wall_seconds, "config": cfg_lib.to_dict(args)}
    (run_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------------------------------
# Command-line helpers


def print_summary(summary: dict[str, Any]) -> None:
    """The run summary (without the options) as JSON on stdout."""
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
