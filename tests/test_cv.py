"""``lot-rl cv``: PreResNet, the LoT supervised step against hand computations, end to end, resume, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lot_rl.checkpoint import load_checkpoint
from lot_rl.cli import main
from lot_rl.errors import LoTUserError
from lot_rl.regularizer import STUDENT_LOSSES, Students
from lot_rl.runlog import read_metrics
from lot_rl.supervised.cv import CVArgs, build, train_cv
from lot_rl.supervised.models import PreResNet
from lot_rl.supervised.training import LoTSettings, LoTSupervisedTrainer, teacher_task_loss
from test_supervised_data import write_cifar10

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


# ---------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("depth,channels", [(8, 1), (20, 3)])
def test_preresnet_shapes_and_depth(depth, channels):
    model = PreResNet(depth, num_classes=7, in_channels=channels)
    out = model(torch.randn(5, channels, 16, 16))
    assert out.shape == (5, 7)
    weighted = [m for m in model.modules() if isinstance(m, nn.Linear) or
                (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))]
    assert len(weighted) == depth  # 6n+2 = stem + 2 convs per block x 3n blocks + classifier
    if depth == 20:
        assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6  # the paper's ResNet-20 size


@pytest.mark.parametrize("depth", [10, 2, 21])
def test_preresnet_rejects_depth_not_6n_plus_2(depth):
    with pytest.raises(LoTUserError, match=f"--depth {depth} is not of the form 6n\\+2"):
        PreResNet(depth)


# ---------------------------------------------------------------------------------------------------- losses


def hand_log_softmax(x):
    return x - torch.log(torch.exp(x - x.max(-1, keepdim=True).values).sum(-1, keepdim=True)) \
        - x.max(-1, keepdim=True).values


def hand_kl(p, q, T):
    """T^2 * mean over rows of sum softmax(q/T) * (log softmax(q/T) - log softmax(p/T)), written out."""
    lq, lp = hand_log_softmax(q / T), hand_log_softmax(p / T)
    return T**2 * (torch.exp(lq) * (lq - lp)).sum(-1).mean()


def hand_ce(logits, labels):
    return -hand_log_softmax(logits)[torch.arange(len(labels)), labels].mean()


def test_teacher_task_loss_weights_before_reduction():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    per_sample = -hand_log_softmax(logits)[torch.arange(6), labels]
    assert teacher_task_loss(logits, labels).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.5, 2.0])
    assert teacher_task_loss(logits, labels, w).item() == pytest.approx((w * per_sample).mean().item(), rel=1e-6)
    # Language modeling: one weight per sequence of a (batch, time) label grid.
    seq_logits, seq_labels = torch.randn(2, 3, 4, generator=g), torch.randint(0, 4, (2, 3), generator=g)
    per_token = -hand_log_softmax(seq_logits)[torch.arange(2)[:, None], torch.arange(3), seq_labels]
    expected = (torch.tensor([[3.0], [1.0]]) * per_token).mean()
    assert teacher_task_loss(seq_logits, seq_labels, torch.tensor([3.0, 1.0])).item() == pytest.approx(expected.item())


def make_pair(teacher_bn: bool = False):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 4)) if teacher_bn else nn.Linear(5, 4)
    student = nn.Linear(5, 4)
    return teacher, student


def make_trainer(teacher, student, **settings) -> LoTSupervisedTrainer:
    optimizer = torch.optim.SGD(teacher.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    students = Students([student], lambda p: torch.optim.SGD(p, lr=1.0), temperature=settings["temperature"])
    return LoTSupervisedTrainer(teacher, optimizer, scheduler, students, LoTSettings(**settings))


def grads_of(module, loss_fn):
    """Gradients of ``loss_fn(copy)`` w.r.t. a double-precision copy of ``module``'s parameters."""
    clone = copy.deepcopy(module).double()
    loss = loss_fn(clone)
    return torch.autograd.grad(loss, list(clone.parameters()))


