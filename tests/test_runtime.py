"""Devices and precision: lot_rl.runtime."""

import sys
import warnings

import pytest
import torch

from lot_rl import runtime
from lot_rl.errors import LoTUserError


def test_resolve_device_auto_and_explicit():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.resolve_device("auto").type == expected


@pytest.mark.parametrize("name, message", [("tpu0", "is not a torch device"), ("cuda:99", "--device cuda:99")])
def test_resolve_device_rejects_unknown_or_missing_devices(name, message):
    with pytest.raises(LoTUserError, match=message):
        runtime.resolve_device(name)


def test_bf16_autocast_lowers_matmuls_and_fp32_does_not():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with runtime.autocast_for(torch.device("cpu"), "bf16")():
            assert layer(x).dtype == torch.bfloat16
    with runtime.autocast_for(torch.device("cpu"), "fp32")():
        assert layer(x).dtype == torch.float32


def test_bf16_on_a_cpu_without_bf16_kernels_warns_and_names_the_fix(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16_kernels", lambda: False)
    with pytest.warns(RuntimeWarning, match="use --precision fp32"):
        runtime.autocast_for(torch.device("cpu"), "bf16")
    monkeypatch.setattr(runtime, "cpu_has_bf16_kernels", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.autocast_for(torch.device("cpu"), "bf16")
        runtime.autocast_for(torch.device("cpu"), "fp32")


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    runtime.keep_freed_memory.cache_clear()
    monkeypatch.setenv("LOT_RL_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
    runtime.keep_freed_memory.cache_clear()
    monkeypatch.delenv("LOT_RL_KEEP_FREED_MEMORY")
    expected = sys.platform.startswith("linux")  # glibc accepts both settings
    assert runtime.keep_freed_memory() is expected


def test_flush_denormals_zeroes_them_and_is_undone():
    tiny = torch.tensor([1e-39, 3e-39, 1.0])  # the first two are fp32 denormals
    assert (tiny * 1.0)[0] > 0
    restore = runtime.flush_denormals(True)
    try:
        assert (tiny * 1.0).tolist() == [0.0, 0.0, 1.0]  # flushed where the CPU supports it (x86)
    finally:
        restore()
    assert (tiny * 1.0)[0] > 0  # the default is back
    runtime.flush_denormals(False)()  # off: nothing to undo
    assert (tiny * 1.0)[0] > 0
