"""Tests for lot_rl.supervised.reweight: meta-gradients, l2rw, the weighting networks, the fit adapter."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lot_rl.errors import LoTUserError
from lot_rl.supervised.reweight import (DeepReweighter, DeepWeightNet, FeatureProbe, FitReweighting,
                                        L2RWReweighter, MWNetReweighter, WeightStats, build_reweighter,
                                        find_classifier_head, lookahead_parameters, lookahead_validation_loss,
                                        normalize_batch_weights, per_sample_cross_entropy, trainable_parameters,
                                        validate_reweight_options)
from lot_rl.supervised.training import teacher_task_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


class TinyModel(nn.Module):
    """Two-layer classifier; ``fc`` is the head whose input are the penultimate features."""

    def __init__(self, d_in: int = 4, hidden: int = 6, classes: int = 3, batch_norm: bool = False):
        super().__init__()
        layers = [nn.Linear(d_in, hidden)] + ([nn.BatchNorm1d(hidden)] if batch_norm else []) + [nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def make_batch(n=8, d_in=4, classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def warm_sgd(model, x, y, **sgd):
    """An SGD optimizer that has taken one real step (so its momentum buffers exist)."""
    opt = torch.optim.SGD(model.parameters(), **sgd)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


# ------------------------------------------------------------------------------------------------------
# The lookahead mirrors the real optimizer step
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sgd", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, maximize=True),
])
def test_lookahead_equals_real_sgd_step(sgd):
    torch.manual_seed(0)
    model = TinyModel().double()
    x, y = make_batch(dtype=torch.float64)
    opt = warm_sgd(model, x, y, **sgd)
    weights = torch.rand(len(y), dtype=torch.float64)
    params = trainable_parameters(model)
    loss = teacher_task_loss(functional_call(model, params, (x,)), y, weights)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    predicted = {n: p.detach().clone() for n, p in lookahead_parameters(params, grads, opt).items()}
    teacher_task_loss(model(x), y, weights).backward()
    opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(predicted[name], p.detach(), rtol=0, atol=1e-12)


def test_lookahead_first_step_without_momentum_buffer_and_plain_fallbacks():
    model = TinyModel()
    params = trainable_parameters(model)
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # no buffers yet: buffer = gradient
    adam = torch.optim.Adam(model.parameters(), lr=0.01)  # documented simplification: plain step with its lr
    for opt, lr in ((fresh, 0.1), (adam, 0.01)):
        out = lookahead_parameters(params, grads, opt)
        for n, p in params.items():
            torch.testing.assert_close(out[n], p - lr)
    out = lookahead_parameters(params, grads, None, lr=0.5)
    torch.testing.assert_close(out["fc.bias"], params["fc.bias"] - 0.5)


# ------------------------------------------------------------------------------------------------------
# Meta-gradients against finite differences
# ------------------------------------------------------------------------------------------------------

def _meta_setup(method):
    torch.manual_seed(1)
    model = TinyModel(batch_norm=True).double()
    x, y = make_batch(10, seed=2, dtype=torch.float64)
    mx, my = make_batch(6, seed=3, dtype=torch.float64)
    opt = warm_sgd(model, x, y, lr=0.3, momentum=0.9, weight_decay=1e-3, nesterov=True)
    cls = {"mwnet": MWNetReweighter, "deep": DeepReweighter}[method]
    extra = {"num_classes": 3, "hidden": 8} if method == "deep" else {"hidden": 8}
    rw = cls(model, opt, mx, my, meta_batch_size=6, **extra)
    rw.weight_net.double()
    return model, opt, rw, x, y, mx, my


@pytest.mark.parametrize("method", ["mwnet", "deep"])
def test_meta_gradient_matches_finite_differences(method):
    model, opt, rw, x, y, mx, my = _meta_setup(method)

    def validation_loss():
        def weight_fn(losses, logits, features):
            return normalize_batch_weights(rw.raw_weights(losses, logits, features, y, 0.3))
        return lookahead_validation_loss(model, opt, x, y, weight_fn, mx, my, rw.probe)[0]

    params = list(rw.weight_net.parameters())
    analytic = torch.autograd.grad(validation_loss(), params)
    # directional derivatives along random directions through every parameter of the weighting network
    g = torch.Generator().manual_seed(0)
    h = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        for p, d in zip(params, direction):
            p.data.add_(h * d)  # p.data: the perturbation is not recorded by autograd
        up = validation_loss().item()
        for p, d in zip(params, direction):
            p.data.sub_(2 * h * d)
        down = validation_loss().item()
        for p, d in zip(params, direction):
            p.data.add_(h * d)
        predicted = sum(float((a * d).sum()) for a, d in zip(analytic, direction))
        assert predicted == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-10)
    assert max(float(a.abs().max()) for a in analytic) > 1e-6  # the check is not vacuous


def test_l2rw_eps_gradient_matches_finite_differences():
    model, opt, _, x, y, mx, my = _meta_setup("mwnet")
    eps = torch.zeros(len(y), dtype=torch.float64, requires_grad=True)

    def validation_loss(e):
        return lookahead_validation_loss(model, opt, x, y, lambda *_: e, mx, my)[0]

    (analytic,) = torch.autograd.grad(validation_loss(eps), eps)
    g = torch.Generator().manual_seed(0)
    h = 1e-6
    for direction in [torch.eye(len(y), dtype=torch.float64)[3], torch.randn(len(y), generator=g, dtype=torch.float64)]:
        numeric = (validation_loss(h * direction) - validation_loss(-h * direction)) / (2 * h)
        assert float(analytic @ direction) == pytest.approx(numeric.item(), rel=1e-5, abs=1e-10)
    assert float(analytic.abs().max()) > 1e-6


# ------------------------------------------------------------------------------------------------------
# l2rw
# ------------------------------------------------------------------------------------------------------

def test_l2rw_zero_weight_for_sample_opposing_the_validation_gradient():
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])  # sample 1 has the label the validation data contradicts
    rw = L2RWReweighter(model, opt, torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    w = rw.weights(x, y, model(x))
    assert w[1].item() == 0.0
    assert w[0].item() == pytest.approx(2.0)  # all the batch's weight (mean 1) on the helpful sample
    assert not w.requires_grad


def test_l2rw_weights_are_clamped_inner_products_with_the_validation_gradient():
    """For plain SGD, -dL_val/d eps_i = lr * <grad L_val, grad l_i> (exact at eps = 0)."""
    torch.manual_seed(0)
    model = TinyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    x, y = make_batch(12, seed=5)
    mx, my = make_batch(7, seed=6)
    w = L2RWReweighter(model, opt, mx, my).weights(x, y, model(x))
    params = list(model.parameters())
    g_val = torch.autograd.grad(F.cross_entropy(model(mx), my), params)
    dots = []
    for i in range(len(y)):
        g_i = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
        dots.append(sum((a * b).sum() for a, b in zip(g_val, g_i)))
    expected = normalize_batch_weights(torch.clamp(torch.stack(dots), min=0))
    torch.testing.assert_close(w, expected, rtol=1e-4, atol=1e-5)
    assert (w == 0).any() and (w > 0).any() and w.mean().item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------
# The weighter learns only through the validation loss; the model is not touched by the meta step
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["l2rw", "mwnet", "deep"])
def test_meta_step_leaves_the_model_untouched(method):
    torch.manual_seed(0)
    model = TinyModel(batch_norm=True)
    x, y = make_batch(16, seed=1)
    opt = warm_sgd(model, x, y, lr=0.1, momentum=0.9, weight_decay=1e-3)
    before = copy.deepcopy(model.state_dict())
    buffers = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    mx, my = make_batch(8, seed=2)
    rw = build_reweighter(method, model, opt, mx, my, num_classes=3, meta_lr=0.05)
    net_before = copy.deepcopy(rw.weight_net.state_dict()) if hasattr(rw, "weight_net") else None
    logits = model(x)
    before_forward_bn = copy.deepcopy(model.state_dict())  # the model's own forward updates BN stats
    w = rw.weights(x, y, logits, progress=0.5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before_forward_bn[k], rtol=0, atol=0)
    assert any(not torch.equal(before[k], before_forward_bn[k]) for k in before)  # sanity: BN stats do move
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(opt.state[p]["momentum_buffer"], buffers[id(p)]) for p in model.parameters())
    assert w.shape == (16,) and not w.requires_grad and w.mean().item() == pytest.approx(1.0, abs=1e-5)
    # the model's real step on the weighted loss sends no gradient into the weighting network
    teacher_task_loss(logits, y, w).backward()
    if net_before is not None:
        moved = [not torch.equal(net_before[k], v) for k, v in rw.weight_net.state_dict().items()]
        assert any(moved)  # the meta step did update the weighter
        grads_after_meta = [p.grad.clone() for p in rw.weight_net.parameters()]
        teacher_task_loss(model(x), y, w).backward()
        for p, g in zip(rw.weight_net.parameters(), grads_after_meta):
            assert torch.equal(p.grad, g)  # untouched by the model's backward


@pytest.mark.parametrize("method", ["mwnet", "deep"])
def test_weighter_gradient_vanishes_when_the_lookahead_cannot_move_the_model(method):
    """With lr = 0 the lookahead is the identity, so the validation loss does not depend on the weights:
    the weighter's gradient is exactly zero - the training loss alone gives it none."""
    torch.manual_seed(0)
    model = TinyModel()
    x, y = make_batch(16, seed=1)
    opt = warm_sgd(model, x, y, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for group in opt.param_groups:
        group["lr"] = 0.0
    mx, my = make_batch(8, seed=2)
    rw = build_reweighter(method, model, opt, mx, my, num_classes=3)
    net_before = copy.deepcopy(rw.weight_net.state_dict())
    rw.weights(x, y, model(x))
    assert all(torch.count_nonzero(p.grad) == 0 for p in rw.weight_net.parameters())
    for k, v in rw.weight_net.state_dict().items():
        torch.testing.assert_close(v, net_before[k], rtol=0, atol=0)


def test_meta_interval_runs_the_meta_step_every_k_model_steps():
    torch.manual_seed(0)
    model = TinyModel()
    x, y = make_batch(8)
    rw = build_reweighter("deep", model, torch.optim.SGD(model.parameters(), lr=0.1), *make_batch(4, seed=9),
                          num_classes=3, meta_interval=3)
    counts = []
    for _ in range(7):
        rw.weights(x, y, model(x))
        counts.append(rw.meta_steps)
    assert counts == [1, 1, 1, 2, 2, 2, 3]


def test_state_dict_round_trip_and_method_mismatch():
    torch.manual_seed(0)
    model = TinyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    meta = make_batch(20, seed=4)
    x, y = make_batch(8)
    a = build_reweighter("mwnet", model, opt, *meta, num_classes=3, meta_batch_size=5, seed=3)
    for _ in range(2):
        a.weights(x, y, model(x))
    b = build_reweighter("mwnet", model, opt, *meta, num_classes=3, meta_batch_size=5, seed=99)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as through a checkpoint file
    torch.testing.assert_close(a.weights(x, y, model(x)), b.weights(x, y, model(x)))
    assert a.meta_steps == b.meta_steps == 3
    deep = build_reweighter("deep", model, opt, *meta, num_classes=3)
    with pytest.raises(LoTUserError, match="--reweight mwnet"):
        deep.load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------------------------------
# The deep weighter's inputs
# ------------------------------------------------------------------------------------------------------

def test_probe_reads_penultimate_features_through_functional_call():
    model = TinyModel()
    probe = FeatureProbe(model)
    x, _ = make_batch(5)
    params = {n: p * 2 for n, p in model.named_parameters()}
    functional_call(model, params, (x,))
    expected = torch.tanh(F.linear(x, params["body.0.weight"], params["body.0.bias"]))
    torch.testing.assert_close(probe.features, expected)
    assert probe.feature_dim == 6 and probe.head_name == "fc"
    probe.remove()
    model(x)
    assert probe.features is None


def test_find_classifier_head_by_name_and_fallback():
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    assert find_classifier_head(seq)[0] == "2"
    assert find_classifier_head(seq, "0")[0] == "0"


def test_deep_weight_net_depends_on_features_label_and_progress():
    torch.manual_seed(0)
    net = DeepWeightNet(feature_dim=6, num_classes=3, hidden=8)
    feats, logits = torch.randn(4, 6), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    base = net(feats, logits, labels, 0.1)
    assert base.shape == (4,) and bool(((base > 0) & (base < 1)).all())
    assert not torch.allclose(base, net(feats + torch.randn(4, 6), logits, labels, 0.1))
    assert not torch.allclose(base, net(feats, logits, (labels + 1) % 3, 0.1))
    assert not torch.allclose(base, net(feats, logits, labels, 0.9))
    # its inputs are detached: no gradient reaches the model's features or logits
    feats.requires_grad_(True)
    net(feats, logits, labels, 0.1).sum().backward()
    assert feats.grad is None


# ------------------------------------------------------------------------------------------------------
# Statistics and helpers
# ------------------------------------------------------------------------------------------------------

def test_weight_stats_split_corrupted_and_clean():
    stats = WeightStats()
    stats.update(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([False, True, False, True]))
    stats.update(torch.tensor([0.5, 1.5]), torch.tensor([True, False]))
    stats.add_meta_loss(2.0)
    s = stats.summary()
    assert s["reweight/mean_weight_clean"] == pytest.approx((2 + 1 + 1.5) / 3)
    assert s["reweight/mean_weight_corrupted"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert s["reweight/zero_weight_fraction"] == pytest.approx(1 / 6)
    assert s["reweight/meta_loss"] == 2.0
    stats.reset()
    assert math.isnan(stats.summary()["reweight/mean_weight"])


def test_weighted_task_loss_and_normalization():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    per_sample = per_sample_cross_entropy(logits, labels)
    w = torch.tensor([0.0, 2.0, 1.0, 1.0])
    assert teacher_task_loss(logits, labels, w).item() == pytest.approx((w * per_sample).mean().item())
    assert teacher_task_loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    torch.testing.assert_close(normalize_batch_weights(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))
    assert torch.equal(normalize_batch_weights(torch.zeros(3)), torch.zeros(3))


# ------------------------------------------------------------------------------------------------------
# Bad options
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(method="attention"), "--reweight 'attention'"),
    (dict(meta_interval=0), "--meta-interval must be >= 1"),
    (dict(method="l2rw", meta_interval=4), "--meta-interval must be 1 with --reweight l2rw"),
    (dict(meta_size=0), "--reweight deep learns from a clean meta set"),
    (dict(meta_size=-1), "--meta-size must be >= 0"),
    (dict(meta_size=500, train_size=500), "--meta-size 500 leaves no training data"),
])
def test_bad_reweight_options(kwargs, match):
    options = dict(method="deep", meta_size=100, meta_interval=1)
    options.update(kwargs)
    with pytest.raises(LoTUserError, match=match):
        validate_reweight_options(**options)


