"""Data-parallel training over processes: ``torchrun`` (or ``lot-rl VERB --nproc K``) for ``train``, ``cv``, ``lm``.

Under ``torchrun`` every process (a *rank*) runs the same command on its own share of the data; after each
backward the gradients of every network are averaged over the ranks (:func:`average_gradients`), so every
rank takes the same optimizer step and all hold identical parameters. Rank 0 (:func:`is_main_process`) alone
writes the run folder. Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) every function here is a
no-op and a command runs exactly as in one process.

Backend: NCCL when the command runs on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on the CPU;
``--dist-backend`` (the ``LOT_RL_DIST_BACKEND`` environment variable) chooses one explicitly. Collectives of
Python objects (episode statistics, checkpoint parts) always go through a gloo group, so they never occupy
GPU memory.

    torchrun --standalone --nproc-per-node 2 -m lot_rl train --env-id MinAtar/Breakout-v1
    lot-rl train --nproc 2 --env-id MinAtar/Breakout-v1          # the same, launched for you
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import sys
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from lot_rl.errors import LoTUserError, require
from lot_rl.runtime import resolve_device

BACKENDS = ("auto", "nccl", "gloo")
BACKEND_ENV = "LOT_RL_DIST_BACKEND"
# The verbs that train data-parallel under torchrun (and accept --nproc / --dist-backend).
VERBS = ("train", "cv", "lm")

T = TypeVar("T")
_object_group: Any = None  # the gloo group for object collectives (the default group unless it is NCCL)
_requested_backend: str | None = None  # --dist-backend of this process's command line
_previous_sigterm: Any = None  # the SIGTERM handler before setup() put its own


class PeerFailure(RuntimeError):
    """Another process of the run stopped (crashed, was killed): this one cannot go on."""


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` (``torch.distributed.run``) launch."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 in a single process; torchrun's ``RANK`` before the process group starts)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched_by_torchrun() else 0


def is_main_process() -> bool:
    """Rank 0: the one process that writes logs, checkpoints, videos and W&B."""
    return rank() == 0


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of ``batch`` along dim 0 (which the world size divides): with every rank
    drawing the same global batch, the ranks' shares are disjoint and cover it (``DistributedSampler``'s
    partition). ``batch`` itself in a single process."""
    if not is_distributed():
        return batch
    size = batch.shape[0] // world_size()
    return batch[rank() * size:(rank() + 1) * size]


def rank_seed(seed: int, stride: int = 1) -> int:
    """This rank's seed: ``seed + rank * stride``. With ``stride`` = envs per rank, the envs of all ranks get the
    seeds one process with all the envs would give them (``seed``, ``seed + 1``, ...), and rank 0 keeps ``seed``."""
    return seed + rank() * stride


