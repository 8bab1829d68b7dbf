"""Learning from Teaching for stock Stable-Baselines3 PPO (and A2C): one callback, no fork.

::

    from stable_baselines3 import PPO
    from lot_rl.sb3 import LoTCallback

    model = PPO("CnnPolicy", env, ent_coef=0.01)
    lot = LoTCallback(alpha=0.5, num_students=1, student_steps_ratio=5, obs_num=10)
    model.learn(10_000_000, callback=lot)
    model.save("ppo_breakout")
    lot.save("ppo_breakout")            # writes ppo_breakout.lot.pt next to ppo_breakout.zip

How the penalty reaches SB3's own update
----------------------------------------
No callback fires inside ``PPO.train()``, and each minibatch there calls
``policy.evaluate_actions(obs, actions)`` and builds its loss from the returned ``log_prob``. From
``_on_rollout_end`` (just before ``train()``) until the next ``_on_rollout_start`` (or the end of
``learn()``), the callback puts a wrapper on the *policy instance's* ``evaluate_actions``. The wrapper calls
the original method, reads the teacher's action logits of that forward pass (a forward hook on
``policy.action_net``), computes ``P = alpha * sum_i lambda_i * kl(teacher, student_i.detach(), T)`` with
:mod:`lot_rl.regularizer`, and returns ``log_prob`` passed through :class:`_AttachPenalty`, an identity
whose backward hands ``log_prob`` its gradient unchanged and gives ``P`` the gradient 1. The one
``loss.backward()`` of SB3 therefore produces the gradient of ``PPO loss + P``, before SB3's gradient
clipping and optimizer step, while every value SB3 computes and logs (``train/loss``,
``train/policy_gradient_loss``, ``train/entropy_loss``, ``train/approx_kl``...) is unchanged in meaning
(they exclude the penalty). It does not go through the entropy term, so any ``ent_coef`` (0 included)
works. Tested with stable-baselines3 2.9.

The students
------------
By default each student is a freshly initialised policy of the teacher's class and constructor
arguments, of which only the actor (features extractor, policy MLP, ``action_net``) is used and trained:
Adam with the teacher's current learning rate, weight decay 1e-4, gradients clipped at the model's
``max_grad_norm``. They imitate the teacher (``student_loss``) on each PPO minibatch, as the LoT
reference does (``student_on_ppo_batches``), and after every update for ``student_steps_ratio``
passes over the observations of the last ``obs_num`` rollouts (the student phase), each cached rollout cut
into ``student_minibatches`` shuffled minibatches (4, as ``lot-rl train``).

The students' step on a PPO minibatch is taken only once SB3's backward pass has run on it: their
imitation loss rides on ``log_prob`` with the penalty, so SB3's one backward gives both gradients (as the
reference's one backward does), and the students step at the next minibatch (or before the student
phase). A minibatch that SB3 drops unlearned, as ``target_kl`` early stopping does, trains no one.
"""

from __future__ import annotations

import copy
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_obs_shape, preprocess_obs
from torch import nn

from lot_rl.checkpoint import load_checkpoint, save_checkpoint
from lot_rl.errors import LoTUserError, require
from lot_rl.regularizer import (ObservationCache, Students, validate_cache_options, validate_lot_options,
                                validate_student_weights)
from lot_rl.runtime import adam
from lot_rl.students import BATCHING_MODES, batch_students_here, stacking_obstacle

CHECKPOINT_KIND = "sb3-lot-callback"
COMPANION_SUFFIX = ".lot.pt"
SUPPORTED_ALGORITHMS = (PPO, A2C)
# Options of earlier versions, now named as `lot-rl train` names them; the old names are still accepted.
OLD_OPTION_NAMES = {"imitate_on_teacher_batches": "student_on_ppo_batches"}
# Options of earlier versions that no longer exist, and what replaced them.
REPLACED_OPTIONS = {"student_batch_size": "student_minibatches (minibatches per cached rollout in the student "
                                          "phase, default 4, as lot-rl train)"}


