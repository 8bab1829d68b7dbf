"""``lot-rl lm``: word-level language modeling with LoT (LSTM or causal Transformer teacher and students).

Examples::

    lot-rl lm                                              # LoT on the built-in Python-docs corpus, minutes on CPU
    lot-rl lm --alpha 0 --num-students 0                   # the same, teacher only
    lot-rl lm --preset ptb-lstm --data-dir ~/data/ptb      # the reference's LSTM run on PTB
    lot-rl lm --preset wt103-transformer --data-dir ~/data/wikitext-103
    lot-rl lm --resume runs/<run-name>

The student's KL is over the next-token distributions at every position of the BPTT window. Recurrent
states are carried across windows separately for each model and each data stream (the teacher's pass over
the training text, and the students' own stream for their extra steps), and cut after every window.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lot_rl import config as cfg_lib
from lot_rl import distributed
from lot_rl.errors import require
from lot_rl.supervised import data as data_lib
from lot_rl.supervised.models import LM_MODELS, detach_state, make_language_model
from lot_rl.supervised.training import (EXPERIMENT_FIELDS, LOT_FIELDS, Batch, CommonArgs, LoTSupervisedTrainer,
                                        fit, make_trainer, prepare_run, print_summary,
                                        seed_everything, validate_common)

CHECKPOINT_KIND = "lm"


@dataclass
class LMArgs(CommonArgs):
    # --- data
    dataset: str = cfg_lib.option("pydoc", "pydoc (built in: the Python docs' text), ptb (ptb.{train,valid,"
                                  "test}.txt) or wikitext103 (wiki.{train,valid,test}.tokens) in --data-dir",
                                  choices=data_lib.TEXT_DATASETS)
    # --- model
    model: str = cfg_lib.option("lstm", "teacher language model", choices=LM_MODELS)
    student_model: str | None = cfg_lib.option(None, "student language model (default: --model)", choices=LM_MODELS)
    embedding_size: int = cfg_lib.option(128, "embedding size (= Transformer width; tied with the output layer)")
    hidden_size: int = cfg_lib.option(128, "LSTM hidden size / Transformer feed-forward size")
    num_layers: int = cfg_lib.option(2, "LSTM or Transformer layers")
    num_heads: int = cfg_lib.option(4, "Transformer attention heads")
    student_embedding_size: int | None = cfg_lib.option(None, "student embedding size (default: teacher's)")
    student_hidden_size: int | None = cfg_lib.option(None, "student hidden size (default: teacher's)")
    student_num_layers: int | None = cfg_lib.option(None, "student layers (default: teacher's)")
    dropout: float = cfg_lib.option(0.2, "dropout")
    tie_weights: bool = cfg_lib.option(True, "tie input embedding and output layer")
    # --- optimization
    epochs: int = cfg_lib.option(6, "training epochs (teacher passes over the training text)")
    batch_size: int = cfg_lib.option(32, "parallel token streams per batch (per process under torchrun / --nproc)")
    bptt: int = cfg_lib.option(35, "window length of truncated backpropagation through time")
    eval_batch_size: int = cfg_lib.option(10, "parallel streams in evaluation")
    optimizer: str = cfg_lib.option("sgd", "sgd or adam (teacher and students)", choices=("sgd", "adam"))
    momentum: float = cfg_lib.option(0.0, "SGD momentum (the reference's LSTM: 0.3)")
    learning_rate: float = cfg_lib.option(20.0, "learning rate, cosine-annealed to 0")
    warmup_steps: int = cfg_lib.option(0, "linear learning-rate warm-up steps")
    weight_decay: float = cfg_lib.option(0.0, "weight decay")
    clip: float = cfg_lib.option(0.25, "gradient-norm clip of teacher and each student (0: none)")


PRESETS: dict[str, dict[str, Any]] = {
    # The reference's LSTM run on PTB (run/run_lstm_ptb_LoT.sh, trainer/lstm_ptb.py): Zaremba et al.'s medium
    # LSTM, untied, SGD momentum 0.3, and its students' plateau-decayed learning rate.
    "ptb-lstm": dict(dataset="ptb", model="lstm", embedding_size=650, hidden_size=650, num_layers=2, dropout=0.45,
                     tie_weights=False, optimizer="sgd", momentum=0.3, learning_rate=30.0, clip=0.2,
                     batch_size=20, bptt=35, eval_batch_size=10, epochs=60, alpha=1.0, student_steps_ratio=5,
                     temperature=1.5, num_students=1, student_lr_schedule="plateau", student_lr_decay=0.25),
    # The reference's Transformer-XL runs (run/run_transformer_{ptb,wikitext103}_LoT.sh): 4 layers, Adam 1e-3
    # cosine-annealed to 0 without warm-up, on our causal Transformer (no recurrence memory; heads of
    # d_model / heads: 8 x 25 for its 8 x 20, 10 x 41 for its 12 x 41).
    "ptb-transformer": dict(dataset="ptb", model="transformer", num_layers=4, embedding_size=200, num_heads=8,
                            hidden_size=1000, dropout=0.25, optimizer="adam", learning_rate=1e-3, warmup_steps=0,
                            clip=0.35, batch_size=60, bptt=70, eval_batch_size=10, epochs=10, alpha=0.5,
                            student_steps_ratio=5, temperature=1.5, num_students=1),
    "wt103-transformer": dict(dataset="wikitext103", model="transformer", num_layers=4, embedding_size=410,
                              num_heads=10, hidden_size=2100, dropout=0.1, optimizer="adam", learning_rate=1e-3,
                              warmup_steps=0, clip=0.25, batch_size=30, bptt=100, eval_batch_size=10, epochs=4,
                              alpha=0.1, student_steps_ratio=4, temperature=1.5, num_students=1),
    # The default: a small LSTM on the built-in corpus.
    "pydoc": dict(dataset="pydoc"),
}

OPTION_GROUPS = {**{n: "experiment" for n in EXPERIMENT_FIELDS}, **{n: "LoT" for n in LOT_FIELDS},
                 "dataset": "data",
                 **{n: "model" for n in ("model", "student_model", "embedding_size", "hidden_size", "num_layers",
                                         "num_heads", "student_embedding_size", "student_hidden_size",
                                         "student_num_layers", "dropout", "tie_weights")},
                 **{n: "optimization" for n in ("epochs", "batch_size", "bptt", "eval_batch_size", "optimizer",
                                                 "momentum", "learning_rate", "warmup_steps", "weight_decay",
                                                 "clip")}}


def validate_args(args: LMArgs) -> None:
    validate_common(args)
    require(args.dataset in data_lib.TEXT_DATASETS,
            f"unknown --dataset {args.dataset!r}; choose one of {', '.join(data_lib.TEXT_DATASETS)}")
    for flag, kind in (("--model", args.model), ("--student-model", args.student_model)):
        require(kind is None or kind in LM_MODELS, f"unknown {flag} {kind!r}; choose one of {', '.join(LM_MODELS)}")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--bptt", args.bptt),
                        ("--eval-batch-size", args.eval_batch_size), ("--embedding-size", args.embedding_size),
                        ("--hidden-size", args.hidden_size), ("--num-layers", args.num_layers)):
        require(value >= 1, f"{flag} must be >= 1, got {value}")
    require(args.learning_rate > 0, f"--learning-rate must be > 0, got {args.learning_rate}")
    require(args.clip >= 0, f"--clip must be >= 0 (0: no clipping), got {args.clip}")
    require(args.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    require(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    require(0.0 <= args.dropout < 1.0, f"--dropout must be in [0, 1), got {args.dropout}")


class StreamForward:
    """Runs a model on a window of one data stream, carrying that model's recurrent state on that stream."""

    def __init__(self, states: dict[str, Any], stream: str):
        self.states, self.stream = states, stream

    def __call__(self, name: str, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        key = f"{self.stream}/{name}"
        logits, state = model(inputs, self.states.get(key))
        self.states[key] = detach_state(state)  # truncated BPTT: no gradient into the previous window
        return logits


class LMTask:
    """BPTT windows of the training text for the teacher (one pass per epoch) and for the students' extra
    steps (their own cursor, wrapping around), and perplexity evaluation (see :class:`training.Task`)."""

    kind = CHECKPOINT_KIND
    selection = "teacher/val_ppl"
    higher_is_better = False

    def __init__(self, text: data_lib.TextData, args: LMArgs, device: torch.device):
        self.text, self.device, self.bptt = text, device, args.bptt
        # Under torchrun: processes x --batch-size streams, each process its contiguous share of them
        streams = data_lib.batchify(text.train, args.batch_size * distributed.world_size())
        self.train_streams = distributed.shard(streams)
        self.windows = data_lib.bptt_windows(self.train_streams, args.bptt)
        self.eval_streams = {"val": data_lib.batchify(text.valid, args.eval_batch_size),
                             "test": data_lib.batchify(text.test, args.eval_batch_size)}
        self.steps_per_epoch = len(self.windows)
        self.states: dict[str, Any] = {}
        self.teacher_position = 0
        self.student_position = 0

    def _batch(self, position: int, stream: str) -> Batch:
        x, y = data_lib.window(self.train_streams, *self.windows[position])
        return Batch(x.to(self.device), y.to(self.device), StreamForward(self.states, stream))

    def start_epoch(self, epoch: int) -> None:
        self.teacher_position = 0
        for key in [k for k in self.states if k.startswith("teacher/")]:
            del self.states[key]

    def teacher_batch(self) -> Batch:
        batch = self._batch(self.teacher_position, "teacher")
        self.teacher_position += 1
        return batch

    def student_batch(self) -> Batch:
        if self.student_position >= len(self.windows):  # wrap around: the streams start over, so do the states
            self.student_position = 0
            for key in [k for k in self.states if k.startswith("student/")]:
                del self.states[key]
        batch = self._batch(self.student_position, "student")
        self.student_position += 1
        return batch

    @torch.no_grad()
    def evaluate(self, trainer: LoTSupervisedTrainer, split: str) -> dict[str, float]:
        streams = self.eval_streams[split]
        out = {}
        for name, model in trainer.models().items():
            model.eval()
            state, nll, tokens = None, 0.0, 0
            for x, y in data_lib.iterate_windows(streams, self.bptt):
                x, y = x.to(self.device), y.to(self.device)
                with trainer.autocast():
                    logits, state = model(x, state)
                nll += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                             reduction="sum"))
                tokens += y.numel()
            model.train()
            out[f"{name}/{split}_loss"] = nll / tokens
            out[f"{name}/{split}_ppl"] = math.exp(min(nll / tokens, 50.0))
        return out

    def train_metrics(self, means: dict[str, float]) -> dict[str, float]:
        out = dict(means)
        for key, value in means.items():
            if key.endswith("/train_loss"):
                out[key.replace("_loss", "_ppl")] = math.exp(min(value, 50.0))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_position": self.teacher_position, "student_position": self.student_position,
                "states": self.states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher_position, self.student_position = state["teacher_position"], state["student_position"]
        to_device = lambda s: s.to(self.device) if isinstance(s, torch.Tensor) else \
            (None if s is None else type(s)(to_device(t) for t in s))
        self.states = {k: to_device(v) for k, v in state["states"].items()}


