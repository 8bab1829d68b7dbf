"""Devices and precision: lot_rl.runtime."""

import sys
import warnings

import numpy as np
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


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (False, False, "fp32")])
def test_precision_auto_on_cpu_follows_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    runtime.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    try:
        precision, why = runtime.resolve_precision("auto", torch.device("cpu"))
    finally:
        runtime.cpu_has_native_bf16.cache_clear()
    assert precision == expected and why.startswith("auto: this CPU")
    # asked-for precisions are never changed
    assert runtime.resolve_precision("fp32", torch.device("cpu"))[0] == "fp32"
    assert runtime.resolve_precision("bf16", torch.device("cpu"))[0] == "bf16"


@pytest.mark.parametrize("cpuinfo, expected", [("flags : fpu avx512f avx512_bf16 amx_tile", True),
                                               ("flags : fpu avx2 avx512f", False)])
def test_native_bf16_falls_back_to_the_cpu_flags(monkeypatch, tmp_path, cpuinfo, expected):
    """A torch without the CPU probes: /proc/cpuinfo's flags decide."""
    runtime.cpu_has_native_bf16.cache_clear()
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: real_path(tmp_path / "cpuinfo") if p == "/proc/cpuinfo" else real_path(p))
    try:
        assert runtime.cpu_has_native_bf16() is expected
    finally:
        runtime.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_on_cuda_follows_native_bf16(monkeypatch, native, expected):
    seen = {}

    def is_bf16_supported(including_emulation=True):
        seen["including_emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    precision, why = runtime.resolve_precision("auto", torch.device("cuda", 0))
    assert precision == expected and "a GPU" in why
    assert seen["including_emulation"] is False  # emulated bf16 is slow: auto wants native


def test_precision_auto_elsewhere_is_fp32_and_unknown_names_are_refused():
    assert runtime.resolve_precision("auto", torch.device("meta"))[0] == "fp32"
    with pytest.raises(LoTUserError, match="--precision 'fp16'"):
        runtime.resolve_precision("fp16", torch.device("cpu"))


def test_inference_copy_acts_as_autocast_does_and_follows_the_weights(device):
    """Under bf16 the copy's weights are the bf16 values autocast casts to on every forward: the same outputs;
    refresh() brings in the network's new weights. Under fp32 it is the network itself."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 3))
    net = net.to(device, memory_format=torch.channels_last)
    x = torch.rand(5, 4, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    assert runtime.InferenceCopy(net, "fp32").refresh() is net
    inference = runtime.InferenceCopy(net, "bf16")
    for _ in range(2):
        acting = inference.refresh()
        assert acting is not net and acting[0].weight.dtype == torch.bfloat16
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            assert torch.equal(acting(x), net(x))
        with torch.no_grad():
            net[0].weight.add_(0.5)  # an optimizer step: seen after the next refresh only
    assert acting[0].weight.data_ptr() == inference.refresh()[0].weight.data_ptr()  # refreshed in place


def test_host_to_device_uploads_every_array_intact(device):
    """On CUDA through pinned memory and asynchronous copies (the staging buffer reused only once the last copy
    out of it is done); on the CPU the array itself, without a copy."""
    upload = runtime.HostToDevice(device)
    frames = [np.random.default_rng(i).integers(0, 256, (8, 4, 84, 84), dtype=np.uint8) for i in range(4)]
    uploaded = [upload(f) for f in frames]  # no synchronization in between: each must still arrive intact
    for array, tensor in zip(frames, uploaded):
        assert tensor.device.type == device.type and tensor.dtype == torch.uint8
        assert np.array_equal(tensor.cpu().numpy(), array)
    if device.type == "cpu":
        assert np.shares_memory(uploaded[0].numpy(), frames[0])
    else:
        assert upload._staging.is_pinned()


def test_fused_adam_makes_the_default_adams_update(device):
    """runtime.adam: torch's fused Adam where there is one, the same update as the default (to float rounding)."""
    torch.manual_seed(0)
    params = [torch.randn(64, 32, device=device), torch.randn(32, device=device)]
    runs = []
    for make in (lambda p: runtime.adam(p, lr=1e-2, eps=1e-5, weight_decay=1e-4),
                 lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-5, weight_decay=1e-4)):
        copies = [p.clone().requires_grad_() for p in params]
        optimizer = make(copies)
        for step in range(3):
            for p in copies:
                p.grad = torch.full_like(p, 0.1 * (step + 1)) + p.detach() * 0.01
            optimizer.step()
        runs.append((optimizer, copies))
    assert runs[0][0].defaults["fused"] is True
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
