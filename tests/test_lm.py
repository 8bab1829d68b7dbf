"""``lot-rl lm``: language models, per-stream states, perplexity, end to end, resume, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lot_rl.checkpoint import load_checkpoint
from lot_rl.cli import main
from lot_rl.regularizer import Students, kl
from lot_rl.runlog import read_metrics
from lot_rl.supervised import data as D
from lot_rl.supervised.lm import LMArgs, StreamForward, build, train_lm
from lot_rl.supervised.models import LSTMLanguageModel, TransformerLanguageModel, make_language_model
from lot_rl.supervised.training import LoTSettings, LoTSupervisedTrainer
from test_supervised_data import write_ptb


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


# ---------------------------------------------------------------------------------------------------- models


def test_lstm_shapes_state_and_tied_embeddings():
    model = LSTMLanguageModel(50, embedding_size=12, hidden_size=20, num_layers=3, dropout=0.0)
    tokens = torch.randint(0, 50, (4, 7))
    logits, state = model(tokens)
    assert logits.shape == (4, 7, 50)
    assert [tuple(h.shape) for h, _ in state] == [(1, 4, 20), (1, 4, 20), (1, 4, 12)]
    assert model.decoder.weight is model.embedding.weight
    # The state carries the past: the same window after another one gives other logits.
    again, _ = model(tokens, state)
    assert not torch.allclose(again, logits)
    # ... and running two windows with the carried state equals one run over their concatenation.
    first, mid = model(tokens[:, :3])
    second, _ = model(tokens[:, 3:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, rtol=1e-5, atol=1e-6)


def test_lstm_under_bf16_autocast_falls_back_to_fp32_where_the_cpu_lacks_bf16_lstm(monkeypatch):
    import lot_rl.supervised.models as models

    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab_size=11, embedding_size=6, hidden_size=8, num_layers=2, dropout=0.0).eval()
    tokens = torch.randint(0, 11, (2, 5))
    reference, _ = model(tokens)
    monkeypatch.setattr(models, "cpu_bf16_lstm_supported", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(tokens)
        logits.float().sum().backward()  # gradients flow through the fp32 LSTM
    assert all(h.dtype == torch.float32 for pair in state for h in pair)
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)  # bf16 decoder only
    assert model.layers[0].weight_ih_l0.grad is not None


def test_transformer_shapes_and_causality():
    model = TransformerLanguageModel(30, embedding_size=16, num_layers=2, num_heads=4, dropout=0.0).eval()
    tokens = torch.randint(0, 30, (3, 9))
    logits, state = model(tokens)
    assert logits.shape == (3, 9, 30) and state is None
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 30
    logits2, _ = model(changed)
    torch.testing.assert_close(logits2[:, :6], logits[:, :6])  # the future does not leak into the past
    assert not torch.allclose(logits2[:, 6:], logits[:, 6:])
    assert model.decoder.weight is model.embedding.weight


def test_language_model_factory_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown language model 'gru'"):
        make_language_model("gru", 10, 8, 8, 1, 0.0)


def test_stream_forward_keeps_one_detached_state_per_model_and_stream():
    model = LSTMLanguageModel(20, 8, 8, 1, 0.0)
    states = {}
    x = torch.randint(0, 20, (2, 5))
    StreamForward(states, "teacher")("teacher", model, x)
    StreamForward(states, "student")("teacher", model, x)
    StreamForward(states, "teacher")("student0", model, x)
    assert set(states) == {"teacher/teacher", "student/teacher", "teacher/student0"}
    h, c = states["teacher/teacher"][0]
    assert not h.requires_grad and not c.requires_grad


def test_lm_teacher_step_kl_is_over_next_token_distributions():
    """The penalty the step reports is the regularizer's kl over every (stream, position) row."""
    torch.manual_seed(0)
    teacher, student = LSTMLanguageModel(15, 6, 6, 1, 0.0), LSTMLanguageModel(15, 6, 6, 1, 0.0)
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.0)
    trainer = LoTSupervisedTrainer(teacher, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                                   Students([student], lambda p: torch.optim.SGD(p, lr=0.0), temperature=1.5),
                                   LoTSettings(alpha=0.5, temperature=1.5))
    x, y = torch.randint(0, 15, (3, 4)), torch.randint(0, 15, (3, 4))
    stats, teacher_logits = trainer.teacher_step(x, y, forward=StreamForward({}, "teacher"))
    student_logits, _ = student(x)
    expected = kl(teacher_logits.reshape(12, 15), student_logits.detach().reshape(12, 15), 1.5)
    assert stats["lot/teacher_kl"] == pytest.approx(expected.item(), rel=1e-5)
    assert stats["count"] == 12