def setup(device_option: str, backend: str | None = None) -> torch.device:
    """This rank's device; under ``torchrun``, the process group is started here (once).

    Outside ``torchrun`` this is :func:`lot_rl.runtime.resolve_device`. Under it, ``--device auto``/``cuda``
    becomes ``cuda:LOCAL_RANK`` (NCCL), ``--device cpu`` uses gloo; ``backend`` (default: ``--dist-backend``'s
    environment variable, else ``auto``) overrides the choice. Refused in one line: NCCL without CUDA, more
    ranks on this node than GPUs, ``--device cuda:N`` (each rank's GPU is its ``LOCAL_RANK``).
    """
    if not launched_by_torchrun():
        return resolve_device(device_option)
    backend = backend or _requested_backend or os.environ.get(BACKEND_ENV, "auto")
    require(backend in BACKENDS, f"--dist-backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = resolve_device(device_option)
    check_backend(backend, device, local_world)
    if device.type == "cuda":
        require(device.index is None or int(os.environ["WORLD_SIZE"]) == 1,
                f"--device {device_option}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                f"give --device cuda (or auto)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    global _object_group, _previous_sigterm
    if not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        init_args = {"device_id": device} if chosen == "nccl" else {}
        dist.init_process_group(chosen, **init_args)
        if world_size() > 1 and _previous_sigterm is None:
            # torchrun stops the other ranks with SIGTERM when one fails: say so instead of dying silently.
            _previous_sigterm = signal.signal(signal.SIGTERM, _stopped_by_launcher)
    if _object_group is None:  # (also for a process group its caller started)
        _object_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else dist.group.WORLD
    return device


def check_backend(backend: str, device: torch.device, processes_per_node: int) -> None:
    """Refuse, in one line, a backend this device cannot run and more CUDA ranks per node than GPUs."""
    require(backend != "nccl" or device.type == "cuda",
            f"--dist-backend nccl needs CUDA; this process runs on {device} (use gloo, or --device cuda on a "
            f"machine with GPUs)")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        require(processes_per_node <= count,
                f"{processes_per_node} processes per node but this machine has {count} CUDA device(s): "
                f"use --nproc-per-node {count} or fewer (one GPU per process)")


def _stopped_by_launcher(signum, frame) -> None:
    raise PeerFailure(f"rank {rank()} was stopped by the launcher (SIGTERM): another process of the run failed "
                      f"or the run was cancelled")


def teardown() -> None:
    """End the process group (if one runs), forget ``--dist-backend``, give SIGTERM its handler back."""
    global _object_group, _requested_backend, _previous_sigterm
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _previous_sigterm is not None:
        signal.signal(signal.SIGTERM, _previous_sigterm)
    _object_group, _requested_backend, _previous_sigterm = None, None, None


# ----------------------------------------------------------------------------------------------------
# Tensors: gradients and parameters


def _flat_apply(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    """Run one collective on all ``tensors`` at once through a flat buffer, then copy the result back (any
    memory format: channels-last convolution weights are not contiguous in torch's sense)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    collective(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


def _mean_in_place(flat: torch.Tensor) -> None:
    """All-reduce ``flat`` to its mean over the ranks (a sum, then a division: gloo has no average)."""
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size())


def average_gradients(*modules: nn.Module) -> None:
    """Replace each parameter's gradient by its mean over the ranks: one all-reduce per module.

    Call it after ``backward`` and before ``clip_grad_norm_`` and the optimizer step, for the teacher and for
    each student that took a gradient: every rank then clips the same gradient and takes the same step. The
    ranks' losses are means over their own minibatches of equal size, so the mean of the gradients is the
    gradient of the mean loss over the union of the minibatches. Parameters without a gradient are skipped
    (the same ones on every rank). A no-op in a single process.
    """
    if not is_distributed():
        return
    for module in modules:
        with torch.no_grad():
            _flat_apply([p.grad for p in module.parameters() if p.grad is not None], _mean_in_place)


def broadcast_parameters(*modules: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (at the start: the ranks initialised theirs from other
    seeds). A no-op in a single process."""
    if not is_distributed():
        return
    for module in modules:
        with torch.no_grad():
            _flat_apply(list(module.state_dict(keep_vars=True).values()), lambda flat: dist.broadcast(flat, 0))


def average_buffers(*modules: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, so that evaluation and the
    checkpoint see one model; integer buffers (batches seen) are equal on every rank. No-op in one process."""
    if not is_distributed():
        return
    for module in modules:
        with torch.no_grad():
            _flat_apply([b for b in module.buffers() if b.is_floating_point()], _mean_in_place)


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (every rank passes the same keys), in float64 on the CPU (gloo group);
    unchanged in a single process."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=_object_group)
    return dict(zip(keys, flat.tolist()))


def mean_across_ranks(value: float) -> float:
    """``value`` averaged over the ranks (e.g. PPO's approximate KL, so that ``--target-kl`` stops every rank's
    epochs together); ``value`` itself in a single process."""
    if not is_distributed():
        return float(value)
    return sum_across_ranks({"v": value})["v"] / world_size()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (a stop request seen by one rank stops all at the same update)."""
    return sum_across_ranks({"flag": float(bool(flag))})["flag"] > 0


# ----------------------------------------------------------------------------------------------------
# Python objects (always over gloo)


def _to_bytes(obj: Any) -> bytes:
    # torch.save, not pickle: torch's pickling of tensors inside gather_object fails to load back here
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    # The peers' own objects (NumPy env states among them), hence weights_only=False
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (tensors, NumPy arrays, Python values), in rank order, on every rank (``[obj]`` in a
    single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, _to_bytes(obj), group=_object_group)
    return [_from_bytes(data) for data in out]


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` in a single process); tensors
    arrive on the CPU."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main_process() else None
    dist.gather_object(_to_bytes(obj), out, dst=dist.get_global_rank(_object_group, 0), group=_object_group)
    return [_from_bytes(data) for data in out] if out is not None else None


def collect_on_main(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order on rank 0, ``[]`` on the others (``items`` in a single
    process): e.g. the games that ended in each process's rollout, for rank 0 to log."""
    gathered = gather_to_main(items)
    return [item for part in gathered for item in part] if gathered is not None else []


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [_to_bytes(obj) if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_object_group)
    return _from_bytes(box[0])


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank; a :class:`LoTUserError` it raises is raised
    on every rank (so that no rank waits for a peer that gave up). E.g. creating the run folder."""
    if not is_distributed():
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if is_main_process():
        try:
            outcome = (True, fn())
        except LoTUserError as exc:
            outcome = (False, str(exc))
    ok, value = broadcast_from_main(outcome)
    if not ok:
        raise LoTUserError(value)
    return value


def require_same_world_size(checkpoint: dict[str, Any]) -> None:
    """Refuse, in one line, to resume a checkpoint written by a run of another number of processes (each
    process's envs, RNGs and data position are in it, one per rank)."""
    saved = checkpoint.get("world_size", 1)
    require(saved == world_size(), f"checkpoint {checkpoint['path']} is from a run of {saved} process(es); resume "
                                   f"it with as many (torchrun --nproc-per-node / --nproc), not {world_size()}")


def own_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """This rank's part of a checkpoint written with :func:`gather_rank_states`: rank 0's is at the top level
    (as in a one-process run), the others' in ``other_ranks``."""
    return checkpoint if rank() == 0 else checkpoint["other_ranks"][rank() - 1]


def gather_rank_states(state: dict[str, Any]) -> dict[str, Any] | None:
    """Every rank's own ``state`` (its RNGs, data position...) for rank 0's checkpoint: rank 0's keys at the top
    level, ``world_size`` and the others' in ``other_ranks``; None on the other ranks."""
    states = gather_to_main(state)
    if states is None:
        return None
    return {**states[0], "world_size": len(states), "other_ranks": states[1:]}


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier(group=_object_group)


def peer_failure(exc: BaseException, run_dir: Any = None) -> PeerFailure:
    """The error to raise when a collective failed because another rank is gone: one line that says what
    happened and how to continue (the last checkpoint is intact: checkpoints are written atomically)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = re.sub(r"^\[[^\]]*\]\s*", "", detail)  # gloo's "[.../pair.cc:537] " source location
    where = f": the last checkpoint is intact, continue with --resume {run_dir}" if run_dir else ""
    return PeerFailure(f"rank {rank()}: another process of this {world_size()}-process run stopped "
                       f"({detail[:160]}){where}")


def is_peer_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure because another rank is gone (gloo: the connection was reset or
    closed; NCCL: the watchdog's error), in a distributed run."""
    if isinstance(exc, PeerFailure):
        return True
    if not is_distributed() or not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection closed", "Connection reset"))


# ----------------------------------------------------------------------------------------------------
# The launcher: `lot-rl VERB --nproc K`


def add_launcher_options(parser: argparse.ArgumentParser) -> None:
    """``--nproc`` and ``--dist-backend`` on a training verb's parser."""
    group = parser.add_argument_group(
        "many devices", "data-parallel training over K processes (the same as torchrun --standalone "
        "--nproc-per-node K -m lot_rl VERB ...): one GPU per process on CUDA, CPU processes otherwise")
    group.add_argument("--nproc", type=int, default=1, metavar="K",
                       help="launch K processes on this machine through torch.distributed.run (1: this process)")
    group.add_argument("--dist-backend", default=None, choices=BACKENDS,
                       help=f"with torchrun or --nproc: auto (nccl on CUDA, gloo on CPU), nccl or gloo "
                            f"(or the {BACKEND_ENV} environment variable)")


def take_launcher_options(ns: argparse.Namespace) -> tuple[int, str | None]:
    """Remove ``--nproc`` and ``--dist-backend`` from ``ns`` (they are no training options); return them.
    ``--dist-backend`` becomes :func:`setup`'s default in this process (until :func:`teardown`)."""
    global _requested_backend
    _requested_backend = vars(ns).pop("dist_backend", None)
    return int(vars(ns).pop("nproc", 1)), _requested_backend


def launch(verb: str, argv: list[str], nproc: int, device_option: str = "auto", backend: str | None = None) -> int:
    """Run ``lot-rl VERB argv`` in ``nproc`` processes on this machine (``torch.distributed.run --standalone``);
    return the exit code (the first failed process's). ``argv`` must not hold ``--nproc`` itself.

    Refused before anything starts, in one line: ``nproc`` < 1, NCCL without CUDA, more processes than GPUs.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    require(nproc >= 1, f"--nproc must be >= 1, got {nproc}")
    require(not launched_by_torchrun(), "--nproc under torchrun: give the process count to torchrun only")
    device = resolve_device(device_option)
    check_backend(backend or os.environ.get(BACKEND_ENV, "auto"), device, nproc)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="lot_rl", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    saved_environment = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default: K processes share the cores
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "lot_rl", verb, *argv)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        local_rank, failure = failures[0]
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        if code != 2:  # exit 2: the process already printed its one-line user error
            print(f"lot-rl {verb}: error: process {failure.rank} (of {nproc}) failed with exit code "
                  f"{failure.exitcode}; see its output above", file=sys.stderr)
        return code
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
    return 0


def strip_launcher_option(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc K`` / ``--nproc=K`` (what the launched processes are given)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
