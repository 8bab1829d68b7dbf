"""BackgroundWork: work in a worker thread beside the caller, with the torch threads split while both run."""

import threading

import pytest
import torch

from lot_rl.overlap import BackgroundWork


def test_background_work_runs_beside_the_caller_with_half_the_threads():
    torch.set_num_threads(2)
    work = BackgroundWork(enabled=True)
    release = threading.Event()
    seen = {}

    def job(x):
        seen["thread"] = threading.current_thread() is threading.main_thread()
        seen["threads"] = torch.get_num_threads()
        release.wait(10)  # still running while the caller goes on
        return x * 2

    work.start(job, 21)
    assert work.pending and torch.get_num_threads() == 1  # the caller's share while the worker runs
    release.set()
    assert work.result() == 42 and not work.pending
    assert seen == {"thread": False, "threads": 1}
    assert torch.get_num_threads() == 2 and work.result() is None  # all threads back; nothing left to collect
    with pytest.raises(RuntimeError, match="collect the result"):
        work.start(lambda: None)
        work.start(lambda: None)
    work.close()


def test_inline_work_runs_at_once_and_errors_reach_the_caller():
    inline = BackgroundWork(enabled=False)
    calls = []
    inline.start(calls.append, 1)
    assert calls == [1] and inline.pending and inline.result() is None and not inline.pending
    background = BackgroundWork(enabled=True)
    background.start(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        background.result()
    background.start(lambda: 1 / 0)
    background.close()  # an error nobody collects does not escape close()
    assert not background.pending