def test_bad_options_at_construction():
    model = TinyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = make_batch(4)
    with pytest.raises(LoTUserError, match="--reweight 'mw'"):
        build_reweighter("mw", model, opt, *meta, num_classes=3)
    with pytest.raises(LoTUserError, match="--meta-interval must be 1 with --reweight l2rw"):
        build_reweighter("l2rw", model, opt, *meta, num_classes=3, meta_interval=2)
    with pytest.raises(LoTUserError, match="--meta-lr must be > 0"):
        build_reweighter("mwnet", model, opt, *meta, num_classes=3, meta_lr=0.0)
    with pytest.raises(LoTUserError, match="has none"):
        build_reweighter("deep", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), None, *meta, num_classes=3)
    with pytest.raises(LoTUserError, match="no nn.Linear submodule named 'head'"):
        DeepReweighter(model, opt, *meta, num_classes=3, head="head")
    assert build_reweighter("none", model, opt, *meta, num_classes=3) is None


# ------------------------------------------------------------------------------------------------------
# Calling before or after the model's forward; the training-loop adapter
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mwnet", "deep"])
def test_weights_before_and_after_the_forward_agree(method):
    """Without logits the states come from the lookahead's own forward (or a side-effect-free one)."""
    torch.manual_seed(0)
    model = TinyModel(batch_norm=True)
    x, y = make_batch(16, seed=1)
    meta = make_batch(8, seed=2)
    twins = []
    for _ in range(2):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(5)
        twins.append(build_reweighter(method, model, opt, *meta, num_classes=3, meta_interval=2, meta_lr=0.05))
    after, before = twins
    for _ in range(3):  # meta step, plain step, meta step
        w_after = after.weights(x, y, model(x), progress=0.2)
        w_before = before.weights(x, y, None, progress=0.2)
        torch.testing.assert_close(w_after, w_before, rtol=1e-5, atol=1e-6)
    assert after.meta_steps == before.meta_steps == 2