def build(args: LMArgs, device: torch.device) -> tuple[LMTask, LoTSupervisedTrainer]:
    """The data task and the LoT trainer for ``args``."""
    validate_args(args)
    text = data_lib.load_text_data(args.dataset, args.data_dir)
    seed_everything(distributed.rank_seed(args.seed, stride=1000), args.threads)  # torchrun: own dropout masks
    task = LMTask(text, args, device)
    vocab_size = len(text.vocab)

    def make_model(role: str) -> nn.Module:
        student = role == "student"
        pick = lambda own, teacher: own if student and own is not None else teacher
        return make_language_model(pick(args.student_model, args.model), vocab_size,
                                   pick(args.student_embedding_size, args.embedding_size),
                                   pick(args.student_hidden_size, args.hidden_size),
                                   pick(args.student_num_layers, args.num_layers), args.dropout, args.num_heads,
                                   args.tie_weights)

    def make_optimizer(params) -> torch.optim.Optimizer:
        if args.optimizer == "adam":
            return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
        return torch.optim.SGD(params, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)

    clip = args.clip if args.clip > 0 else None
    trainer = make_trainer(args, make_model, make_optimizer, args.epochs * task.steps_per_epoch, device,
                           warmup_steps=args.warmup_steps, teacher_max_grad_norm=clip, student_max_grad_norm=clip)
    return task, trainer