def companion_path(path: str | os.PathLike) -> Path:
    """The students' file that goes with an SB3 model saved at ``path``: ``model.zip`` -> ``model.lot.pt``."""
    path = str(path)
    if path.endswith(COMPANION_SUFFIX):
        return Path(path)
    return Path(path.removesuffix(".zip") + COMPANION_SUFFIX)


def actor_logits(policy: ActorCriticPolicy, obs: torch.Tensor) -> torch.Tensor:
    """The action logits of an SB3 actor-critic policy on observations as SB3 stores them.

    The same computation as the actor half of ``policy.evaluate_actions``: preprocessing (images scaled
    to [0, 1], discrete observations one-hot), the actor's features extractor, the policy MLP,
    ``action_net``.
    """
    inputs = preprocess_obs(obs, policy.observation_space, normalize_images=policy.normalize_images)
    latent = policy.mlp_extractor.forward_actor(policy.pi_features_extractor(inputs))
    return policy.action_net(latent)


class PolicyActor(nn.Module):
    """A student made from an SB3 policy: ``forward(obs)`` returns its actor's action logits.

    The policy's value head is kept (so the state dict has the familiar layout) but never used or
    trained.
    """

    def __init__(self, policy: ActorCriticPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return actor_logits(self.policy, obs)


class PreprocessedInput(nn.Module):
    """A user-given student network fed the way SB3 feeds its features extractors (preprocessed obs)."""

    def __init__(self, network: nn.Module, observation_space: spaces.Space, normalize_images: bool):
        super().__init__()
        self.network = network
        self.observation_space = observation_space
        self.normalize_images = normalize_images

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.network(preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images))


@dataclass
class _Count:
    """A count that outlives the call that increments it (here: backward passes that carried the penalty)."""

    count: int = 0


class _AttachPenalty(torch.autograd.Function):
    """Identity on ``log_prob`` that adds ``penalty`` to whatever loss is built from ``log_prob``.

    Forward returns ``log_prob`` unchanged. Backward returns ``log_prob``'s incoming gradient unchanged and
    the gradient 1 for ``penalty``: the result is the gradient of ``loss + penalty`` for any loss that
    depends on ``log_prob``, without changing the loss's value. Each of ``backward_calls`` counts the
    backward passes that went through.
    """

    @staticmethod
    def forward(ctx, log_prob: torch.Tensor, penalty: torch.Tensor,
                backward_calls: tuple[_Count, ...]) -> torch.Tensor:
        ctx.penalty_dtype, ctx.penalty_device = penalty.dtype, penalty.device
        ctx.backward_calls = backward_calls
        return log_prob.clone()

    @staticmethod
    def backward(ctx, grad_log_prob: torch.Tensor):
        for calls in ctx.backward_calls:  # proof that the penalty reached the algorithm's backward pass
            calls.count += 1
        return grad_log_prob, torch.ones((), dtype=ctx.penalty_dtype, device=ctx.penalty_device), None