@pytest.mark.parametrize("variant", STUDENT_LOSSES)
def test_teacher_step_applies_the_hand_computed_lot_gradients(variant):
    alpha, T = 0.7, 1.5
    teacher, student = make_pair()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)
    xd = x.double()
    t_fixed, s_fixed = teacher.double()(xd).detach(), student.double()(xd).detach()
    teacher.float(), student.float()

    symmetric = variant.startswith("symmetric")

    def teacher_objective(t):
        """The reference's teacher loss: CE + alpha kl(t, s), and + alpha kl(s, t) in the symmetric variants."""
        logits = t(xd)
        penalty = hand_kl(logits, s_fixed, T) + (hand_kl(s_fixed, logits, T) if symmetric else 0.0)
        return hand_ce(logits, y) + alpha * penalty

    def student_objective(s):
        """The reference's student loss: its KL weighted by alpha beside the CE (*_ce), by 1 alone."""
        logits = s(xd)
        kl_terms = hand_kl(logits, t_fixed, T) + (hand_kl(t_fixed, logits, T) if symmetric else 0.0)
        return hand_ce(logits, y) + alpha * kl_terms if variant.endswith("_ce") else kl_terms

    teacher_grads = grads_of(teacher, teacher_objective)

    student_grads = grads_of(student, student_objective)
    before_t = [p.detach().clone() for p in teacher.parameters()]
    before_s = [p.detach().clone() for p in student.parameters()]
    trainer = make_trainer(teacher, student, alpha=alpha, temperature=T, student_loss=variant)
    stats, _ = trainer.teacher_step(x, y)
    for p0, p1, grad in zip(before_t, teacher.parameters(), teacher_grads):
        torch.testing.assert_close(p0 - p1.detach(), grad.float(), rtol=1e-4, atol=1e-6)  # SGD lr 1: delta = grad
    for p0, p1, grad in zip(before_s, student.parameters(), student_grads):
        torch.testing.assert_close(p0 - p1.detach(), grad.float(), rtol=1e-4, atol=1e-6)
    penalty = hand_kl(t_fixed, s_fixed, T) + (hand_kl(s_fixed, t_fixed, T) if symmetric else 0.0)
    assert stats["lot/teacher_kl"] == pytest.approx(penalty.item(), rel=1e-5)
    assert stats["teacher/loss"] == pytest.approx(hand_ce(t_fixed, y).item(), rel=1e-5)
    assert stats["count"] == 8


def test_alpha_zero_teacher_step_is_plain_cross_entropy_and_weights_enter():
    teacher, student = make_pair()
    x, y = torch.randn(6, 5), torch.randint(0, 4, (6,))
    w = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.0, 3.0])
    expected = grads_of(teacher, lambda t: (w.double() * -hand_log_softmax(t(x.double()))[torch.arange(6), y]).mean())
    before = [p.detach().clone() for p in teacher.parameters()]
    trainer = make_trainer(teacher, student, alpha=0.0, temperature=1.0, student_loss="kl_ce")
    trainer.teacher_step(x, y, sample_weights=w)
    for p0, p1, grad in zip(before, teacher.parameters(), expected):
        torch.testing.assert_close(p0 - p1.detach(), grad.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("teacher_mode", ["train", "eval"])
def test_student_step_imitates_the_teacher_in_the_mode_asked(teacher_mode):
    """Default ``train``, the reference's: the teacher's targets come from a train-mode forward (BatchNorm batch
    statistics, dropout), which also moves its BatchNorm running statistics, never its weights. ``eval``: the
    eval-mode teacher (running statistics), left untouched."""
    alpha, T = 1.0, 2.0
    teacher, student = make_pair(teacher_bn=True)
    teacher.train()
    teacher(torch.randn(16, 5))  # give the BatchNorm running statistics something non-trivial
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    reference_teacher = copy.deepcopy(teacher).train(teacher_mode == "train")
    target = reference_teacher(x).detach().double()  # a train-mode forward updates its running statistics
    expected = grads_of(student, lambda s: hand_ce(s(x.double()), y) + alpha * hand_kl(s(x.double()), target, T))
    before = [p.detach().clone() for p in student.parameters()]
    running_mean = teacher.state_dict()["1.running_mean"].clone()
    trainer = make_trainer(teacher, student, alpha=alpha, temperature=T, student_loss="kl_ce",
                           teacher_target_mode=teacher_mode)
    trainer.student_step(x, y)
    for p0, p1, grad in zip(before, student.parameters(), expected):
        torch.testing.assert_close(p0 - p1.detach(), grad.float(), rtol=1e-4, atol=1e-6)
    for key, value in teacher.state_dict().items():  # weights unchanged, BN statistics as the mode moves them
        assert torch.equal(value, reference_teacher.state_dict()[key]), key
    assert torch.equal(teacher.state_dict()["1.running_mean"], running_mean) == (teacher_mode == "eval")
    assert teacher.training


# ---------------------------------------------------------------------------------------------------- end to end


def tiny_args(tmp_path, **overrides) -> CVArgs:
    write_cifar10(tmp_path / "data")
    values = dict(dataset="cifar10", data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "runs"),
                  run_name="run", depth=8, width=4, batch_size=8, eval_batch_size=16, val_size=8, epochs=2,
                  learning_rate=0.05, device="cpu")
    values.update(overrides)
    return CVArgs(**values)


class RecordingWeighting:
    def __init__(self):
        self.calls = []

    def weights(self, indices, labels, inputs=None):
        self.calls.append((indices.clone(), inputs.shape))
        return torch.ones(len(labels))

    def epoch_metrics(self):
        return {"reweight/calls": float(len(self.calls))}


