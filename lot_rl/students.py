"""K students of one architecture as one batched computation (``torch.func.vmap`` over stacked parameters).

The students of LoT all read the same states (a PPO minibatch, a minibatch of the observation cache), so K
networks of one architecture can run as one: their parameters are stacked along a new first dimension and
``vmap(functional_call)`` turns each layer into one larger operation (a convolution with K times the output
channels for the first layer, grouped convolutions and batched matrix multiplies after it) instead of K
launches of smaller ones.

The math per student stays what it was: each network keeps its own ``nn.Parameter`` objects, now views of
its slice of the stacked tensors, so that its own optimizer (Adam state, weight decay), its own gradient
clipping and its state dict work unchanged; backward hands each network its slice of the stacked
gradient as ``.grad``. Checkpoints are the same in both forms (one state dict per student), so a run saved with sequential students resumes batched and back.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from lot_rl.errors import require


BATCHING_MODES = ("auto", "on", "off")


def batch_students_here(mode: str, num_students: int, device: torch.device) -> bool:
    """Whether ``--batch-students mode`` runs ``num_students`` students batched on ``device``.

    ``on``: whenever there are two or more; ``off``: never; ``auto``: on CUDA devices only. On a CPU one batched
    student step measured 0.8-1.0x the sequential steps' speed (Nature CNN, batch 256, K 1-4, one core of an
    AVX-512 BF16 Xeon: oneDNN's grouped convolutions are no faster than K plain ones, and a step of 256 frames
    already fills the core), while on a GPU K small networks in one launch each replace K launches.
    """
    require(mode in BATCHING_MODES, f"--batch-students {mode!r}: choose one of {', '.join(BATCHING_MODES)}")
    return num_students >= 2 and (mode == "on" or (mode == "auto" and device.type == "cuda"))


def stacking_obstacle(networks: Sequence[nn.Module]) -> str | None:
    """Why ``networks`` cannot run as one :class:`StudentStack`, or None if they can.

    They can when they are modules of one class with parameters of the same names, shapes, dtypes, devices
    and memory layouts, and without buffers (BatchNorm running statistics would be updated in place by every
    student at once).
    """
    if not networks:
        return "there are no students"
    first = networks[0]
    if any(type(net) is not type(first) for net in networks):
        return "the students are of different classes"
    if any(True for _ in first.buffers()):
        return f"the students have buffers ({next(name for name, _ in first.named_buffers())}), e.g. BatchNorm statistics"

    def signature(net: nn.Module) -> list[tuple]:
        return [(name, p.shape, p.dtype, p.device, p.stride(), p.requires_grad) for name, p in net.named_parameters()]

    if any(signature(net) != signature(first) for net in networks[1:]):
        return "the students' parameters differ in names, shapes, dtypes, devices or layouts"
    if not signature(first):
        return "the students have no parameters"
    return None


class StudentStack:
    """Run K networks of one architecture as one vmapped computation; train them through their own optimizers.

    Construction re-points every parameter of every network to its slice of one stacked tensor per parameter
    name (``(K, *shape)``, each slice in the parameter's own memory layout, e.g. channels-last). The parameter
    objects stay the same, so optimizers built over ``net.parameters()`` before or after keep working.

    Use: ``logits = stack.logits(inputs)`` (shape ``(K, batch, ...)``), a loss, ``backward()``, then each
    network's clip and optimizer step as usual: as soon as backward has accumulated a stacked gradient, each
    network's parameter gets its slice as ``.grad`` (a view: no copy).
    """

    def __init__(self, networks: Sequence[nn.Module]):
        obstacle = stacking_obstacle(networks)
        if obstacle is not None:
            raise ValueError(f"these students cannot be batched: {obstacle}")
        self.networks = list(networks)
        self.names = [name for name, _ in self.networks[0].named_parameters()]
        self.stacked: dict[str, torch.Tensor] = {}
        self.restack()
        # functional_call swaps the stacked slices into networks[0] for the call (and back afterwards);
        # the input is shared by all students (in_dims None): work on it alone (scaling frames...) runs once.
        self._forward = vmap(lambda params, inputs: functional_call(self.networks[0], params, (inputs,)),
                             in_dims=(0, None))

    def __len__(self) -> int:
        return len(self.networks)

    def restack(self) -> None:
        """(Re)build the stacked tensors from the networks' current parameters and point the parameters at them.

        Called at construction and after the networks were moved (``.to(device)``), which gives parameters
        new storage.
        """
        per_network = [dict(net.named_parameters()) for net in self.networks]
        for name in self.names:
            params = [named[name] for named in per_network]
            stacked = _empty_stack(params[0], len(params))
            with torch.no_grad():
                for row, param in zip(stacked, params):
                    row.copy_(param)
            stacked.requires_grad_(params[0].requires_grad)
            for row, param in zip(stacked.detach(), params):
                param.data = row  # same Parameter object, its storage now the stack's
            if stacked.requires_grad:
                stacked.register_post_accumulate_grad_hook(
                    lambda stacked, params=params: _hand_out(stacked.grad, params))
            self.stacked[name] = stacked

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every network's output on ``inputs``, stacked: ``(K, *one network's output shape)``.

        Under autocast the matrix-multiply family runs in autocast's dtype, as it would network by network:
        autocast does not reach inside ``vmap``, so :class:`_AutocastInVmap` does its casts here.
        """
        if torch.is_autocast_enabled(inputs.device.type):
            with _AutocastInVmap(torch.get_autocast_dtype(inputs.device.type)):
                return self._forward(self.stacked, inputs)
        return self._forward(self.stacked, inputs)

    def zero_grad(self) -> None:
        """Drop the stacked gradients (the optimizers drop the per-network views)."""
        for stacked in self.stacked.values():
            stacked.grad = None


class _AutocastInVmap(TorchFunctionMode):
    """Autocast's casts for the operations it runs in lower precision (convolutions, linear layers, matrix
    products), at the Python level where ``vmap``'s batched tensors still see them.

    ``torch.autocast`` works below ``vmap`` in PyTorch's dispatcher and does not cast batched operations: under
    it, vmapped students would run in fp32 (or fail on a bf16 input). Like autocast, this casts the float32
    tensor arguments of those operations to ``dtype`` (a differentiable cast: gradients reach the fp32 weights
    in fp32) and leaves every other operation to run in the dtype it gets.
    """

    LOWERED = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
               F.prelu, F.scaled_dot_product_attention, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
               torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.addbmm}

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.LOWERED:
            args = tuple(self._cast(a) for a in args)
            kwargs = {k: self._cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def _cast(self, value):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            return value.to(self.dtype)
        return value


def _hand_out(stacked_grad: torch.Tensor, params: Sequence[nn.Parameter]) -> None:
    """Each network's parameter gets its row of the stacked gradient as ``.grad`` (views: no copy)."""
    for row, param in zip(stacked_grad, params):
        param.grad = row


def _empty_stack(param: torch.Tensor, count: int) -> torch.Tensor:
    """An uninitialised ``(count, *param.shape)`` tensor whose every slice has ``param``'s strides (its memory
    layout: a channels-last convolution weight stays channels-last in the stack)."""
    dense = param.is_contiguous() or (param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last))
    if not dense:
        return param.new_empty((count, *param.shape))
    flat = param.new_empty((count, param.numel()))
    return flat.as_strided((count, *param.shape), (param.numel(), *param.stride()))