def _argument_names(message: str) -> str:
    """A validator's message with command-line flags as Python argument names: ``--obs-num`` -> ``obs_num``."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda flag: flag.group(1).replace("-", "_"), message)


def _reinitialise(module: nn.Module) -> None:
    """Fresh random parameters for every submodule that knows how to reset itself."""
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


class LoTCallback(BaseCallback):
    """
    Learning from Teaching for a stock SB3 ``PPO`` or ``A2C`` with a discrete action space.

    Options are named as ``lot-rl train`` names them (``imitate_on_teacher_batches``, the earlier name of
    ``student_on_ppo_batches``, is still accepted).

    :param alpha: Weight of the teachability penalty in the teacher's loss (0: students learn, no penalty)
    :param num_students: Number of students (>= 1)
    :param student_steps_ratio: N, passes of the student phase over the cached rollouts after every update
        (0: students learn only on the PPO minibatches)
    :param obs_num: Number of recent rollouts whose observations the students imitate the teacher on
    :param temperature: T of the KL terms
    :param student_weights: The lambda_i of the penalty (default: equal, summing to 1)
    :param student: ``None`` (a fresh copy of the policy's architecture), an ``nn.Module`` (student 0 is this
        module, further students are re-initialised deep copies) or a zero-argument factory returning one.
        A user network receives preprocessed observations (as SB3's features extractors do) and returns one
        logit per action.
    :param student_lr: Students' learning rate (default: follow the teacher's current learning rate)
    :param student_weight_decay: Adam weight decay of the students
    :param student_minibatches: Minibatches per cached rollout in the student phase (4, as ``lot-rl train``
        and the reference; they hold ``ceil(n_steps * n_envs / student_minibatches)`` states)
    :param student_on_ppo_batches: Also take one student step on every PPO minibatch the teacher learns from
        (as the reference)
    :param cache_mode: ``"copies"`` keeps the last ``obs_num`` rollouts; ``"reference"`` reproduces the LoT
        reference, whose cache held the latest rollout ``min(rollouts, obs_num)`` times
    :param batch_students: ``"on"``: with ``num_students >= 2`` students of one architecture (without buffers)
        run as one batched computation (``torch.func.vmap``), same math per student; ``"off"``: one after
        another; ``"auto"``: on when the model is on a CUDA device (on CPUs it measured no faster)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    """

    def __init__(self, alpha: float = 0.5, num_students: int = 1, student_steps_ratio: int = 5,
                 obs_num: int = 10, temperature: float = 1.0, student_weights: Sequence[float] | None = None,
                 student: nn.Module | Callable[[], nn.Module] | None = None, student_lr: float | None = None,
                 student_weight_decay: float = 1e-4, student_minibatches: int = 4,
                 student_on_ppo_batches: bool = True, cache_mode: str = "copies", batch_students: str = "auto",
                 verbose: int = 0, **old_names: Any):
        super().__init__(verbose)
        for name in old_names:
            if name in REPLACED_OPTIONS:
                raise TypeError(f"LoTCallback(): {name} was replaced by {REPLACED_OPTIONS[name]}")
            if name not in OLD_OPTION_NAMES:
                raise TypeError(f"LoTCallback() got an unexpected keyword argument {name!r}")
        student_on_ppo_batches = _current_names(old_names).get("student_on_ppo_batches", student_on_ppo_batches)
        self.alpha = float(alpha)
        self.num_students = int(num_students)
        self.student_steps_ratio = int(student_steps_ratio)
        self.obs_num = int(obs_num)
        self.temperature = float(temperature)
        self.student_weights = None if student_weights is None else [float(w) for w in student_weights]
        self.student = student
        self.student_lr = student_lr
        self.student_weight_decay = float(student_weight_decay)
        self.student_minibatches = int(student_minibatches)
        self.student_on_ppo_batches = bool(student_on_ppo_batches)
        self.cache_mode = cache_mode
        self.batch_students = batch_students
        self._check_options()

        self.students: Students | None = None
        self.cache = ObservationCache(self.obs_num, self.cache_mode)
        self.updates = 0  # teacher updates (train() calls) seen
        self._student_phase_pending = False
        self._pending_state: dict[str, Any] | None = None
        self._installed: tuple[Any, Any, Callable] | None = None  # (policy, previous attribute, wrapper)
        self._installed_at_step = -1
        self._lr_synced = False
        self._unsettled: tuple[_Count, float] | None = None  # the PPO minibatch the students wait to step on
        self._reset_stats()

    # ------------------------------------------------------------------ options and compatibility checks
    def _check_options(self) -> None:
        require(self.num_students >= 1, f"LoTCallback: num_students must be >= 1, got {self.num_students}")
        try:  # the checks lot-rl train makes, in this class's words (argument obs_num for option --obs-num)
            validate_lot_options(self.alpha, self.num_students, self.temperature, self.student_steps_ratio)
            validate_student_weights(self.student_weights, self.num_students)
            validate_cache_options(self.obs_num, self.cache_mode)
        except LoTUserError as exc:
            raise LoTUserError("LoTCallback: " + _argument_names(str(exc))) from None
        require(self.student_steps_ratio > 0 or self.student_on_ppo_batches,
                "LoTCallback: with student_steps_ratio=0 and student_on_ppo_batches=False the students "
                "never learn; set student_steps_ratio >= 1 or student_on_ppo_batches=True")
        require(self.batch_students in BATCHING_MODES, f"LoTCallback: batch_students must be one of "
                                                       f"{', '.join(BATCHING_MODES)}, got {self.batch_students!r}")
        require(self.student_weight_decay >= 0,
                f"LoTCallback: student_weight_decay must be >= 0, got {self.student_weight_decay}")
        require(self.student_lr is None or self.student_lr > 0,
                f"LoTCallback: student_lr must be > 0 (leave it out to follow the teacher's learning rate), "
                f"got {self.student_lr}")
        require(self.student_minibatches >= 1,
                f"LoTCallback: student_minibatches must be >= 1, got {self.student_minibatches}")
        require(self.student is None or isinstance(self.student, nn.Module) or callable(self.student),
                f"LoTCallback: student must be None, an nn.Module or a factory returning one, "
                f"got {type(self.student).__name__}")

    def _check_model(self) -> None:
        model = self.model
        require(isinstance(model, SUPPORTED_ALGORITHMS),
                f"LoTCallback works with on-policy PPO or A2C (it acts inside their train()); "
                f"got {type(model).__name__}")
        require(isinstance(model.action_space, spaces.Discrete),
                f"LoTCallback needs a discrete action space (gymnasium.spaces.Discrete); this env has "
                f"{model.action_space}")
        require(isinstance(model.policy, ActorCriticPolicy) and hasattr(model.policy, "action_net"),
                f"LoTCallback needs an SB3 ActorCriticPolicy (MlpPolicy, CnnPolicy), got "
                f"{type(model.policy).__name__}")
        require(not isinstance(model.observation_space, spaces.Dict),
                "LoTCallback does not support Dict observation spaces (MultiInputPolicy) yet; "
                "use a Box or Discrete observation space")

    # ------------------------------------------------------------------ building the students
    def _student_networks(self) -> list[nn.Module]:
        policy = self.model.policy
        if self.student is None:
            # A fresh policy of the same class and arguments: same architecture, new random initialisation.
            params = policy._get_constructor_parameters()
            return [PolicyActor(type(policy)(**params)) for _ in range(self.num_students)]
        if isinstance(self.student, nn.Module):
            networks = [self.student]
            for _ in range(self.num_students - 1):
                twin = copy.deepcopy(self.student)
                _reinitialise(twin)
                networks.append(twin)
        else:
            networks = [self.student() for _ in range(self.num_students)]
        for net in networks:
            require(isinstance(net, nn.Module), f"LoTCallback: the student factory returned "
                                                f"{type(net).__name__}, not an nn.Module")
        return [PreprocessedInput(net, policy.observation_space, policy.normalize_images) for net in networks]

    def _build_students(self) -> Students:
        policy, device = self.model.policy, self.model.device
        eps = policy.optimizer.defaults.get("eps", 1e-5) if isinstance(policy.optimizer, torch.optim.Adam) else 1e-5
        lr = self._student_lr_now()
        networks = [net.to(device) for net in self._student_networks()]
        batched = (batch_students_here(self.batch_students, len(networks), device)
                   and stacking_obstacle(networks) is None)

        def build(batched: bool) -> Students:
            return Students(networks, make_optimizer=lambda params: adam(
                                params, lr=lr, eps=eps, weight_decay=self.student_weight_decay),
                            weights=self.student_weights, temperature=self.temperature,
                            max_grad_norm=getattr(self.model, "max_grad_norm", None), batched=batched)

        students = build(batched)
        try:
            self._check_student_outputs(students)
        except RuntimeError as exc:  # an operation vmap cannot batch (a user network's): one after another
            if not batched:
                raise
            warnings.warn(f"LoTCallback: the students cannot run batched ({str(exc).splitlines()[0]}); "
                          "they run one after another", RuntimeWarning, stacklevel=2)
            students = build(False)
            self._check_student_outputs(students)
        return students

    def _check_student_outputs(self, students: Students) -> None:
        space = self.model.observation_space
        probe = torch.as_tensor(np.stack([space.sample() for _ in range(2)]), device=self.model.device)
        probe = probe.reshape(2, *get_obs_shape(space))  # the layout of the rollout buffer
        expected = (2, int(self.model.action_space.n))
        with torch.no_grad():
            for i, logits in enumerate(students.logits(probe)):
                require(tuple(logits.shape) == expected,
                        f"LoTCallback: student {i} returns logits of shape {tuple(logits.shape)} for 2 "
                        f"observations; it must return {expected}, one logit per action of {self.model.action_space}")

    # ------------------------------------------------------------------ SB3 callback hooks
    def _init_callback(self) -> None:
        self._check_options()
        self._check_model()
        self._uninstall()
        if self.students is None:
            self.students = self._build_students()
        else:  # a second learn(), possibly of a reloaded model: continue with the same students
            self.students.to(self.model.device)
            self._check_student_outputs(self.students)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def _on_training_start(self) -> None:
        self._reset_stats()

    def _on_rollout_start(self) -> None:
        self._uninstall()
        self._run_pending_student_phase()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        observations = torch.as_tensor(buffer.observations, device=self.model.device)
        # (n_steps, n_envs, *obs_shape) -> one row per state; the cache copies it (the buffer is reused).
        self.cache.append(observations.reshape(-1, *observations.shape[2:]))
        self._install()
        self._student_phase_pending = True  # train() runs next

    def _on_training_end(self) -> None:
        self._uninstall()
        self._run_pending_student_phase()

    # ------------------------------------------------------------------ the penalty inside train()
    def _install(self) -> None:
        policy = self.model.policy
        previous = policy.__dict__.get("evaluate_actions")
        original = policy.evaluate_actions

        def evaluate_actions_with_lot(obs, actions, *args, **kwargs):
            if self._installed is None or self.model.num_timesteps != self._installed_at_step:
                # Left behind by an interrupted learn(): step aside.
                self._uninstall_from(policy, previous, evaluate_actions_with_lot)
                return original(obs, actions, *args, **kwargs)
            return self._evaluate_with_penalty(original, obs, actions, *args, **kwargs)

        policy.evaluate_actions = evaluate_actions_with_lot
        self._installed = (policy, previous, evaluate_actions_with_lot)
        self._installed_at_step = self.model.num_timesteps
        self._lr_synced = False

    def _uninstall(self) -> None:
        if self._installed is not None:
            self._uninstall_from(*self._installed)
        self._installed = None

    @staticmethod
    def _uninstall_from(policy, previous, wrapper) -> None:
        if policy.__dict__.get("evaluate_actions") is wrapper:
            if previous is None:
                del policy.evaluate_actions
            else:
                policy.evaluate_actions = previous

    def _evaluate_with_penalty(self, original: Callable, obs: torch.Tensor, actions: torch.Tensor,
                               *args, **kwargs):
        policy, students = self.model.policy, self.students
        captured: list[torch.Tensor] = []
        hook = policy.action_net.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        try:
            values, log_prob, entropy = original(obs, actions, *args, **kwargs)
        finally:
            hook.remove()
        if not torch.is_grad_enabled():
            return values, log_prob, entropy
        # The teacher logits of this very forward pass; recompute only for a policy that used action_net
        # other than once (then the gradient is the same, it just costs a second forward).
        teacher_logits = captured[0] if len(captured) == 1 else actor_logits(policy, obs)
        if not self._lr_synced:
            self._sync_student_lr()

        self._settle_student_step()  # the previous minibatch's, before the students' logits of this one
        students.zero_grad()  # SB3's backward of this minibatch will accumulate into them
        students.train()
        with torch.set_grad_enabled(self.student_on_ppo_batches):
            student_logits = students.logits(obs)
        teachability = students.penalty(teacher_logits, student_logits)  # student logits detached inside
        self._teacher_kl_sum += float(teachability.detach())
        self._teacher_batches += 1
        extra = self.alpha * teachability if self.alpha > 0 else None
        counters = (self._penalty_backward_calls,)
        if self.student_on_ppo_batches:
            # Students imitate the teacher on the same minibatch (the teacher's logits are detached); the
            # loss rides on SB3's backward, the step waits until that backward has run.
            imitation = students.imitation_loss(student_logits, teacher_logits)
            extra = imitation if extra is None else extra + imitation
            self._unsettled = (_Count(), float(imitation.detach()) / len(students))
            counters += (self._unsettled[0],)
        if extra is not None:
            log_prob = _AttachPenalty.apply(log_prob, extra, counters)
            self._penalties_attached += 1
        return values, log_prob, entropy

    def _settle_student_step(self) -> None:
        """Step the students on the last PPO minibatch if SB3's backward ran on it; drop it otherwise."""
        if self._unsettled is None:
            return
        backward_calls, student_kl = self._unsettled
        self._unsettled = None
        if backward_calls.count:
            self.students.step()
            self._batch_student_kl_sum += student_kl
            self._batch_student_steps += 1

    def _student_lr_now(self) -> float:
        """``student_lr``, or the teacher's current learning rate when it is None."""
        if self.student_lr is not None:
            return float(self.student_lr)
        return float(self.model.policy.optimizer.param_groups[0]["lr"])

    def _sync_student_lr(self) -> None:
        # train() has just set the teacher's learning rate for this update; students follow it.
        lr = self._student_lr_now()
        for opt in self.students.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        self._lr_synced = True

    # ------------------------------------------------------------------ the student phase
    def _run_pending_student_phase(self) -> None:
        self._settle_student_step()
        if not self._student_phase_pending:
            return
        self._student_phase_pending = False
        self.updates += 1
        self._check_penalty_reached_backward()
        if not self._lr_synced and self.student_lr is None:
            self._sync_student_lr()
        start = time.perf_counter()
        phase_kls = self.student_phase() if self.student_steps_ratio > 0 else []
        self._log_update(phase_kls, time.perf_counter() - start)

    def _check_penalty_reached_backward(self) -> None:
        # Guard against a silent no-op: an SB3 version whose train() stops building its loss from
        # evaluate_actions' log_prob would never call _AttachPenalty.backward.
        if self._penalties_attached and not self._penalty_backward_calls.count:
            raise RuntimeError(
                f"LoTCallback: the LoT terms were added to {self._penalties_attached} minibatches but "
                f"never reached {type(self.model).__name__}.train()'s backward pass; this stable-baselines3 "
                f"{stable_baselines3.__version__} differs from the tested 2.9 (see lot_rl/sb3.py)")

    def student_phase(self) -> list[float]:
        """
        ``student_steps_ratio`` passes over the cached rollouts, shuffled minibatches of imitation.

        The cache hands out each minibatch with the teacher's targets, computed once per distinct cached
        rollout: the teacher does not change during the phase.

        :return: Each student step's mean student loss
        """
        policy = self.model.policy
        was_training = policy.training
        policy.set_training_mode(False)  # the targets are the teacher's eval-mode predictions
        try:
            minibatches = self.cache.student_minibatches(lambda states: actor_logits(policy, states),
                                                         self.student_steps_ratio, self.student_minibatches)
        finally:
            policy.set_training_mode(was_training)
        self.students.train()
        losses = []
        for states, targets in minibatches:
            losses.append(self.students.imitate(states, targets))
        return losses

    # ------------------------------------------------------------------ logging
    def _reset_stats(self) -> None:
        self._penalties_attached, self._penalty_backward_calls = 0, _Count()
        self._teacher_kl_sum, self._teacher_batches = 0.0, 0
        self._batch_student_kl_sum, self._batch_student_steps = 0.0, 0

    def _log_update(self, phase_kls: list[float], phase_seconds: float) -> None:
        """Record this update's LoT scalars in SB3's logger (dumped with the next rollout's row)."""
        if self._teacher_batches:
            self.logger.record("lot/teacher_kl", self._teacher_kl_sum / self._teacher_batches)
        if phase_kls:
            self.logger.record("lot/student_kl", float(np.mean(phase_kls)))
        elif self._batch_student_steps:
            self.logger.record("lot/student_kl", self._batch_student_kl_sum / self._batch_student_steps)
        self.logger.record("lot/student_steps", len(phase_kls) + self._batch_student_steps)
        self.logger.record("lot/student_phase_seconds", phase_seconds)
        self._reset_stats()

    # ------------------------------------------------------------------ save and restore
    def options(self) -> dict[str, Any]:
        """
        The constructor options (without ``student``), as saved in the companion file.

        :return: Option name to value
        """
        return {"alpha": self.alpha, "num_students": self.num_students,
                "student_steps_ratio": self.student_steps_ratio, "obs_num": self.obs_num,
                "temperature": self.temperature, "student_weights": self.student_weights,
                "student_lr": self.student_lr, "student_weight_decay": self.student_weight_decay,
                "student_minibatches": self.student_minibatches,
                "student_on_ppo_batches": self.student_on_ppo_batches, "cache_mode": self.cache_mode,
                "batch_students": self.batch_students}

    def save(self, path: str | os.PathLike, include_cache: bool = True) -> Path:
        """
        Write the students, their optimizers and the observation cache next to ``model.save(path)``.

        :param path: The path given to ``model.save`` (with or without ``.zip``); the file is ``<path>.lot.pt``
        :param include_cache: Save the observation cache too; without it (a much smaller file for Atari) a
            resumed run refills it from new rollouts
        :return: The file written
        """
        require(self.students is not None,
                "LoTCallback.save: there are no students yet; call model.learn(..., callback=...) first")
        payload = {
            "options": self.options(),
            "custom_student": self.student is not None,
            "students": self.students.state_dict(),
            "cache": self.cache.state_dict() if include_cache else None,
            "updates": self.updates,
            "student_phase_pending": self._student_phase_pending,
        }
        return save_checkpoint(companion_path(path), CHECKPOINT_KIND, payload)

    @classmethod
    def load(cls, path: str | os.PathLike, student: nn.Module | Callable[[], nn.Module] | None = None,
             **overrides: Any) -> "LoTCallback":
        """
        A callback that continues with the students saved by :meth:`save` at ``path``.

        The students are restored when the callback meets its model (at ``learn()`` start).

        :param path: The path given to :meth:`save` (or ``model.save``)
        :param student: The same ``student`` network as the saved run's, if it used one
        :param overrides: Options that replace the saved ones (e.g. ``alpha``; a smaller ``obs_num`` keeps
            the most recent cached rollouts)
        :return: The callback, to pass to ``model.learn``
        """
        data = load_checkpoint(companion_path(path), kind=CHECKPOINT_KIND)
        require(not (data["custom_student"] and student is None),
                f"{data['path']} holds user-given student networks: pass the same architecture as "
                f"LoTCallback.load(..., student=...)")
        saved, overrides = _current_names(data["options"]), _current_names(overrides)
        for name in REPLACED_OPTIONS.keys() & saved.keys():
            warnings.warn(f"{data['path']} sets {name} of an earlier lot_rl, replaced by {REPLACED_OPTIONS[name]}: "
                          f"its student phase now cuts each cached rollout into student_minibatches", stacklevel=2)
            del saved[name]
        unknown = set(overrides) - set(saved) - {"verbose"}
        require(not unknown, f"LoTCallback.load: unknown option(s) {', '.join(sorted(unknown))}")
        callback = cls(**{**saved, **overrides}, student=student)
        callback._pending_state = data
        return callback

    def _restore(self, data: dict[str, Any]) -> None:
        try:
            self.students.load_state_dict(data["students"])
        except RuntimeError as exc:
            raise LoTUserError(f"the students in {data['path']} do not fit this model's policy "
                               f"({str(exc).splitlines()[0]})") from exc
        if data["cache"] is not None:  # fitted to this callback's obs_num and cache_mode by the cache itself
            saved = data["cache"]
            self.cache.load_state_dict({**saved, "entries": [e.to(self.model.device) for e in saved["entries"]]})
        self.updates = int(data["updates"])
        self._student_phase_pending = bool(data["student_phase_pending"])


def _current_names(options: dict[str, Any]) -> dict[str, Any]:
    """Options with the names of earlier versions (:data:`OLD_OPTION_NAMES`) replaced by today's."""
    return {OLD_OPTION_NAMES.get(name, name): value for name, value in options.items()}
