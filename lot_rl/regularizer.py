"""The LoT regularizer: the KL terms of Learning from Teaching and the students that make them.

The math is in pure functions, in the spirit of ``torch.nn.functional``::

    kl(p, q, T) = T^2 * KL(softmax(q / T) || softmax(p / T))      # "p learns towards q"
    teacher loss = task loss + alpha * sum_i lambda_i * kl(teacher, student_i.detach(), T)
    student loss = kl(student, teacher.detach(), T)               (+ cross-entropy in ``kl_ce``)

State that the terms need (the students, their optimizers and schedules) lives in :class:`Students`.
Every entry point (the Atari agent, the SB3 callback, image classification, language modeling) uses this
module; nothing else computes a LoT term.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lot_rl.checkpoint import restore_optimizer
from lot_rl.errors import LoTUserError, require
from lot_rl.students import StudentStack

STUDENT_LOSSES = ("kl", "kl_ce", "symmetric_kl", "symmetric_kl_ce")
# States per teacher forward when computing the student phase's targets: 256 Atari frames keep every
# activation under glibc's 32 MB mmap ceiling (see ``lot_rl.runtime.keep_freed_memory``).
TARGET_CHUNK = 256


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(q/T) || softmax(p/T))``, averaged over the batch (rows of the last dimension).

    The gradient flows into both arguments; detach the one that is a fixed target. Logits of any leading
    shape are flattened to rows, so ``(batch, time, vocab)`` language-model logits work as they are.
    Computed in float32 whatever the input dtype, so bf16 autocast does not degrade the loss.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"kl: logits shapes differ: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    p = p_logits.float().reshape(-1, p_logits.shape[-1]) / temperature
    q = q_logits.float().reshape(-1, q_logits.shape[-1]) / temperature
    # KLDivLoss(log_softmax(p), log_softmax(q), log_target=True, reduction="batchmean")
    return F.kl_div(F.log_softmax(p, -1), F.log_softmax(q, -1), log_target=True,
                    reduction="batchmean") * temperature**2


def teachability_kl(teacher_logits: torch.Tensor, student_logits: Sequence[torch.Tensor] | torch.Tensor,
                    temperature: float = 1.0, weights: Sequence[float] | None = None,
                    detach: bool = True, symmetric: bool = False) -> torch.Tensor:
    """The teacher's teachability penalty ``sum_i lambda_i * kl(teacher, student_i, T)`` (without alpha).

    ``student_logits`` is one tensor or a list (one per student); ``weights`` are the lambda_i (default:
    equal, summing to 1). With ``detach`` (the default, as in the paper) no gradient reaches the students.
    ``symmetric`` adds the other direction, ``kl(student_i, teacher, T)``, also a gradient of the teacher:
    the reference's penalty in its ``symmetric_kl``/``symmetric_kl_ce`` variants.
    """
    if isinstance(student_logits, torch.Tensor):
        student_logits = [student_logits]
    if len(student_logits) == 0:
        return teacher_logits.new_zeros((), dtype=torch.float32)
    weights = _resolve_weights(weights, len(student_logits))
    total = teacher_logits.new_zeros((), dtype=torch.float32)
    for lam, s in zip(weights, student_logits):
        s = s.detach() if detach else s
        term = kl(teacher_logits, s, temperature)
        if symmetric:
            term = term + kl(s, teacher_logits, temperature)
        total = total + lam * term
    return total


def student_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 variant: str = "kl", labels: torch.Tensor | None = None,
                 ce_weight: float = 1.0, kl_weight: float = 1.0, ignore_index: int = -100,
                 detach: bool = True) -> torch.Tensor:
    """The loss a student minimizes to imitate its teacher.

    variants (the reference's ``--loss``):
      ``kl``               kl_weight * kl(student, teacher)
      ``kl_ce``            ce_weight * CE(student, labels) + kl_weight * kl(student, teacher)
      ``symmetric_kl``     kl_weight * (kl(student, teacher) + kl(teacher, student))
      ``symmetric_kl_ce``  ce_weight * CE + kl_weight * (kl(student, teacher) + kl(teacher, student))

    The reference weights the KL part by alpha in the ``*_ce`` variants and by 1 otherwise
    (:func:`reference_kl_weight`). The teacher's logits are a fixed target (detached) unless ``detach`` is
    False, the reference's RL ``--detach 0``, where this loss reaches the teacher too.
    """
    if variant not in STUDENT_LOSSES:
        raise LoTUserError(f"unknown student loss {variant!r}; choose one of {', '.join(STUDENT_LOSSES)}")
    target = teacher_logits.detach() if detach else teacher_logits
    loss = kl(student_logits, target, temperature)
    if variant.startswith("symmetric_kl"):
        loss = loss + kl(target, student_logits, temperature)
    loss = kl_weight * loss
    if variant.endswith("_ce"):
        if labels is None:
            raise ValueError(f"student loss {variant!r} needs labels")
        loss = loss + ce_weight * F.cross_entropy(
            student_logits.float().reshape(-1, student_logits.shape[-1]), labels.reshape(-1),
            ignore_index=ignore_index)
    return loss


def reference_kl_weight(variant: str, alpha: float) -> float:
    """The weight of the student's KL term in the reference: alpha in ``kl_ce``/``symmetric_kl_ce`` (beside
    the cross-entropy), 1 in ``kl``/``symmetric_kl`` (pure imitation)."""
    return alpha if variant.endswith("_ce") else 1.0


def _resolve_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None or len(weights) == 0:
        return [1.0 / count] * count
    validate_student_weights(weights, count)
    return [float(w) for w in weights]


def validate_student_weights(weights: Sequence[float] | None, num_students: int) -> None:
    """The lambda_i: none (equal weights summing to 1) or one value >= 0 per student."""
    if weights is None or len(weights) == 0:
        return
    require(len(weights) == num_students, f"--student-weights has {len(weights)} values for {num_students} "
                                          f"students; give one per student")
    require(all(w >= 0 for w in weights), f"--student-weights must be >= 0, got {list(weights)}")


def validate_lot_options(alpha: float, num_students: int, temperature: float,
                         student_steps_ratio: int | None = None) -> None:
    """Raise a clear :class:`LoTUserError` for LoT options outside their domain."""
    require(alpha >= 0, f"--alpha must be >= 0 (0 turns the teachability penalty off), got {alpha}")
    require(num_students >= 0, f"--num-students must be >= 0, got {num_students}")
    require(temperature > 0, f"--temperature must be > 0, got {temperature}")
    if student_steps_ratio is not None:
        require(student_steps_ratio >= 0, f"--student-steps-ratio must be >= 0, got {student_steps_ratio}")
    require(not (alpha > 0 and num_students == 0),
            f"--alpha {alpha} needs at least one student (--num-students >= 1)")


class Students:
    """K student networks, each with its own optimizer (and optional LR scheduler), and their weights.

    Args:
        networks: the student modules. Each maps an input batch to logits (``forward(x)``) unless
            ``logits_fn`` says otherwise.
        make_optimizer: ``params -> torch.optim.Optimizer``, called once per student.
        make_scheduler: optional ``optimizer -> LRScheduler``, called once per student.
        weights: the lambda_i of the teachability penalty (default equal, summing to 1).
        temperature: T of every KL term.
        max_grad_norm: clip each student's gradient norm before its step (None: no clipping).
        logits_fn: ``(network, inputs) -> logits``; default ``network(inputs)``.
        batched: run the students as one vmapped computation (:class:`lot_rl.students.StudentStack`; they
            must share an architecture, see :func:`lot_rl.students.stacking_obstacle`) instead of one
            network after another. Same math per student: each keeps its optimizer, clipping and lambda_i.
            Train them through :meth:`logits` then (a direct ``networks[i](x).backward()`` is not seen).
    """

    def __init__(self, networks: Iterable[nn.Module],
                 make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
                 make_scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
                 weights: Sequence[float] | None = None, temperature: float = 1.0,
                 max_grad_norm: float | None = None,
                 logits_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 batched: bool = False):
        self.networks = nn.ModuleList(networks)
        if batched and logits_fn is not None:
            raise ValueError("Students: batched students are called as modules; logits_fn is not supported")
        self.stack = StudentStack(self.networks) if batched else None
        self.weights = _resolve_weights(weights, len(self.networks)) if len(self.networks) else []
        self.temperature = temperature
        self.max_grad_norm = max_grad_norm
        self.logits_fn = logits_fn or (lambda net, x: net(x))
        self.optimizers = [make_optimizer(net.parameters()) for net in self.networks]
        self.schedulers = [make_scheduler(opt) for opt in self.optimizers] if make_scheduler else []

    def __len__(self) -> int:
        return len(self.networks)

    def logits(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Each student's logits on ``inputs`` (with autograd, as the caller's context allows)."""
        if self.stack is not None:
            return list(self.stack.logits(inputs).unbind(0))
        return [self.logits_fn(net, inputs) for net in self.networks]

    def penalty(self, teacher_logits: torch.Tensor, student_logits: Sequence[torch.Tensor],
                detach: bool = True, symmetric: bool = False) -> torch.Tensor:
        """``sum_i lambda_i kl(teacher, student_i.detach(), T)`` (see :func:`teachability_kl`): multiply by
        alpha and add to the task loss."""
        return teachability_kl(teacher_logits, student_logits, self.temperature, self.weights, detach=detach,
                               symmetric=symmetric)

    def imitation_loss(self, student_logits: Sequence[torch.Tensor], teacher_logits: torch.Tensor,
                       variant: str = "kl", labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Sum over students of :func:`student_loss` (each student only gets its own term's gradient; the
        teacher none unless ``detach=False`` is passed on)."""
        return sum(student_loss(s, teacher_logits, self.temperature, variant, labels, **kwargs)
                   for s in student_logits)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.stack is not None:
            self.stack.zero_grad()

    def step(self) -> None:
        """Clip (if asked) and step every student's optimizer on the gradients already accumulated."""
        for net, opt in zip(self.networks, self.optimizers):
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), self.max_grad_norm)
            opt.step()

    def imitate(self, inputs: torch.Tensor, teacher_logits: torch.Tensor, variant: str = "kl",
                labels: torch.Tensor | None = None, autocast: Callable[[], object] | None = None,
                **kwargs) -> float:
        """One imitation step of every student on ``inputs`` towards fixed ``teacher_logits``.

        Returns the mean student loss (a float, for logging).
        """
        self.zero_grad()
        with (autocast() if autocast else nullcontext()):
            logits = self.logits(inputs)
        loss = self.imitation_loss(logits, teacher_logits, variant, labels, **kwargs)
        loss.backward()
        self.step()
        return float(loss.detach()) / max(len(self), 1)

    def scheduler_step(self) -> None:
        for sched in self.schedulers:
            sched.step()

    def train(self, mode: bool = True) -> "Students":
        self.networks.train(mode)
        return self

    def to(self, *args, **kwargs) -> "Students":
        self.networks.to(*args, **kwargs)
        if self.stack is not None:
            self.stack.restack()  # moved parameters have new storage: stack them again
        return self

    def state_dict(self) -> dict:
        return {
            "networks": [net.state_dict() for net in self.networks],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "weights": list(self.weights),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the networks and their optimizers' and schedulers' progress from :meth:`state_dict`.

        What the constructor was given stays: the lambda_i, the temperature and each optimizer's
        hyperparameters (learning rate, weight decay...), so that options changed on resume apply
        (:func:`lot_rl.checkpoint.restore_optimizer`).
        """
        if len(state["networks"]) != len(self.networks):
            raise LoTUserError(f"the checkpoint holds {len(state['networks'])} students but this run has "
                               f"{len(self.networks)}; use the same --num-students to resume")
        for net, sd in zip(self.networks, state["networks"]):
            net.load_state_dict(sd)
        saved_schedulers = state.get("schedulers") or [None] * len(self.optimizers)
        for i, (opt, sd) in enumerate(zip(self.optimizers, state["optimizers"])):
            scheduler = self.schedulers[i] if self.schedulers else None
            restore_optimizer(opt, sd, scheduler, saved_schedulers[i] if scheduler is not None else None)


def validate_cache_options(obs_num: int, cache_mode: str) -> None:
    """Raise a clear :class:`LoTUserError` for an observation cache that cannot be built."""
    require(obs_num >= 1, f"--obs-num must be >= 1, got {obs_num}")
    require(cache_mode in ObservationCache.MODES,
            f"unknown --cache-mode {cache_mode!r}; choose one of {', '.join(ObservationCache.MODES)}")


class ObservationCache:
    """The students' training states: the observations of the last ``capacity`` rollouts.

    ``mode="copies"`` (default) keeps real copies in a ring buffer. ``mode="reference"`` reproduces the
    public LoT reference, whose cache held views of the rollout buffer that the next rollout overwrote:
    every one of its ``min(rollouts seen, capacity)`` entries is the latest rollout.
    """

    MODES = ("copies", "reference")

    def __init__(self, capacity: int, mode: str = "copies"):
        validate_cache_options(capacity, mode)
        self.capacity, self.mode = capacity, mode
        self._buffer: torch.Tensor | None = None  # (capacity, rollout_size, *obs_shape), allocated lazily
        self._next = 0  # ring position of the next write
        self.seen = 0  # rollouts appended so far

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def append(self, observations: torch.Tensor) -> None:
        """Add one rollout's observations, shape ``(rollout_size, *obs_shape)`` (copied).

        A rollout of another shape, dtype or device than the cached ones (SB3's ``set_env`` with another
        ``n_envs``, a run resumed with another ``--num-envs``) starts the cache afresh with it: the older
        rollouts cannot be stacked with it and are dropped.
        """
        if not self._fits(observations):
            slots = self.capacity if self.mode == "copies" else 1
            self._buffer = observations.new_empty((slots, *observations.shape))
            self._next, self.seen = 0, 0
        if self.mode == "reference":
            self._buffer[0].copy_(observations)
        else:
            self._buffer[self._next].copy_(observations)
            self._next = (self._next + 1) % self.capacity
        self.seen += 1

    def _fits(self, observations: torch.Tensor) -> bool:
        return (self._buffer is not None and self._buffer.shape[1:] == observations.shape
                and self._buffer.dtype == observations.dtype and self._buffer.device == observations.device)

    def entries(self) -> list[torch.Tensor]:
        """The cached rollouts, oldest first (in reference mode: the latest rollout, ``len(self)`` times)."""
        if self._buffer is None:
            return []
        if self.mode == "reference":
            return [self._buffer[0]] * len(self)
        order = [(self._next + i) % self.capacity for i in range(self.capacity)] if self.seen >= self.capacity \
            else list(range(self.seen))
        return [self._buffer[i] for i in order]

    def student_minibatches(self, teacher: Callable[[torch.Tensor], torch.Tensor], passes: int,
                            minibatches: int, generator: torch.Generator | None = None
                            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The student phase's data: ``(states, teacher_logits)`` minibatches over the cached rollouts.

        ``passes`` passes; in each, every cached rollout (oldest first) is shuffled afresh and cut into
        ``minibatches`` minibatches of ``ceil(rollout_size / minibatches)`` states (the last one smaller if
        the rollout does not divide).
        ``teacher(states) -> logits`` is called here, before the first minibatch, once per distinct cached
        rollout, in chunks of :data:`TARGET_CHUNK` states under inference mode: the teacher does not change
        during the student phase (the LoT reference re-ran it with autograd for every minibatch of every
        pass). Targets are float32. The shuffles draw from ``generator`` (on the cache's device; default: torch's
        global generator) as the minibatches are taken.
        """
        require(passes >= 0 and minibatches >= 1,
                f"student_minibatches: passes must be >= 0 and minibatches >= 1, got {passes} and {minibatches}")
        entries = self.entries() if passes else []
        targets: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for entry in entries:
                if id(entry) not in targets:  # reference mode repeats one rollout: its targets once
                    targets[id(entry)] = torch.cat([teacher(entry[i:i + TARGET_CHUNK]).float()
                                                    for i in range(0, entry.shape[0], TARGET_CHUNK)])
        return self._shuffled_minibatches(entries, targets, passes, minibatches, generator)

    @staticmethod
    def _shuffled_minibatches(entries: list[torch.Tensor], targets: dict[int, torch.Tensor], passes: int,
                              minibatches: int, generator: torch.Generator | None
                              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(passes):
            for entry in entries:
                batch_size = -(-entry.shape[0] // minibatches)  # ceil
                order = torch.randperm(entry.shape[0], device=entry.device, generator=generator)
                for start in range(0, entry.shape[0], batch_size):
                    rows = order[start:start + batch_size]
                    yield entry[rows], targets[id(entry)][rows]

    def state_dict(self) -> dict:
        entries = self.entries() if self.mode == "copies" else self.entries()[:1]
        return {"mode": self.mode, "capacity": self.capacity, "seen": self.seen,
                "entries": [e.clone() for e in entries]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved, in this cache's capacity and mode: from a cache of another
        (``--obs-num`` or ``--cache-mode`` changed on resume) it keeps the most recent rollouts that fit."""
        entries, seen = list(state["entries"]), int(state["seen"])
        if (state["capacity"], state["mode"]) != (self.capacity, self.mode):
            entries = entries[-self.capacity:] if self.mode == "copies" else entries[-1:]
            seen = min(seen, self.capacity) if self.mode == "reference" else len(entries)
        self._buffer, self._next, self.seen = None, 0, 0
        for e in entries:
            self.append(e)
        self.seen = seen
