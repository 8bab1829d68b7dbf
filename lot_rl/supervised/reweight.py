"""Sample reweighting by meta-gradients: a *weighter* that weights the *model*'s training samples.

The *model* is the network trained on the classification task (in ``lot-rl cv`` it is LoT's teacher, the
one that also pays the teachability penalty; the reweighting papers call it "the student"). A *weighter*
(their "teacher") gives each training sample a weight for its loss; it learns from a small clean
validation ("meta") set, by asking how the model's validation loss would change if the model took its
next optimizer step on the weighted loss. Three weighters, from least to most informed:

``l2rw``  (Ren et al. 2018, "Learning to Reweight Examples"): no network. The weight of sample i is
          ``max(0, -d L_val(theta'(eps)) / d eps_i)`` at ``eps = 0``, where ``theta'(eps)`` is the model
          after one lookahead step on ``sum_i eps_i l_i``; the weights are normalized per batch.
``mwnet`` (Shu et al. 2019, Meta-Weight-Net): an MLP ``loss -> weight`` trained by the meta-gradient.
``deep``  (Fan et al. 2021, "Learning to Reweight with Deep Interactions"): the weighting network reads
          the model's *internal states* for the sample (see :class:`DeepWeightNet`) and is trained by the
          same meta-gradient.

The meta-gradient, with :func:`torch.func.functional_call` on the model's own module (no copied model
classes)::

    weighted training loss (weights from the weighter, with graph)
      -> grads of the model's parameters (create_graph=True)
      -> lookahead parameters theta' = the model's real optimizer step (SGD: momentum, Nesterov,
         weight decay, dampening read from the optimizer and its momentum buffers)
      -> validation loss L_val(theta') on a clean meta batch
      -> gradient into the weighter's parameters (or into eps for l2rw).

Nothing of this touches the model: its parameters, ``.grad``, BatchNorm running statistics and
momentum buffers are left as they were (the lookahead works on clones of the buffers). The weights handed
to the model's real step are detached, so the weighter is trained only through the validation loss.

Per-batch normalization: every method hands out weights with mean 1 over the batch (``w * B / sum w``),
so the model's effective learning rate is the same as without reweighting; what changes is *which*
samples count. A batch where l2rw finds no useful sample gets all-zero weights (Ren et al.).

The clean meta set and the label noise it is meant for come from :mod:`lot_rl.supervised.data`
(:func:`~lot_rl.supervised.data.hold_out_meta_set`).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lot_rl.errors import LoTUserError, require

REWEIGHT_METHODS = ("none", "l2rw", "mwnet", "deep")


# ----------------------------------------------------------------------------------------------------
# Reading the model: logits and penultimate features through one forward
# ----------------------------------------------------------------------------------------------------

HEAD_NAMES = ("fc", "classifier", "head", "linear", "output")


def find_classifier_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Linear]:
    """The model's final linear layer (its input is the penultimate feature vector).

    ``head`` names the submodule; by default the first of ``fc``, ``classifier``, ``head``, ``linear``,
    ``output`` that is an ``nn.Linear``, else the last ``nn.Linear`` registered in the model.
    """
    modules = dict(model.named_modules())
    if head is not None:
        require(isinstance(modules.get(head), nn.Linear),
                f"the model has no nn.Linear submodule named {head!r} to read penultimate features from; "
                f"linear layers: {', '.join(n for n, m in modules.items() if isinstance(m, nn.Linear)) or 'none'}")
        return head, modules[head]
    for name in HEAD_NAMES:
        if isinstance(modules.get(name), nn.Linear):
            return name, modules[name]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    require(bool(linears), f"--reweight deep reads the model's penultimate features at the input of its final "
                           f"nn.Linear, but {type(model).__name__} has none")
    return linears[-1]


class FeatureProbe:
    """Remembers the input of the model's classifier head at every forward (its penultimate features).

    A forward pre-hook, so it works for any model, for ``model(x)`` and for
    ``functional_call(model, params, x)`` alike. Only the latest batch is kept, detached.
    """

    def __init__(self, model: nn.Module, head: str | None = None):
        self.head_name, self.head = find_classifier_head(model, head)
        self.features: torch.Tensor | None = None
        self._handle = self.head.register_forward_pre_hook(self._remember)

    def _remember(self, module: nn.Module, inputs: tuple) -> None:
        # detached: the weighter only reads them, and holding the graph would keep a forward's tensors alive
        self.features = inputs[0].detach()

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def remove(self) -> None:
        self._handle.remove()
        self.features = None


# ----------------------------------------------------------------------------------------------------
# Weighting networks
# ----------------------------------------------------------------------------------------------------

class MetaWeightNet(nn.Module):
    """Meta-Weight-Net: ``weight = sigmoid(MLP(loss))``, one hidden layer (100 units, as Shu et al.)."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        dtype = self.net[0].weight.dtype
        return torch.sigmoid(self.net(losses.detach().to(dtype).unsqueeze(-1))).squeeze(-1)