def test_fit_adapter_passes_inputs_progress_and_corrupted_mask():
    torch.manual_seed(0)
    model = TinyModel()
    meta = make_batch(8, seed=2)
    rw = build_reweighter("deep", model, torch.optim.SGD(model.parameters(), lr=0.1), *meta, num_classes=3)
    twin = build_reweighter("deep", model, torch.optim.SGD(model.parameters(), lr=0.1), *meta, num_classes=3)
    twin.load_state_dict(copy.deepcopy(rw.state_dict()))
    twin.weight_net.load_state_dict(rw.weight_net.state_dict())
    corrupted = torch.tensor([True, False] * 8)
    adapter = FitReweighting(rw, total_steps=4, corrupted=corrupted)
    x, y = make_batch(16, seed=1)
    w = adapter.weights(torch.arange(16), y, inputs=x)
    w2 = adapter.weights(torch.arange(16), y, inputs=x)
    torch.testing.assert_close(w, twin.weights(x, y, progress=0.0))
    torch.testing.assert_close(w2, twin.weights(x, y, progress=0.25))  # progress = step / total_steps
    with pytest.raises(RuntimeError, match="needs the batch inputs"):
        adapter.weights(torch.arange(16), y)
    metrics = adapter.epoch_metrics()
    both = torch.cat([w, w2])
    assert metrics["reweight/mean_weight_corrupted"] == pytest.approx(float(both[corrupted.repeat(2)].mean()))
    assert metrics["reweight/mean_weight_clean"] == pytest.approx(float(both[~corrupted.repeat(2)].mean()))
    assert adapter.state_dict()["step"] == 2


