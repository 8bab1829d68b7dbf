"""``lot-rl cv``: image classification with LoT, pre-activation ResNet teacher and students.

Examples::

    lot-rl cv                                            # LoT on the built-in digits, a few minutes on CPU
    lot-rl cv --alpha 0 --num-students 0                 # the same, teacher only
    lot-rl cv --preset cifar10 --data-dir ~/data         # the reference's CIFAR-10 run (lr 1.0; cifar10-lr0.1)
    lot-rl cv --preset cifar100 --label-noise 0.4        # noisy labels
    lot-rl cv --label-noise 0.4 --reweight deep          # ... with per-sample weights learned on a clean meta set
    lot-rl cv --resume runs/<run-name>                   # continue a run

From Python, :func:`train_cv` takes the options and an optional sample weighting (per-sample weights of the
teacher's task loss, see :class:`lot_rl.supervised.training.SampleWeighting`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lot_rl import config as cfg_lib
from lot_rl import distributed
from lot_rl.errors import require
from lot_rl.supervised import data as data_lib
from lot_rl.supervised.models import PreResNet
from lot_rl.supervised.reweight import REWEIGHT_METHODS, validate_reweight_options
from lot_rl.supervised.training import (EXPERIMENT_FIELDS, LOT_FIELDS, Batch, CommonArgs, LoTSupervisedTrainer,
                                        SampleWeighting, fit, make_trainer, prepare_run,
                                        print_summary, seed_everything, validate_common)

CHECKPOINT_KIND = "cv"


@dataclass
class CVArgs(CommonArgs):
    # --- data
    dataset: str = cfg_lib.option("digits", "digits (built in, no download), cifar10 or cifar100 (python "
                                  "pickle folders in --data-dir)", choices=data_lib.IMAGE_DATASETS)
    val_size: int = cfg_lib.option(200, "training images held out for validation (chooses the best epoch)")
    label_noise: float = cfg_lib.option(0.0, "fraction of training labels flipped to another class")
    noise_type: str = cfg_lib.option("symmetric", "symmetric: to any other class uniformly; pair: y -> y+1 mod C",
                                     choices=data_lib.NOISE_TYPES)
    crop_padding: int | None = cfg_lib.option(None, "random-crop padding in pixels (default: 4 for CIFAR, 2 "
                                              "for digits; 0: no crop)")
    flip: bool | None = cfg_lib.option(None, "random horizontal flips (default: on for CIFAR, off for digits)")
    # --- model
    depth: int = cfg_lib.option(8, "teacher PreResNet depth, 6n+2 (8, 20, 32, 56, 110)")
    student_depth: int | None = cfg_lib.option(None, "student PreResNet depth (default: --depth)")
    width: int = cfg_lib.option(16, "channels of the first stage (16 in the paper; stages use 1x, 2x, 4x)")
    # --- optimization
    epochs: int = cfg_lib.option(10, "training epochs (of teacher steps over the training split)")
    batch_size: int = cfg_lib.option(64, "minibatch size (per process under torchrun / --nproc)")
    eval_batch_size: int = cfg_lib.option(1000, "batch size of evaluation")
    learning_rate: float = cfg_lib.option(0.1, "SGD learning rate of teacher and students, cosine-annealed to 0")
    momentum: float = cfg_lib.option(0.9, "SGD (Nesterov) momentum")
    weight_decay: float = cfg_lib.option(1e-4, "SGD weight decay")
    # --- sample reweighting of the teacher's loss (lot_rl.supervised.reweight)
    reweight: str = cfg_lib.option("none", "per-sample weights of the teacher's CE learned on a clean meta set: "
                                   "none, l2rw, mwnet, deep", choices=REWEIGHT_METHODS)
    meta_size: int = cfg_lib.option(100, "clean training images held out as the meta set (with --reweight)")
    meta_batch_size: int = cfg_lib.option(100, "meta-set images per meta step")
    meta_interval: int = cfg_lib.option(1, "teacher steps per meta step")
    meta_lr: float = cfg_lib.option(1e-3, "learning rate of the weighting network (mwnet, deep)")


# The reference's CIFAR run (run/run_image_classification_LoT.sh): PreResNet-20 teacher and student, SGD Nesterov
# at its learning rate 1.0, 180 epochs; what differs in structure (epochs, data order, validation) is in
# docs/supervised.md.
_REFERENCE_CIFAR = dict(depth=20, epochs=180, batch_size=256, learning_rate=1.0, momentum=0.9, weight_decay=1e-4,
                        val_size=5000, alpha=0.5, student_steps_ratio=2, temperature=1.5, student_loss="kl_ce",
                        num_students=1)
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(dataset="cifar10", **_REFERENCE_CIFAR),
    "cifar100": dict(dataset="cifar100", **_REFERENCE_CIFAR),
    # The same with the learning rate ResNets usually take on CIFAR at batch 256 (He et al.), a tenth of the
    # reference's: for runs that should not depend on its unusually large 1.0.
    "cifar10-lr0.1": dict(dataset="cifar10", **{**_REFERENCE_CIFAR, "learning_rate": 0.1}),
    "cifar100-lr0.1": dict(dataset="cifar100", **{**_REFERENCE_CIFAR, "learning_rate": 0.1}),
    # The default: small and fast on the built-in digits.
    "digits": dict(dataset="digits"),
}
PRESETS["cifar"] = PRESETS["cifar10"]

OPTION_GROUPS = {**{n: "experiment" for n in EXPERIMENT_FIELDS}, **{n: "LoT" for n in LOT_FIELDS},
                 **{n: "data" for n in ("dataset", "val_size", "label_noise", "noise_type", "crop_padding", "flip")},
                 **{n: "sample reweighting" for n in ("reweight", "meta_size", "meta_batch_size", "meta_interval",
                                                      "meta_lr")},
                 **{n: "model" for n in ("depth", "student_depth", "width")},
                 **{n: "optimization" for n in ("epochs", "batch_size", "eval_batch_size", "learning_rate",
                                                 "momentum", "weight_decay")}}


def validate_args(args: CVArgs) -> None:
    validate_common(args)
    require(args.dataset in data_lib.IMAGE_DATASETS,
            f"unknown --dataset {args.dataset!r}; choose one of {', '.join(data_lib.IMAGE_DATASETS)}")
    for flag, depth in (("--depth", args.depth), ("--student-depth", args.student_depth)):
        require(depth is None or (depth >= 8 and (depth - 2) % 6 == 0),
                f"{flag} {depth} is not of the form 6n+2 with n >= 1 (e.g. 20, 32, 56, 110)")
    require(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
    require(args.learning_rate > 0, f"--learning-rate must be > 0, got {args.learning_rate}")
    require(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    require(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    require(args.val_size >= 1, f"--val-size must be >= 1 (the validation split chooses the best epoch), "
                                f"got {args.val_size}")
    require(args.crop_padding is None or args.crop_padding >= 0,
            f"--crop-padding must be >= 0, got {args.crop_padding}")
    require(args.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    data_lib.validate_label_noise(args.label_noise, args.noise_type)
    validate_reweight_options(args.reweight, args.meta_size, args.meta_interval)
    require(args.reweight == "none" or distributed.world_size() == 1,
            f"--reweight {args.reweight} runs in one process: leave out torchrun / --nproc, or --reweight none")


class CVTask:
    """Where the image batches come from and how models are evaluated (see :class:`training.Task`).

    The whole data set lives on the training device as uint8; each batch is gathered, augmented and
    normalized there. The teacher reads one shuffled pass per epoch; the students' extra steps read their
    own independent shuffled stream.
    """

    kind = CHECKPOINT_KIND
    selection = "teacher/val_acc"
    higher_is_better = True

    def __init__(self, images: data_lib.ImageData, args: CVArgs, device: torch.device,
                 autocast=None, noisy_mask: torch.Tensor | None = None):
        """``images``' training labels are learned as they are: label noise is put into them beforehand
        (:func:`lot_rl.supervised.data.hold_out_meta_set`, which also gives ``noisy_mask``)."""
        self.data, self.device, self.autocast = images, device, autocast
        self.reweighting = None  # the --reweight hook for fit(), set by build()
        self.eval_batch_size = args.eval_batch_size
        is_digits = images.name == "digits"
        self.pad = args.crop_padding if args.crop_padding is not None else (2 if is_digits else 4)
        self.flip = args.flip if args.flip is not None else not is_digits
        self.noisy_mask = noisy_mask  # which training labels the noise changed (None: not known)
        self.train_images = images.train_images.to(device)
        self.train_labels = images.train_labels.to(device)
        self.splits = {"val": (images.val_images.to(device), images.val_labels.to(device)),
                       "test": (images.test_images.to(device), images.test_labels.to(device))}
        n = len(self.train_labels)
        # Under torchrun every process draws the same global batches of processes x --batch-size images and
        # trains on its own share of each (distributed.shard): DistributedSampler's partition, epoch by epoch.
        global_batch = args.batch_size * distributed.world_size()
        self.teacher_stream = data_lib.ShuffledBatches(n, global_batch, torch.Generator().manual_seed(args.seed))
        self.student_stream = data_lib.ShuffledBatches(n, global_batch, torch.Generator().manual_seed(args.seed + 1))
        self.augment_generator = torch.Generator().manual_seed(distributed.rank_seed(args.seed + 2, stride=1000))
        self.steps_per_epoch = self.teacher_stream.batches_per_pass

    def _inputs(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if train and (self.pad > 0 or self.flip):
            images = data_lib.augment_batch(images, self.pad, self.flip, self.augment_generator)
        return data_lib.normalize_images(images, self.data.mean, self.data.std)

    def _batch(self, stream: data_lib.ShuffledBatches) -> Batch:
        idx = distributed.shard(stream.next())
        dev_idx = idx.to(self.device)
        return Batch(self._inputs(self.train_images[dev_idx], True), self.train_labels[dev_idx], indices=idx)

    def start_epoch(self, epoch: int) -> None:
        pass

    def teacher_batch(self) -> Batch:
        return self._batch(self.teacher_stream)

    def student_batch(self) -> Batch:
        return self._batch(self.student_stream)

    @torch.no_grad()
    def evaluate(self, trainer: LoTSupervisedTrainer, split: str) -> dict[str, float]:
        images, labels = self.splits[split]
        out = {}
        for name, model in trainer.models().items():
            model.eval()
            loss_sum, correct = 0.0, 0
            for start in range(0, len(labels), self.eval_batch_size):
                x = self._inputs(images[start:start + self.eval_batch_size], False)
                y = labels[start:start + self.eval_batch_size]
                with trainer.autocast():
                    logits = model(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
            model.train()
            out[f"{name}/{split}_loss"] = loss_sum / len(labels)
            out[f"{name}/{split}_acc"] = correct / len(labels)
        return out

    def train_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_stream": self.teacher_stream.state_dict(), "student_stream": self.student_stream.state_dict(),
                "augment_generator": self.augment_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher_stream.load_state_dict(state["teacher_stream"])
        self.student_stream.load_state_dict(state["student_stream"])
        self.augment_generator.set_state(state["augment_generator"])


def build(args: CVArgs, device: torch.device) -> tuple[CVTask, LoTSupervisedTrainer]:
    """The data task and the LoT trainer (teacher, students, optimizers, schedules) for ``args``."""
    validate_args(args)
    images = data_lib.load_image_data(args.dataset, args.data_dir)
    data_lib.split_validation(images, args.val_size, args.seed)
    seed_everything(distributed.rank_seed(args.seed, stride=1000), args.threads)  # torchrun: own dropout masks
    channels, classes = images.image_shape[0], images.num_classes
    # The clean meta set of --reweight out of the training split, then the label noise into the rest.
    meta_images, meta_labels, noisy_mask = data_lib.hold_out_meta_set(
        images, args.meta_size if args.reweight != "none" else 0, args.label_noise, args.noise_type, args.seed)
    task = CVTask(images, args, device, noisy_mask=noisy_mask)

    def make_model(role: str) -> PreResNet:
        depth = args.depth if role == "teacher" or args.student_depth is None else args.student_depth
        return PreResNet(depth, classes, channels, args.width)

    def make_optimizer(params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=args.learning_rate, momentum=args.momentum, nesterov=args.momentum > 0,
                               weight_decay=args.weight_decay)

    trainer = make_trainer(args, make_model, make_optimizer, args.epochs * task.steps_per_epoch, device)
    task.autocast = trainer.autocast
    if args.reweight != "none":
        from lot_rl.supervised.reweight import FitReweighting, build_reweighter

        meta_inputs = data_lib.normalize_images(meta_images.to(device), images.mean, images.std)
        reweighter = build_reweighter(args.reweight, trainer.teacher, trainer.optimizer, meta_inputs,
                                      meta_labels.to(device), classes, meta_batch_size=args.meta_batch_size,
                                      meta_interval=args.meta_interval, meta_lr=args.meta_lr, seed=args.seed)
        task.reweighting = FitReweighting(reweighter, args.epochs * task.steps_per_epoch, noisy_mask)
    return task, trainer


def train_cv(args: CVArgs, resume: str | Path | None = None, max_steps: int | None = None,
             sample_weighting: SampleWeighting | None = None) -> dict[str, Any]:
    """Train (or continue) an image classification run; return its summary (see :func:`training.fit`).

    ``sample_weighting`` replaces the one ``--reweight`` builds (see :class:`training.SampleWeighting`).
    """
    device = distributed.setup(args.device)  # this process's device (torchrun: its process group starts here)
    # validates the options and reads the data first: a bad option or a missing file leaves no empty run folder
    task, trainer = build(args, device)
    run_dir, checkpoint = prepare_run(args, CHECKPOINT_KIND, args.dataset, resume)
    sample_weighting = sample_weighting if sample_weighting is not None else task.reweighting
    return fit(task, trainer, args, run_dir, args.epochs, checkpoint, max_steps, sample_weighting,
               desc=args.dataset)


# ----------------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser, command: str = "cv") -> None:
    parser.description = ("Image classification with LoT: a PreResNet teacher regularized by students that "
                          "imitate it. Without options: LoT on the built-in digits (minutes on a CPU).")
    cfg_lib.add_run_options(parser, CVArgs, PRESETS, group_of=OPTION_GROUPS,
                            preset_help="cifar10/cifar (alias)/cifar100: the reference's run (lr 1.0); "
                                        "cifar10-lr0.1/cifar100-lr0.1: the same with lr 0.1; digits: the defaults")


def run_command(ns: argparse.Namespace, command: str = "cv") -> int:
    args, resume = cfg_lib.args_from_namespace(ns, CVArgs, PRESETS, CHECKPOINT_KIND)
    try:
        summary = train_cv(args, resume=resume)
    except KeyboardInterrupt:
        return 130
    if distributed.is_main_process():
        print_summary(summary)
    return 0