class DeepWeightNet(nn.Module):
    """Fan et al.'s weighter (their "teacher"): a weight from the model's internal states for each sample.

    Inputs (all detached from the model):

    - ``features``: the penultimate-layer representation h (input of the classifier head). It is what the
      earlier weighters lacked: a corrupted sample's features sit with its *true* class, so set against
      its label they betray the corruption even when the loss alone is ambiguous (hard-but-clean samples
      also have a high loss). h is layer-normalized (its scale drifts as the model trains), projected,
      and made to *interact* with a learned embedding of the label: ``proj(h) * emb(y)``.
    - ``probs``: the model's softmax output (which classes it confuses the sample with).
    - the label, as the embedding above.
    - scalars: probability of the label, margin ``p_y - max_{k != y} p_k``, the loss ``-log p_y`` and the
      entropy (both divided by ``log C``), and the training progress in [0, 1] (early in training every loss
      is high; late, memorized noisy labels have low loss - the weighter must know when it is).

    Output: ``sigmoid`` of a two-layer MLP over the concatenation.
    """

    NUM_SCALARS = 5

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.feature_norm = nn.LayerNorm(feature_dim, elementwise_affine=False)
        self.feature_proj = nn.Linear(feature_dim, hidden)
        self.label_embedding = nn.Embedding(num_classes, hidden)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden + num_classes + self.NUM_SCALARS, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                progress: float) -> torch.Tensor:
        dtype = self.feature_proj.weight.dtype
        h = self.feature_proj(self.feature_norm(features.detach().to(dtype).flatten(1)))
        e = self.label_embedding(labels)
        log_probs = F.log_softmax(logits.detach().to(dtype), dim=-1)
        probs = log_probs.exp()
        p_label = probs.gather(1, labels[:, None]).squeeze(1)
        others = probs.scatter(1, labels[:, None], -1.0).max(dim=1).values
        log_c = math.log(self.num_classes)
        scalars = torch.stack([
            p_label,
            p_label - others,
            -log_probs.gather(1, labels[:, None]).squeeze(1) / log_c,
            -(probs * log_probs).sum(1) / log_c,
            torch.full_like(p_label, float(progress)),
        ], dim=1)
        return torch.sigmoid(self.mlp(torch.cat([h * e, h, probs, scalars], dim=1))).squeeze(-1)


# ----------------------------------------------------------------------------------------------------
# The lookahead step and the meta-gradient (pure functions)
# ----------------------------------------------------------------------------------------------------