# ---------------------------------------------------------------------------------------------------- task


def tiny_args(tmp_path, **overrides) -> LMArgs:
    write_ptb(tmp_path / "data")
    values = dict(dataset="ptb", data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "runs"), run_name="run",
                  embedding_size=8, hidden_size=8, num_layers=1, batch_size=4, bptt=10, eval_batch_size=2,
                  epochs=2, learning_rate=1.0, device="cpu", dropout=0.1)
    values.update(overrides)
    return LMArgs(**values)


class Uniform(nn.Module):
    """Equal logits for every word: perplexity is exactly the vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, tokens, state=None):
        return torch.zeros(*tokens.shape, self.vocab) + self.dummy, None


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tmp_path):
    task, trainer = build(tiny_args(tmp_path, num_students=0, alpha=0.0), torch.device("cpu"))
    vocab = len(task.text.vocab)
    trainer.teacher = Uniform(vocab)
    out = task.evaluate(trainer, "test")
    assert out["teacher/test_ppl"] == pytest.approx(vocab, rel=1e-5)
    assert out["teacher/test_loss"] == pytest.approx(math.log(vocab), rel=1e-6)


def test_student_stream_wraps_and_resets_its_states(tmp_path):
    task, _ = build(tiny_args(tmp_path), torch.device("cpu"))
    n = task.steps_per_epoch
    for _ in range(n):
        batch = task.student_batch()
        batch.forward("student0", LSTMLanguageModel(len(task.text.vocab), 8, 8, 1, 0.0), batch.inputs)
    assert "student/student0" in task.states
    wrapped = task.student_batch()
    assert "student/student0" not in task.states and task.student_position == 1
    assert torch.equal(wrapped.inputs, D.window(task.train_streams, *task.windows[0])[0])


# ---------------------------------------------------------------------------------------------------- end to end


def test_lm_end_to_end_lstm(tmp_path):
    summary = train_lm(tiny_args(tmp_path, student_steps_ratio=3))
    run = tmp_path / "runs" / "run"
    task, _ = build(tiny_args(tmp_path), torch.device("cpu"))
    assert summary["finished"] and summary["teacher_steps"] == 2 * task.steps_per_epoch
    assert summary["student_steps"] == 3 * summary["teacher_steps"]
    test = summary["test"]
    for name in ("teacher", "student0"):
        assert test[f"{name}/test_ppl"] == pytest.approx(math.exp(test[f"{name}/test_loss"]))
        assert 1 < test[f"{name}/test_ppl"] < len(task.text.vocab)  # learned something over uniform
    rows = [r for r in read_metrics(run) if "teacher/val_ppl" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for tag in ("teacher/train_ppl", "student0/train_ppl", "student0/val_ppl", "lot/teacher_kl",
                "lot/student_only_loss"):
        assert tag in rows[0], tag
    best = load_checkpoint(run / "best.pt", kind="lm-best")
    assert best["epoch"] == summary["best_epoch"]
    assert best["metrics"]["teacher/val_ppl"] == min(r["teacher/val_ppl"] for r in rows)
    assert best["vocab"] == task.text.vocab.words


@pytest.mark.filterwarnings("ignore:--precision bf16:RuntimeWarning")  # bf16 on purpose; warned on AVX2 CPUs
def test_lm_transformer_teacher_with_lstm_student_via_cli(tmp_path, capsys):
    write_ptb(tmp_path / "data")
    code = main(["lm", "--dataset", "ptb", "--data-dir", str(tmp_path / "data"), "--model", "transformer",
                 "--student-model", "lstm", "--embedding-size", "8", "--num-heads", "2", "--hidden-size", "16",
                 "--num-layers", "1", "--batch-size", "4", "--bptt", "8", "--epochs", "1", "--optimizer", "adam",
                 "--learning-rate", "0.01", "--warmup-steps", "2", "--student-loss", "symmetric_kl",
                 "--precision", "bf16",
                 "--run-dir", str(tmp_path / "runs"), "--run-name", "tf", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] == 1 and set(summary["test"]) == {
        "teacher/test_loss", "teacher/test_ppl", "student0/test_loss", "student0/test_ppl"}
    ckpt = load_checkpoint(tmp_path / "runs" / "tf", kind="lm")
    assert any("encoder" in k for k in ckpt["trainer"]["teacher"])
    assert any("layers.0.weight_hh" in k for k in ckpt["trainer"]["students"]["networks"][0])


def test_lm_resume_mid_epoch_is_exact(tmp_path):
    straight = train_lm(tiny_args(tmp_path, run_name="straight"))
    args = tiny_args(tmp_path, run_name="split")
    first = train_lm(args, max_steps=2)
    assert not first["finished"]
    assert "teacher/teacher" in load_checkpoint(tmp_path / "runs" / "split")["task"]["states"]
    final = train_lm(args, resume=tmp_path / "runs" / "split")
    assert final["test"] == straight["test"]
    a = load_checkpoint(tmp_path / "runs" / "straight")["trainer"]["teacher"]
    b = load_checkpoint(tmp_path / "runs" / "split")["trainer"]["teacher"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "ptb"], "missing ptb.train.txt"),
    (["--dataset", "wikitext103"], "missing wiki.train.tokens"),
    (["--alpha", "-1"], "--alpha must be >= 0"),
    (["--bptt", "0"], "--bptt must be >= 1"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--embedding-size", "10", "--num-heads", "4", "--model", "transformer"], "multiple of --num-heads"),
])
def test_lm_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    code = main(["lm", *argv, "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "runs").exists()


def test_lm_unknown_model_in_config_malformed_file_and_wrong_checkpoint(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('model = "rnn"\n')
    assert main(["lm", "--config", str(config)]) == 2
    assert "--model" in capsys.readouterr().err
    write_ptb(tmp_path / "data")
    (tmp_path / "data" / "ptb.test.txt").write_bytes(b"\xff\xfe bad bytes")
    assert main(["lm", "--dataset", "ptb", "--data-dir", str(tmp_path / "data")]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    # A cv checkpoint is not an lm checkpoint.
    from lot_rl.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "cvrun" / "checkpoint.pt", "cv", {"config": {}})
    assert main(["lm", "--resume", str(tmp_path / "cvrun")]) == 2
    assert "is a 'cv' checkpoint, expected 'lm'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- the reference


# The reference's runs, setting by setting: run/run_lstm_ptb_LoT.sh with trainer/lstm_ptb.py's defaults, and
# run/run_transformer_{ptb,wikitext103}_LoT.sh with trainer/transformer_xl_lm.py's (Transformer-XL's
# d_head is free; ours is d_model / heads: 8 heads of 25 instead of 20, 10 heads of 41 instead of 12).
REFERENCE_RUNS = {
    "ptb-lstm": dict(dataset="ptb", model="lstm", embedding_size=650, hidden_size=650, num_layers=2, dropout=0.45,
                     tie_weights=False, optimizer="sgd", momentum=0.3, learning_rate=30.0, weight_decay=0.0,
                     clip=0.2, batch_size=20, bptt=35, eval_batch_size=10, epochs=60, warmup_steps=0, alpha=1.0,
                     num_students=1, student_steps_ratio=5, temperature=1.5, student_loss="kl_ce",
                     student_lr_schedule="plateau", student_lr_decay=0.25, teacher_target_mode="train"),
    "ptb-transformer": dict(dataset="ptb", model="transformer", num_layers=4, embedding_size=200, num_heads=8,
                            hidden_size=1000, dropout=0.25, tie_weights=True, optimizer="adam", learning_rate=1e-3,
                            weight_decay=0.0, warmup_steps=0, clip=0.35, bptt=70, batch_size=60, eval_batch_size=10,
                            epochs=10, alpha=0.5, num_students=1, student_steps_ratio=5, temperature=1.5,
                            student_loss="kl_ce", student_lr_schedule="cosine", teacher_target_mode="train"),
    "wt103-transformer": dict(dataset="wikitext103", model="transformer", num_layers=4, embedding_size=410,
                              num_heads=10, hidden_size=2100, dropout=0.1, tie_weights=True, optimizer="adam",
                              learning_rate=1e-3, weight_decay=0.0, warmup_steps=0, clip=0.25, bptt=100,
                              batch_size=30, eval_batch_size=10, epochs=4, alpha=0.1, num_students=1,
                              student_steps_ratio=4, temperature=1.5, student_loss="kl_ce",
                              student_lr_schedule="cosine", teacher_target_mode="train"),
}


@pytest.mark.parametrize("preset", list(REFERENCE_RUNS))
def test_presets_named_after_the_reference_are_its_runs(preset):
    """Issue 12: the presets named after the reference's runs hold its settings (what differs in structure is
    in docs/supervised.md's table)."""
    from lot_rl import config as cfg_lib
    from lot_rl.supervised.lm import PRESETS

    args = cfg_lib.resolve(LMArgs, {}, PRESETS, preset)
    assert {name: getattr(args, name) for name in REFERENCE_RUNS[preset]} == REFERENCE_RUNS[preset]