# ------------------------------------------------------------------------------------------------------
# End to end: short lot-rl cv runs on noisy digits through training.fit's sample weighting
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, alpha", [("none", 0.0), ("l2rw", 0.0), ("mwnet", 0.0), ("deep", 0.5)])
def test_end_to_end_cv_on_noisy_digits(method, alpha, tmp_path, load_script):
    from lot_rl.runlog import read_metrics
    from lot_rl.supervised.cv import CVArgs

    bench = load_script("benchmark_reweight")
    args = CVArgs(dataset="digits", epochs=2, width=8, batch_size=32, val_size=100, device="cpu", seed=1,
                  alpha=alpha, num_students=1 if alpha > 0 else 0, student_steps_ratio=1, run_dir=str(tmp_path),
                  run_name=method)
    summary = bench.run_cv_with_reweighting(args, method, label_noise=0.4, noise_type="symmetric", meta_size=50,
                                            meta_interval=1 if method == "l2rw" else 2, meta_batch_size=50,
                                            meta_lr=1e-2)
    assert summary["finished"] and summary["best_epoch"] >= 1
    assert summary["test"]["teacher/test_acc"] > 0.25  # chance is 0.1: two short epochs at 40% noise
    rows = read_metrics(tmp_path / method)
    epochs = [r for r in rows if "teacher/val_acc" in r]
    assert len(epochs) == 2
    assert list((tmp_path / method).glob("events.out.tfevents.*"))
    if method == "none":
        assert not any("reweight/mean_weight" in r for r in rows)
        return
    for row in epochs:
        mean = row["reweight/mean_weight"]
        assert (mean == pytest.approx(1.0, abs=1e-5)) if method != "l2rw" else (0 < mean <= 1 + 1e-5)
        assert math.isfinite(row["reweight/meta_loss"]) and math.isfinite(row["reweight/mean_weight_corrupted"])
    if alpha > 0:
        assert all(r["lot/teacher_kl"] > 0 for r in epochs)  # LoT ran alongside the reweighting
    if method == "l2rw":  # its signal is strong from the first steps
        assert summary["weight_corrupted"] < summary["weight_clean"]