def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name (the ones the lookahead moves)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def lookahead_parameters(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor | None],
                         optimizer: torch.optim.Optimizer | None, lr: float | None = None
                         ) -> dict[str, torch.Tensor]:
    """The model's parameters after one optimizer step on ``grads``, differentiably (no in-place ops).

    For ``torch.optim.SGD`` this is its exact update: ``d = g + wd * p``; momentum buffer
    ``b = mu * b_prev + (1 - dampening) * d`` (``b = d`` on the first step); ``d = d + mu * b`` (Nesterov)
    or ``d = b``; ``p' = p - lr * d`` (``maximize`` flips the gradient). The momentum buffers are read, not
    written. For any other optimizer (Adam, ...) the lookahead is a plain gradient step with the group's
    ``lr`` (Ren et al.'s and Shu et al.'s simplification): only the direction of the meta-gradient matters
    to l2rw, and mwnet/deep are robust to its scale. With ``optimizer=None``, a plain step with ``lr``.
    """
    if optimizer is None:
        require(lr is not None and lr >= 0, "lookahead_parameters needs an optimizer or a learning rate >= 0")
        return {n: p if grads.get(n) is None else p - lr * grads[n] for n, p in params.items()}
    settings = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            settings[p] = group
    is_sgd = isinstance(optimizer, torch.optim.SGD)
    out = {}
    for name, p in params.items():
        g = grads.get(name)
        group = settings.get(p)
        if g is None or group is None:  # not trained by this optimizer / no gradient: stays put
            out[name] = p
            continue
        step_lr = float(group["lr"]) if lr is None else lr
        if not is_sgd:
            out[name] = p - step_lr * g
            continue
        if group.get("maximize", False):
            g = -g
        wd = group.get("weight_decay", 0.0)
        if wd:
            g = g + wd * p
        mu = group.get("momentum", 0.0)
        if mu:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            buf = g if buf is None else mu * buf + (1 - group.get("dampening", 0.0)) * g
            g = g + mu * buf if group.get("nesterov", False) else buf
        out[name] = p - step_lr * g
    return out


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample, computed in float32 at least (bf16/fp16 logits are upcast)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits, labels, reduction="none")


class Lookahead(NamedTuple):
    """What :func:`lookahead_validation_loss` computed: the loss to differentiate, and the model's states."""

    validation_loss: torch.Tensor  # L_val(theta'), with the graph back to the weights
    weights: torch.Tensor  # the weights used in the lookahead (with graph)
    logits: torch.Tensor  # the model's logits on the training batch at theta (detached)
    features: torch.Tensor | None  # its penultimate features there (detached; None without a probe)