def test_cv_end_to_end_outputs(tmp_path):
    weighting = RecordingWeighting()
    summary = train_cv(tiny_args(tmp_path), sample_weighting=weighting)
    run = tmp_path / "runs" / "run"
    assert summary["finished"] and summary["teacher_steps"] == 8 and summary["student_steps"] == 16
    assert summary["best_epoch"] in (1, 2)
    assert set(summary["test"]) == {"teacher/test_loss", "teacher/test_acc", "student0/test_loss", "student0/test_acc"}
    assert json.loads((run / "summary.json").read_text())["test"] == summary["test"]
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    rows = [r for r in read_metrics(run) if "teacher/val_acc" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for tag in ("teacher/train_loss", "teacher/train_acc", "student0/train_acc", "student0/val_loss",
                "lot/teacher_kl", "lot/student_loss", "lot/student_only_loss", "charts/learning_rate"):
        assert tag in rows[0], tag
    assert rows[1]["reweight/calls"] == 8.0
    # The sample weighting saw each training image once per epoch (32 = 40 - 8 validation), on augmented inputs.
    seen = torch.cat([c[0] for c in weighting.calls[:4]])
    assert sorted(seen.tolist()) == list(range(32)) and weighting.calls[0][1] == (8, 3, 32, 32)
    # The test figures are the best epoch's models: recompute them from best.pt.
    best = load_checkpoint(run / "best.pt", kind="cv-best")
    assert best["epoch"] == summary["best_epoch"]
    task, trainer = build(tiny_args(tmp_path), torch.device("cpu"))
    for name, model in trainer.models().items():
        model.load_state_dict(best["models"][name])
    assert task.evaluate(trainer, "test") == pytest.approx(summary["test"])
    assert rows[1]["charts/learning_rate"] == pytest.approx(0.0, abs=1e-9)  # cosine annealed to 0


@pytest.mark.parametrize("noise_type", ["symmetric", "pair"])
def test_cv_label_noise_is_put_into_the_training_labels_once(tmp_path, noise_type):
    from lot_rl.supervised import data as data_lib

    args = tiny_args(tmp_path, label_noise=0.25, noise_type=noise_type)
    clean = data_lib.split_validation(data_lib.load_image_data("cifar10", args.data_dir), args.val_size, args.seed)
    task, _ = build(args, torch.device("cpu"))
    assert torch.equal(task.noisy_mask, task.train_labels != clean.train_labels)
    assert int(task.noisy_mask.sum()) == round(0.25 * len(clean.train_labels))  # the rate, not twice the rate
    if noise_type == "pair":
        assert torch.equal(task.train_labels[task.noisy_mask], (clean.train_labels[task.noisy_mask] + 1) % 10)


def test_cv_resume_mid_epoch_is_exact(tmp_path):
    straight = train_cv(tiny_args(tmp_path, run_name="straight", alpha=0.5, student_steps_ratio=3))
    args = tiny_args(tmp_path, run_name="split", alpha=0.5, student_steps_ratio=3)
    first = train_cv(args, max_steps=3)  # stops inside epoch 1 (4 steps per epoch)
    assert not first["finished"] and first["epoch"] == 1
    second = train_cv(args, resume=tmp_path / "runs" / "split", max_steps=2)  # crosses into epoch 2
    assert not second["finished"] and second["epoch"] == 2
    final = train_cv(args, resume=tmp_path / "runs" / "split")
    assert final["test"] == straight["test"] and final["teacher_steps"] == 8
    a = load_checkpoint(tmp_path / "runs" / "straight")["trainer"]
    b = load_checkpoint(tmp_path / "runs" / "split")["trainer"]
    for key in a["teacher"]:
        assert torch.equal(a["teacher"][key], b["teacher"][key]), key
    for key in a["students"]["networks"][0]:
        assert torch.equal(a["students"]["networks"][0][key], b["students"]["networks"][0][key]), key
    keep = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "charts/epoch_seconds")} for r in rows]
    assert keep(read_metrics(tmp_path / "runs" / "straight")) == keep(read_metrics(tmp_path / "runs" / "split"))


def test_cv_command_learns_a_learnable_cifar_folder(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=16, test=32, learnable=True)
    code = main(["cv", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "3",
                 "--depth", "8", "--width", "4", "--batch-size", "8", "--val-size", "16", "--label-noise", "0.1",
                 "--run-dir", str(tmp_path / "runs"), "--run-name", "learn", "--device", "cpu"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "learn" / "summary.json").read_text())
    assert summary["teacher_steps"] == 3 * (80 - 16) // 8
    # three classes: chance is 1/3
    assert summary["test"]["teacher/test_acc"] >= 0.8 and summary["test"]["student0/test_acc"] >= 0.8
    assert '"best_epoch"' in capsys.readouterr().out


