"""Work that runs beside the training loop: ``lot-rl train --overlap-students`` runs the student phase of update k in
a worker thread while the main thread collects rollout k+1 (both only read the teacher; the PPO update k+1, the
first to need the students again, waits for it).

torch releases the GIL inside its operations, so the two threads compute at the same time. On a CPU they share
the cores: while work runs in the background, the worker gets half of the caller's torch threads (at least one)
and the caller keeps the rest (at least one), so that together they never ask for more threads than the caller
had; the caller gets all of them back when it collects the result. On a GPU the work runs on a side stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class BackgroundWork:
    """One piece of work at a time, run in a worker thread beside the caller (``enabled``) or inline.

    ``start(fn, *args)`` runs ``fn(*args)``, at once when not ``enabled``; :meth:`result` waits for it and returns
    its value (raising its error). Whatever ``fn`` changes must not be touched by the caller until then. Random
    numbers: give ``fn`` its own ``torch.Generator``; torch's global one is shared by both threads.
    """

    def __init__(self, enabled: bool, device: torch.device | str = "cpu"):
        self.enabled = enabled
        self.device = torch.device(device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lot-rl-background") if enabled else None
        self._stream = torch.cuda.Stream(self.device) if enabled and self.device.type == "cuda" else None
        self._future: Future | None = None
        self._inline: tuple[Any] | None = None  # the value of work run inline, until collected
        self._caller_threads = 0

    @property
    def pending(self) -> bool:
        """Whether work was started whose result was not collected yet."""
        return self._future is not None or self._inline is not None

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)``: in the worker thread (returns at once) or, when not enabled, here and now."""
        if self.pending:
            raise RuntimeError("BackgroundWork.start: collect the result of the work in flight first")
        if not self.enabled:
            self._inline = (fn(*args),)
            return
        self._caller_threads = torch.get_num_threads()
        worker_threads = max(1, self._caller_threads // 2)
        torch.set_num_threads(max(1, self._caller_threads - worker_threads))  # this thread's, not the worker's
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))  # what the caller queued first
        self._future = self._executor.submit(self._run, fn, args, worker_threads)

    def _run(self, fn: Callable[..., Any], args: tuple, threads: int) -> Any:
        torch.set_num_threads(threads)
        with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            return fn(*args)

    def result(self) -> Any:
        """Wait for the work started last and return its value (None if there is none to collect)."""
        if self._inline is not None:
            (value,), self._inline = self._inline, None
            return value
        if self._future is None:
            return None
        future, self._future = self._future, None
        try:
            return future.result()
        finally:
            torch.set_num_threads(self._caller_threads)
            if self._stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self._stream)

    def close(self) -> None:
        """Wait for work in flight (its result and error dropped: call :meth:`result` to have them) and stop the
        worker thread."""
        if self._future is not None:
            with contextlib.suppress(Exception):
                self.result()
        self._inline = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