def lookahead_validation_loss(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                              inputs: torch.Tensor, labels: torch.Tensor, weight_fn,
                              meta_inputs: torch.Tensor, meta_labels: torch.Tensor,
                              probe: FeatureProbe | None = None, lr: float | None = None) -> Lookahead:
    """The clean validation loss after a lookahead step on the weighted training loss.

    ``weight_fn(losses, logits, features) -> weights`` is called on the model's detached states for the
    batch and must return per-sample weights that carry the graph back to whatever should be trained
    (the weighting network, or l2rw's ``eps``). The training loss is ``mean(weights * losses)``.
    Returns a :class:`Lookahead`; differentiate its ``validation_loss`` w.r.t. the weighter's parameters.

    The model is called through :func:`torch.func.functional_call` with its own parameters and
    *clones* of its buffers, so BatchNorm statistics and the real parameters stay untouched.
    """
    params = trainable_parameters(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    logits = functional_call(model, (params, buffers), (inputs,))
    features = probe.features.detach() if probe is not None else None
    losses = per_sample_cross_entropy(logits, labels)
    weights = weight_fn(losses.detach(), logits.detach(), features)
    train_loss = (weights * losses).mean()
    names = list(params)
    grads = torch.autograd.grad(train_loss, [params[n] for n in names], create_graph=True, allow_unused=True)
    new_params = lookahead_parameters(params, dict(zip(names, grads)), optimizer, lr)
    meta_logits = functional_call(model, (new_params, buffers), (meta_inputs,))
    return Lookahead(per_sample_cross_entropy(meta_logits, meta_labels).mean(), weights, logits.detach(), features)


def model_states(model: nn.Module, inputs: torch.Tensor, probe: FeatureProbe | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits and penultimate features on ``inputs``, without autograd and without side effects.

    Runs in the model's current mode (train: batch statistics, as in its training step) on clones of
    its buffers, so BatchNorm running statistics do not move.
    """
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        logits = functional_call(model, (trainable_parameters(model), buffers), (inputs,))
    return logits, (probe.features.detach() if probe is not None else None)


def normalize_batch_weights(weights: torch.Tensor) -> torch.Tensor:
    """Scale weights to mean 1 over the batch; an all-zero batch stays all zero."""
    total = weights.sum()
    if float(total.detach()) <= 0:
        return torch.zeros_like(weights)
    return weights * (weights.numel() / total)


# ----------------------------------------------------------------------------------------------------
# The reweighters
# ----------------------------------------------------------------------------------------------------

class WeightStats:
    """Per-epoch weight statistics: mean weight on corrupted vs clean samples, share of zero weights."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = {"clean": 0.0, "corrupted": 0.0, "all": 0.0, "zero": 0.0, "meta_loss": 0.0}
        self.counts = {"clean": 0, "corrupted": 0, "all": 0, "meta_loss": 0}

    def update(self, weights: torch.Tensor, corrupted: torch.Tensor | None = None) -> None:
        w = weights.detach().float().cpu()
        self.sums["all"] += float(w.sum())
        self.sums["zero"] += float((w == 0).sum())
        self.counts["all"] += w.numel()
        if corrupted is not None:
            mask = corrupted.detach().cpu().bool().reshape(-1)
            self.sums["corrupted"] += float(w[mask].sum())
            self.counts["corrupted"] += int(mask.sum())
            self.sums["clean"] += float(w[~mask].sum())
            self.counts["clean"] += int((~mask).sum())

    def add_meta_loss(self, value: float) -> None:
        self.sums["meta_loss"] += value
        self.counts["meta_loss"] += 1

    def summary(self, prefix: str = "reweight/") -> dict[str, float]:
        """Means since the last reset (NaN where nothing was seen; ``RunLogger`` skips NaN)."""
        def mean(key, count_key=None):
            count = self.counts[count_key or key]
            return self.sums[key] / count if count else float("nan")
        return {
            f"{prefix}mean_weight": mean("all"),
            f"{prefix}mean_weight_clean": mean("clean"),
            f"{prefix}mean_weight_corrupted": mean("corrupted"),
            f"{prefix}zero_weight_fraction": mean("zero", "all"),
            f"{prefix}meta_loss": mean("meta_loss"),
        }


class Reweighter:
    """Base class: per-sample weights for the model's task loss, and the meta step that teaches them.

    Use in a training step, after the model's forward and before its loss::

        logits = model(x)                                   # the probe sees the features
        weights = reweighter.weights(x, y, logits, progress)  # detached, mean 1 over the batch
        loss = teacher_task_loss(logits, y, weights) + alpha * teachability_penalty   # training.py
        reweighter.record(weights, corrupted_mask)          # optional: for the logged statistics

    Args:
        model: the model being trained (its own module; the meta step calls it through ``functional_call``).
        optimizer: the model's optimizer; the lookahead mirrors its step (see :func:`lookahead_parameters`).
        meta_inputs, meta_labels: the clean meta set (moved to the model's device on first use).
        meta_batch_size: samples drawn (without replacement) from the meta set per meta step.
        meta_interval: run the meta step every this many model steps.
        seed: seeds the meta-batch draws.
    """

    method = "base"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, meta_inputs: torch.Tensor,
                 meta_labels: torch.Tensor, meta_batch_size: int = 100, meta_interval: int = 1, seed: int = 0):
        require(meta_interval >= 1, f"--meta-interval must be >= 1, got {meta_interval}")
        require(meta_batch_size >= 1, f"--meta-batch-size must be >= 1, got {meta_batch_size}")
        require(len(meta_inputs) == len(meta_labels) and len(meta_inputs) > 0,
                f"the clean meta set needs as many labels as inputs and at least one sample, got "
                f"{len(meta_inputs)} inputs and {len(meta_labels)} labels")
        self.model, self.optimizer = model, optimizer
        self.meta_inputs, self.meta_labels = meta_inputs, meta_labels.long()
        self.meta_batch_size = min(meta_batch_size, len(meta_inputs))
        self.meta_interval = meta_interval
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0  # model steps seen
        self.meta_steps = 0
        self.stats = WeightStats()

    # -- the meta batch -------------------------------------------------------------------------------
    def meta_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.meta_inputs.device != device:  # move once, keep there
            self.meta_inputs, self.meta_labels = self.meta_inputs.to(device), self.meta_labels.to(device)
        if self.meta_batch_size == len(self.meta_inputs):
            return self.meta_inputs, self.meta_labels
        idx = torch.randperm(len(self.meta_inputs), generator=self.generator)[:self.meta_batch_size].to(device)
        return self.meta_inputs[idx], self.meta_labels[idx]

    def meta_due(self) -> bool:
        return self.steps % self.meta_interval == 0

    # -- the interface --------------------------------------------------------------------------------
    def weights(self, inputs: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None,
                progress: float = 0.0) -> torch.Tensor:
        """Weights for this batch (detached, mean 1); runs the meta step first when it is due.

        Call it before or after the model's forward on the batch. After: pass that forward's ``logits``
        (the feature probe has just seen the features) and no extra forward is needed. Before
        (``logits=None``): the states come from the meta step's own forward at the same parameters, or,
        on steps without a meta step, from one side-effect-free forward (:func:`model_states`).
        ``progress`` is the fraction of training done, in [0, 1].
        """
        raise NotImplementedError

    def record(self, weights: torch.Tensor, corrupted: torch.Tensor | None = None) -> None:
        """Accumulate weight statistics (``corrupted``: per-sample mask of injected label noise)."""
        self.stats.update(weights, corrupted)

    def epoch_summary(self) -> dict[str, float]:
        """The epoch's weight statistics as ``reweight/*`` scalars, then reset them."""
        out = self.stats.summary()
        self.stats.reset()
        return out

    def state_dict(self) -> dict:
        return {"method": self.method, "steps": self.steps, "meta_steps": self.meta_steps,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise LoTUserError(f"the checkpoint was trained with --reweight {state.get('method')} but this run "
                               f"uses --reweight {self.method}; resume with the same --reweight")
        self.steps, self.meta_steps = state["steps"], state["meta_steps"]
        self.generator.set_state(state["generator"])


class L2RWReweighter(Reweighter):
    """Ren et al. 2018: weights from the sign of the validation-loss gradient w.r.t. per-sample weights."""

    method = "l2rw"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        require(self.meta_interval == 1, f"--meta-interval must be 1 with --reweight l2rw (its weights *are* the "
                                         f"meta step, made afresh for every batch), got {self.meta_interval}")

    def weights(self, inputs, labels, logits=None, progress: float = 0.0) -> torch.Tensor:
        self.steps += 1
        self.meta_steps += 1
        meta_x, meta_y = self.meta_batch(inputs.device)
        eps = torch.zeros(len(inputs), device=inputs.device, requires_grad=True)
        val_loss = lookahead_validation_loss(self.model, self.optimizer, inputs, labels,
                                             lambda losses, lg, ft: eps, meta_x, meta_y).validation_loss
        (grad_eps,) = torch.autograd.grad(val_loss, eps)
        self.stats.add_meta_loss(float(val_loss.detach()))
        # a sample helps when up-weighting it lowers the validation loss
        return normalize_batch_weights(torch.clamp(-grad_eps.detach(), min=0.0))


class LearnedReweighter(Reweighter):
    """A weighting network trained by the one-step-lookahead meta-gradient (mwnet and deep)."""

    def __init__(self, model, optimizer, meta_inputs, meta_labels, weight_net: nn.Module,
                 meta_lr: float = 1e-3, meta_weight_decay: float = 0.0, probe: FeatureProbe | None = None,
                 **kwargs):
        super().__init__(model, optimizer, meta_inputs, meta_labels, **kwargs)
        require(meta_lr > 0, f"--meta-lr must be > 0, got {meta_lr}")
        self.weight_net = weight_net
        self.probe = probe
        self.meta_optimizer = torch.optim.Adam(weight_net.parameters(), lr=meta_lr, weight_decay=meta_weight_decay)

    def raw_weights(self, losses: torch.Tensor, logits: torch.Tensor, features: torch.Tensor | None,
                    labels: torch.Tensor, progress: float) -> torch.Tensor:
        raise NotImplementedError

    def meta_step(self, inputs: torch.Tensor, labels: torch.Tensor, progress: float) -> Lookahead:
        """One update of the weighting network by the meta-gradient; returns the lookahead (loss and states)."""
        device = inputs.device
        if next(self.weight_net.parameters()).device != device:
            self.weight_net.to(device)
        meta_x, meta_y = self.meta_batch(device)

        def weight_fn(losses, logits, features):
            return normalize_batch_weights(self.raw_weights(losses, logits, features, labels, progress))

        look = lookahead_validation_loss(self.model, self.optimizer, inputs, labels, weight_fn, meta_x, meta_y,
                                         self.probe)
        self.meta_optimizer.zero_grad(set_to_none=True)
        params = list(self.weight_net.parameters())
        grads = torch.autograd.grad(look.validation_loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        self.meta_optimizer.step()
        self.meta_steps += 1
        self.stats.add_meta_loss(float(look.validation_loss.detach()))
        return look

    def weights(self, inputs, labels, logits=None, progress: float = 0.0) -> torch.Tensor:
        features = None
        if logits is not None and self.probe is not None:
            features = self.probe.features
            require(features is not None and features.shape[0] == len(inputs),
                    f"the feature probe holds no features for this batch of {len(inputs)}; pass logits only "
                    f"right after the model's forward on the batch (or pass logits=None)")
            features = features.detach()
        if self.meta_due():
            look = self.meta_step(inputs, labels, progress)
            if logits is None:  # the lookahead's forward ran at the same parameters: reuse its states
                logits, features = look.logits, look.features
        elif logits is None:
            logits, features = model_states(self.model, inputs, self.probe)
        self.steps += 1
        with torch.no_grad():
            logits = logits.detach()
            raw = self.raw_weights(per_sample_cross_entropy(logits, labels), logits, features, labels, progress)
        return normalize_batch_weights(raw)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weight_net": self.weight_net.state_dict(),
                "meta_optimizer": self.meta_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.weight_net.load_state_dict(state["weight_net"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])


class MWNetReweighter(LearnedReweighter):
    """Meta-Weight-Net: the weight is a learned function of the sample's loss only."""

    method = "mwnet"

    def __init__(self, model, optimizer, meta_inputs, meta_labels, hidden: int = 100, **kwargs):
        super().__init__(model, optimizer, meta_inputs, meta_labels, MetaWeightNet(hidden), **kwargs)

    def raw_weights(self, losses, logits, features, labels, progress):
        return self.weight_net(losses)


class DeepReweighter(LearnedReweighter):
    """Fan et al. 2021: the weight is a learned function of the model's internal states."""

    method = "deep"

    def __init__(self, model, optimizer, meta_inputs, meta_labels, num_classes: int, hidden: int = 64,
                 head: str | None = None, **kwargs):
        probe = FeatureProbe(model, head)
        super().__init__(model, optimizer, meta_inputs, meta_labels,
                         DeepWeightNet(probe.feature_dim, num_classes, hidden), probe=probe, **kwargs)

    def raw_weights(self, losses, logits, features, labels, progress):
        if features is None:
            raise RuntimeError("deep reweighting: the feature probe captured no features")
        return self.weight_net(features, logits, labels, progress)


class FitReweighting:
    """A :class:`Reweighter` as :func:`lot_rl.supervised.training.fit`'s ``sample_weighting``
    (a :class:`lot_rl.supervised.training.SampleWeighting`).

    ``fit`` calls ``weights(indices, labels, inputs=...)`` before each teacher step and logs
    ``epoch_metrics()`` with the epoch's train metrics. This adapter runs the reweighter on the batch's
    inputs, tracks training progress (teacher steps / ``total_steps``), and records the weights against the
    corrupted-label mask (``corrupted``, indexed by training-set position) for the per-epoch statistics.
    ``state_dict``/``load_state_dict`` make it part of the run's checkpoint.
    """

    def __init__(self, reweighter: Reweighter, total_steps: int, corrupted: torch.Tensor | None = None):
        self.reweighter, self.total_steps = reweighter, max(int(total_steps), 1)
        self.corrupted = None if corrupted is None else torch.as_tensor(corrupted).bool().cpu()
        self.step = 0

    def weights(self, indices: torch.Tensor | None, labels: torch.Tensor,
                inputs: torch.Tensor | None = None) -> torch.Tensor:
        if inputs is None:
            raise RuntimeError("sample reweighting needs the batch inputs: the training loop must call "
                               "weights(indices, labels, inputs=batch.inputs)")
        w = self.reweighter.weights(inputs, labels, None, progress=min(1.0, self.step / self.total_steps))
        corrupted = None
        if self.corrupted is not None and indices is not None:
            corrupted = self.corrupted[indices.cpu()]
        self.reweighter.record(w, corrupted)
        self.step += 1
        return w

    def epoch_metrics(self) -> dict[str, float]:
        """``reweight/*`` statistics of the epoch (then reset)."""
        return self.reweighter.epoch_summary()

    def state_dict(self) -> dict:
        return {"reweighter": self.reweighter.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.reweighter.load_state_dict(state["reweighter"])
        self.step = int(state["step"])


def validate_reweight_options(method: str, meta_size: int, meta_interval: int, train_size: int | None = None) -> None:
    """Raise :class:`LoTUserError` for reweighting options outside their domain (before training).

    The label noise it is meant for has its own check, :func:`lot_rl.supervised.data.validate_label_noise`.
    """
    require(method in REWEIGHT_METHODS,
            f"unknown --reweight {method!r}; choose one of {', '.join(REWEIGHT_METHODS)}")
    require(meta_interval >= 1, f"--meta-interval must be >= 1, got {meta_interval}")
    require(meta_size >= 0, f"--meta-size must be >= 0, got {meta_size}")
    if method != "none":
        require(meta_size > 0, f"--reweight {method} learns from a clean meta set; give --meta-size > 0 "
                               f"(e.g. 1000 on CIFAR-10)")
    if method == "l2rw":
        require(meta_interval == 1, f"--meta-interval must be 1 with --reweight l2rw (its weights are the meta "
                                    f"step, made afresh for every batch), got {meta_interval}")
    if train_size is not None and meta_size > 0:
        require(meta_size < train_size, f"--meta-size {meta_size} leaves no training data (the training set "
                                        f"has {train_size} samples)")


def build_reweighter(method: str, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                     meta_inputs: torch.Tensor, meta_labels: torch.Tensor, num_classes: int,
                     meta_batch_size: int = 100, meta_interval: int = 1, meta_lr: float = 1e-3,
                     seed: int = 0, head: str | None = None) -> Reweighter | None:
    """The reweighter for ``--reweight METHOD`` (``None`` for ``none``)."""
    require(method in REWEIGHT_METHODS,
            f"unknown --reweight {method!r}; choose one of {', '.join(REWEIGHT_METHODS)}")
    if method == "none":
        return None
    common = dict(meta_batch_size=meta_batch_size, meta_interval=meta_interval, seed=seed)
    if method == "l2rw":
        return L2RWReweighter(model, optimizer, meta_inputs, meta_labels, **common)
    if method == "mwnet":
        return MWNetReweighter(model, optimizer, meta_inputs, meta_labels, meta_lr=meta_lr, **common)
    return DeepReweighter(model, optimizer, meta_inputs, meta_labels, num_classes, head=head, meta_lr=meta_lr,
                          **common)


__all__ = [
    "REWEIGHT_METHODS", "find_classifier_head", "FeatureProbe",
    "MetaWeightNet", "DeepWeightNet", "trainable_parameters", "lookahead_parameters", "lookahead_validation_loss",
    "per_sample_cross_entropy", "normalize_batch_weights", "WeightStats", "Reweighter", "L2RWReweighter",
    "LearnedReweighter", "MWNetReweighter", "DeepReweighter", "validate_reweight_options", "build_reweighter",
    "model_states", "Lookahead", "FitReweighting",
]