def _trainer_with_plateau(num_students=2):
    teacher = nn.Linear(3, 2)
    make_opt = lambda p: torch.optim.SGD(p, lr=30.0, momentum=0.3)
    optimizer = make_opt(teacher.parameters())
    students = Students([nn.Linear(3, 2) for _ in range(num_students)], make_opt)
    return LoTSupervisedTrainer(teacher, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                                students, LoTSettings(alpha=1.0, student_lr_schedule="plateau"))


def test_student_learning_rate_plateau_as_lstm_ptb():
    """lstm_ptb.py: after an epoch whose summed validation perplexity of all models is worse than the sum of
    their bests and whose student validation loss is worse than the student's best, the student's learning
    rate is multiplied by 0.25; the teacher's never."""
    trainer = _trainer_with_plateau()
    lrs = lambda: [opt.param_groups[0]["lr"] for opt in trainer.students.optimizers]
    epoch = lambda t, s0, s1: trainer.end_epoch({"teacher/val_loss": t, "student0/val_loss": s0,
                                                 "student1/val_loss": s1})
    epoch(5.0, 5.0, 5.0)
    assert lrs() == [30.0, 30.0]  # the first epoch sets the bests
    epoch(5.2, 5.1, 4.9)  # worse overall; student 0 worse than its best, student 1 better
    assert lrs() == [7.5, 30.0]
    epoch(3.0, 5.3, 5.3)  # the summed perplexity improved (the teacher's): nobody decays
    assert lrs() == [7.5, 30.0]
    assert trainer.optimizer.param_groups[0]["lr"] == 30.0
    # Resume: the decays are part of the trainer's state, applied on top of the configured learning rate.
    restored = _trainer_with_plateau()
    restored.load_state_dict(trainer.state_dict())
    assert [opt.param_groups[0]["lr"] for opt in restored.students.optimizers] == [7.5, 30.0]
    epoch(5.5, 5.6, 5.6)
    restored.end_epoch({"teacher/val_loss": 5.5, "student0/val_loss": 5.6, "student1/val_loss": 5.6})
    assert [opt.param_groups[0]["lr"] for opt in restored.students.optimizers] == lrs() == [1.875, 7.5]