def train_lm(args: LMArgs, resume: str | Path | None = None, max_steps: int | None = None) -> dict[str, Any]:
    """Train (or continue) a language-modeling run; return its summary (see :func:`training.fit`)."""
    device = distributed.setup(args.device)  # this process's device (torchrun: its process group starts here)
    # validates the options and reads the data first: a bad option or a missing file leaves no empty run folder
    task, trainer = build(args, device)
    run_dir, checkpoint = prepare_run(args, CHECKPOINT_KIND, args.dataset, resume)
    if checkpoint is not None:
        require(checkpoint.get("vocab_size") == len(task.text.vocab),
                f"checkpoint {checkpoint['path']} has a vocabulary of {checkpoint.get('vocab_size')} words, "
                f"this corpus has {len(task.text.vocab)}: same --dataset and files are needed to resume")
    return fit(task, trainer, args, run_dir, args.epochs, checkpoint, max_steps,
               extra_state={"vocab_size": len(task.text.vocab), "vocab": task.text.vocab.words},
               desc=f"{args.dataset}/{args.model}")


# ----------------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser, command: str = "lm") -> None:
    parser.description = ("Language modeling with LoT: an LSTM or Transformer teacher regularized by students "
                          "that imitate its next-token distributions. Without options: LoT with a small LSTM "
                          "on the built-in Python-docs corpus (minutes on a CPU).")
    cfg_lib.add_run_options(parser, LMArgs, PRESETS, group_of=OPTION_GROUPS,
                            preset_help="ptb-lstm, ptb-transformer, wt103-transformer: the reference's runs "
                                        "(docs/supervised.md lists what differs); pydoc: the defaults")


def run_command(ns: argparse.Namespace, command: str = "lm") -> int:
    args, resume = cfg_lib.args_from_namespace(ns, LMArgs, PRESETS, CHECKPOINT_KIND)
    try:
        summary = train_lm(args, resume=resume)
    except KeyboardInterrupt:
        return 130
    if distributed.is_main_process():
        print_summary(summary)
    return 0