def test_cv_command_resume_extends_a_finished_run(tmp_path, capsys):
    write_cifar10(tmp_path / "data")
    common = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--depth", "8", "--width", "4",
              "--batch-size", "8", "--val-size", "8", "--device", "cpu"]
    assert main(["cv", *common, "--epochs", "1", "--run-dir", str(tmp_path / "runs"), "--run-name", "r"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["teacher_steps"] == 4
    # Same folder again without --resume: refused, the checkpoint is not overwritten.
    assert main(["cv", *common, "--run-dir", str(tmp_path / "runs"), "--run-name", "r"]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume takes the saved options; --epochs given here overrides them.
    assert main(["cv", "--resume", str(tmp_path / "runs" / "r"), "--epochs", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["teacher_steps"] == 12
    rows = [r for r in read_metrics(tmp_path / "runs" / "r") if "teacher/val_acc" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # Options the saved optimizer states held are applied too; those a resumed run cannot take are refused.
    assert main(["cv", "--resume", str(tmp_path / "runs" / "r"), "--epochs", "4", "--weight-decay", "0.01"]) == 0
    capsys.readouterr()
    trainer_state = load_checkpoint(tmp_path / "runs" / "r")["trainer"]
    assert trainer_state["optimizer"]["param_groups"][0]["weight_decay"] == 0.01
    assert trainer_state["students"]["optimizers"][0]["param_groups"][0]["weight_decay"] == 0.01
    for argv, message in ((["--seed", "3"], "--seed 3 differs from the resumed run's 1"),
                          (["--preset", "digits"], "--preset cannot be combined with --resume"),
                          (["--depth", "20"], "do not fit the saved networks")):
        assert main(["cv", "--resume", str(tmp_path / "runs" / "r"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "cifar10"], "cifar-10-batches-py"),
    (["--depth", "10"], "--depth 10 is not of the form 6n+2"),
    (["--student-depth", "12"], "--student-depth 12"),
    (["--alpha", "-0.5"], "--alpha must be >= 0"),
    (["--num-students", "0"], "needs at least one student"),
    (["--label-noise", "1.2"], "--label-noise must be in [0, 1)"),
    (["--val-size", "0"], "--val-size must be >= 1"),
    (["--preset", "imagenet"], None),
])
def test_cv_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    if argv[0] == "--preset":  # argparse rejects unknown choices itself (exit 2, usage line)
        with pytest.raises(SystemExit) as exc:
            main(["cv", *argv])
        assert exc.value.code == 2
        return
    code = main(["cv", *argv, "--data-dir", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "runs").exists()  # nothing created for a run that cannot start


def test_cv_unknown_loss_in_config_file_and_corrupt_checkpoint(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("student_loss: l2\n")
    assert main(["cv", "--config", str(config)]) == 2
    assert "--student-loss" in capsys.readouterr().err
    run = tmp_path / "runs" / "broken"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["cv", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated or corrupt" in err
    with pytest.raises(LoTUserError, match="malformed"):
        write_cifar10(tmp_path / "d")
        (tmp_path / "d" / "cifar-10-batches-py" / "test_batch").write_bytes(
            __import__("pickle").dumps({b"data": torch.zeros(2, 5).numpy(), b"labels": [0, 1]}))
        train_cv(tiny_args(tmp_path, data_dir=str(tmp_path / "d")))


# ---------------------------------------------------------------------------------------------------- the reference


# The reference's CIFAR run (run/run_image_classification_LoT.sh with trainer/image_classification.py).
REFERENCE_CIFAR = dict(depth=20, student_depth=None, width=16, epochs=180, batch_size=256, learning_rate=1.0,
                       momentum=0.9, weight_decay=1e-4, alpha=0.5, num_students=1, student_steps_ratio=2,
                       temperature=1.5, student_loss="kl_ce", teacher_target_mode="train",
                       student_lr_schedule="cosine", crop_padding=None, flip=None)


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "cifar"])
def test_cifar_presets_are_the_reference_run(preset):
    """Issue 12: the presets named after the reference hold its settings, its learning rate 1.0 included; the
    usual 0.1 has presets of its own."""
    from lot_rl import config as cfg_lib
    from lot_rl.supervised.cv import PRESETS

    args = cfg_lib.resolve(CVArgs, {}, PRESETS, preset)
    assert {name: getattr(args, name) for name in REFERENCE_CIFAR} == REFERENCE_CIFAR
    assert args.dataset == ("cifar100" if preset == "cifar100" else "cifar10")
    lower = cfg_lib.resolve(CVArgs, {}, PRESETS, f"{args.dataset}-lr0.1")
    assert {name: getattr(lower, name) for name in REFERENCE_CIFAR} == {**REFERENCE_CIFAR, "learning_rate": 0.1}
