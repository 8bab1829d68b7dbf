"""Where and how tensors run: the device a ``--device`` option names, the precision ``--precision auto``
chooses there, bf16 autocast (and whether this CPU has kernels for it), and the allocator and denormal settings that CPU training steps need.

Every command (``train``, ``eval``, ``cv``, ``lm``) and the SB3 callback resolve devices here, so that
``--device`` means the same everywhere and a missing GPU is one clear error.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

from lot_rl.errors import LoTUserError, require


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else must be a torch device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise LoTUserError(f"--device {name!r} is not a torch device (use auto, cpu, cuda, cuda:N)") from exc
    require(device.type != "cuda" or torch.cuda.is_available(), f"--device {name}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None:
        require(device.index < torch.cuda.device_count(),
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of bf16 autocast contexts (``precision="bf16"``), or of null contexts for fp32.

    A factory rather than one context, because autocast contexts are not reentrant across calls.
    """
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_bf16_kernels():
            warnings.warn(f"--precision bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no AVX-512 "
                          "bf16 kernels, so bf16 autocast is emulated and much slower than fp32 here "
                          "(8x for the Nature CNN on an AVX2 machine); use --precision fp32",
                          RuntimeWarning, stacklevel=2)
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """``--precision`` as it runs on ``device``: ``(fp32 or bf16, why)``.

    ``auto`` is bf16 where bf16 is native, so that autocast is fast: a CUDA device with bf16 arithmetic
    (Ampere and later) or a CPU with AVX-512 BF16 or AMX instructions; fp32 elsewhere (older GPUs, AVX2 and
    plain AVX-512 CPUs, other devices). ``fp32`` and ``bf16`` are taken as given.
    """
    require(precision in PRECISIONS, f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} has bf16 arithmetic"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "auto: this CPU has AVX-512 BF16 / AMX instructions"
        return "fp32", f"auto: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 instructions"
    return "fp32", f"auto: bf16 is not tuned for {device.type} devices here"


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The dtype autocast computes in on ``device`` right now: bf16 inside :func:`autocast_for`'s bf16 contexts,
    float32 outside any autocast context."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX tiles), where oneDNN's bf16 kernels beat
    fp32. Plain AVX-512 has bf16 kernels too (:func:`cpu_has_bf16_kernels`), but emulated, about as slow as fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: the kernel's list of CPU flags (Linux)
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            return False
        return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 and up); on AVX2 bf16 autocast is slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: assume it knows what it does
        return True


@functools.cache
def cpu_bf16_lstm_supported() -> bool:
    """Whether oneDNN can run an LSTM under CPU bf16 autocast on this CPU.

    CPUs without native bf16 (AVX-512 BF16 / AMX) make ``nn.LSTM`` fail under autocast with "could not
    create a primitive descriptor"; models ask this once and run their LSTMs in fp32 there instead.
    """
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:  # with autograd on: the first caller may be an evaluation under no_grad or inference mode
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = lstm(torch.zeros(1, 2, 4))
            out.float().sum().backward()
    except RuntimeError:
        return False
    return True


def adam(params, **hyperparameters) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel, one pass over each parameter instead of about ten element-wise
    operations: the same update to float rounding, and a step of the Nature CNN (weight decay on) takes 3.5 ms
    of one core instead of the default CPU implementation's 17 ms. Falls back to the default where there is no
    fused kernel for the parameters' device or dtype."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **hyperparameters)
    except RuntimeError:
        return torch.optim.Adam(params, **hyperparameters)


class HostToDevice:
    """Host arrays (a vector env's frames) to the training device: on CUDA through a page-locked staging buffer
    and an asynchronous copy, elsewhere as ``torch.as_tensor`` (on CPU: the array's memory, no copy).

    The buffer is reused from call to call; before overwriting it, the previous copy out of it is awaited (an
    event), so a caller may upload the next array while the GPU still works on the last one.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._staging: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, array) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.as_tensor(array, device=self.device)
        host = torch.as_tensor(array)
        if self._staging is None or self._staging.shape != host.shape or self._staging.dtype != host.dtype:
            self._staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        elif self._copied is not None:
            self._copied.synchronize()
        self._staging.copy_(host)
        on_device = self._staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        return on_device


class InferenceCopy:
    """The network's weights for inference between optimizer updates: bf16 copies under bf16 autocast.

    Autocast casts every fp32 weight to bf16 on every forward; acting 128 times per rollout on batches of 8
    that cast is most of the work (a Nature CNN forward on 8 frames: 3.0 ms of one core with fp32 weights
    under autocast, 1.7 ms with bf16 weights). The copy holds the same bf16 values autocast would make
    (round to nearest even), so outputs are identical. :meth:`refresh` after the weights changed; under fp32
    it hands back the network itself.
    """

    def __init__(self, module: torch.nn.Module, precision: str):
        self.module = module
        self.copy = None
        if precision == "bf16":
            self.copy = copy.deepcopy(module).to(torch.bfloat16).requires_grad_(False)

    def refresh(self) -> torch.nn.Module:
        """Copy the network's current weights into the bf16 copy (no allocation); return what to run."""
        if self.copy is None:
            return self.module
        with torch.no_grad():
            for target, source in zip(self.copy.state_dict().values(), self.module.state_dict().values()):
                target.copy_(source)
        return self.copy


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed activation buffers for reuse; return whether it took effect.

    Every CPU training step allocates and frees the same large activation tensors (the 256 x 4 x 84 x 84
    float input alone is 28 MB). glibc serves such blocks with fresh ``mmap`` pages and unmaps them on
    free, so every step pays page faults on first touch: about a fifth of a student step here. Raising the
    mmap threshold (to 32 MB, the largest glibc allows) and the trim threshold keeps them in the heap,
    which is what PyTorch's CPU tuning guide gets by switching to jemalloc or tcmalloc. Process-wide, and
    peak memory is not returned to the OS until exit. Linux/glibc only; ``LOT_RL_KEEP_FREED_MEMORY=0`` turns
    it off.
    """
    if os.environ.get("LOT_RL_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def flush_denormals(enabled: bool = True) -> Callable[[], None]:
    """Make CPU float math flush denormal numbers (below 1.2e-38 in fp32) to zero; return what undoes it.

    Adam with weight decay drives the weights of dead units towards zero geometrically (each step removes about
    ``lr * weight_decay / eps`` of them: 5% per step for LoT's students on MinAtar), into the denormal range
    after a few thousand steps; every matrix multiply that touches a denormal then takes a slow path, and a
    MinAtar student phase went from 7 s to 120-150 s per update. Flushing them (x86 FTZ/DAZ) only replaces such
    values by 0. It is a setting of the calling thread: torch's intra-op worker threads keep the slow path (a
    1024 x 1024 matrix multiply of denormals took 8.2 s, 3.9 s flushed with two threads, 0.05 s with one), so it
    works fully with ``torch.set_num_threads(1)``, as the MinAtar presets run.
    """
    if enabled and torch.set_flush_denormal(True):
        return lambda: torch.set_flush_denormal(False)
    return lambda: None