def _cv_has_reweight_options() -> bool:
    import dataclasses

    from lot_rl.supervised.cv import CVArgs
    return "reweight" in {f.name for f in dataclasses.fields(CVArgs)}


@pytest.mark.skipif(not _cv_has_reweight_options(), reason="lot-rl cv has no --reweight options yet")
@pytest.mark.parametrize("argv, match", [
    (["--reweight", "l2rw", "--meta-interval", "2"], "--meta-interval must be 1 with --reweight l2rw"),
    (["--reweight", "deep", "--meta-size", "0"], "--reweight deep learns from a clean meta set"),
    (["--reweight", "mwnet", "--meta-lr", "0"], "--meta-lr must be > 0"),
    (["--label-noise", "0.6", "--noise-type", "pair"], "--label-noise 0.6 with --noise-type pair"),
    (["--reweight", "deep", "--meta-size", "5000"], "--meta-size must be between 1 and"),
])
def test_cv_command_line_reweight_errors(argv, match, tmp_path, capsys):
    from lot_rl.cli import main

    assert main(["cv", *argv, "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


@pytest.mark.skipif(not _cv_has_reweight_options(), reason="lot-rl cv has no --reweight options yet")
def test_cv_resume_continues_the_reweighter_exactly(tmp_path):
    """An interrupted run resumed from its checkpoint ends where the uninterrupted one does."""
    from lot_rl.supervised.cv import CVArgs, train_cv

    def args(name):
        return CVArgs(dataset="digits", epochs=2, width=4, batch_size=64, val_size=100, device="cpu", seed=3,
                      alpha=0.0, num_students=0, run_dir=str(tmp_path), run_name=name, label_noise=0.4,
                      reweight="deep", meta_size=50, meta_batch_size=20, meta_interval=2)

    whole = train_cv(args("whole"))
    assert not train_cv(args("cut"), max_steps=7)["finished"]  # stops inside the first epoch
    resumed = train_cv(args("cut"), resume=tmp_path / "cut")
    assert resumed["finished"]
    assert resumed["test"] == whole["test"]
