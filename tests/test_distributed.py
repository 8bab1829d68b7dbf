"""Data-parallel training (lot_rl/distributed.py and its hooks in `lot-rl train`): gloo, 2 CPU processes."""

import os
import socket
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from lot_rl import config as cfg_lib
from lot_rl import distributed
from lot_rl.agents import ppo_lot_atari as lot
from lot_rl.checkpoint import load_checkpoint
from lot_rl.cli import main
from lot_rl.errors import LoTUserError
from lot_rl.regularizer import ObservationCache

MINATAR_SHAPE = (4, 10, 10)
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, errors: Path, fn, args) -> None:
    """One rank: the environment torchrun would give it, then ``fn(rank, *args)`` inside a gloo process group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # forked: no OpenMP pool of the parent's, and two ranks share two cores
    try:
        distributed.setup("cpu")
        fn(rank, *args)
    except BaseException:
        (errors / f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        distributed.teardown()


def run_ranks(fn, *args, world: int = 2, timeout: float = 300) -> list[int]:
    """Run ``fn(rank, *args)`` in ``world`` forked processes that form a gloo process group (as under torchrun);
    return their exit codes. A rank's exception fails the test with its traceback."""
    context, port = mp.get_context("fork"), _free_port()
    with tempfile.TemporaryDirectory() as folder:
        errors = Path(folder)
        ranks = [context.Process(target=_rank_main, args=(rank, world, port, errors, fn, args))
                 for rank in range(world)]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join()
        failures = "\n".join(path.read_text() for path in sorted(errors.iterdir()))
    assert not failures, failures
    return [process.exitcode for process in ranks]


# ----------------------------------------------------------------------------------------------------
# One update: 2 ranks == one process on both ranks' data with the gradient of their mean loss


def _update_args() -> lot.Args:
    return lot.Args(num_envs=4, num_steps=8, num_students=2, student_weights=[0.3, 0.7], alpha=0.5,
                    temperature=1.5, obs_num=1, student_steps_ratio=1, student_minibatches=2, channels_last=False)


def _networks(args: lot.Args):
    torch.manual_seed(0)
    agent = lot.Agent(3, MINATAR_SHAPE)
    students = lot.make_students(args, 3, torch.device("cpu"), lambda _: 1.0, MINATAR_SHAPE)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)
    return agent, students, optimizer


def _rank_data(rank: int, n: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return dict(obs=torch.randint(0, 2, (n, *MINATAR_SHAPE), generator=g, dtype=torch.uint8),
                actions=torch.randint(0, 3, (n,), generator=g), old_logprobs=-torch.rand(n, generator=g) - 1.0,
                advantages=torch.randn(n, generator=g), returns=torch.randn(n, generator=g),
                old_values=torch.randn(n, generator=g))


def _ppo_loss(agent, students, data, args):
    return lot.lot_ppo_loss(agent, students, data["obs"], data["actions"], data["old_logprobs"],
                            data["advantages"], data["returns"], data["old_values"], args, alpha_now=0.5)[0]


def _parameters(agent, students) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.parameters()] + [p.detach().clone() for p in
                                                               students.networks.parameters()]


def _one_update_on_rank(rank: int, out: Path) -> None:
    """The agent's order: PPO minibatch (backward, average, clip, step), then the student phase on the cache."""
    args = _update_args()
    agent, students, optimizer = _networks(args)
    if rank == 1:  # a rank that initialised otherwise: broadcast_parameters gives it rank 0's networks
        with torch.no_grad():
            for p in agent.parameters():
                p.add_(1.0)
    distributed.broadcast_parameters(agent, *students.networks)
    loss = _ppo_loss(agent, students, _rank_data(rank), args)
    optimizer.zero_grad()
    students.zero_grad()
    loss.backward()
    distributed.average_gradients(agent)
    distributed.average_gradients(*students.networks)
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    students.step()
    cache = ObservationCache(1)
    cache.append(_rank_data(rank)["obs"])
    torch.manual_seed(7 + rank)  # each rank's own shuffles
    lot.student_phase(agent, students, cache, args, lambda: torch.autocast("cpu", enabled=False))
    torch.save(_parameters(agent, students), out / f"rank{rank}.pt")


def test_two_ranks_take_the_step_of_the_mean_loss_over_both_ranks_data(tmp_path):
    assert run_ranks(_one_update_on_rank, tmp_path) == [0, 0]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))  # the same step on both ranks

    # One process: the same networks, the mean of the two ranks' losses, one backward, clip, step ...
    args = _update_args()
    agent, students, optimizer = _networks(args)
    before = _parameters(agent, students)
    loss = (_ppo_loss(agent, students, _rank_data(0), args) + _ppo_loss(agent, students, _rank_data(1), args)) / 2
    optimizer.zero_grad()
    students.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    students.step()
    # ... then each student-phase step on the mean of the ranks' minibatches (each rank's shuffle, its targets)
    streams = []
    for rank in range(2):
        cache = ObservationCache(1)
        cache.append(_rank_data(rank)["obs"])
        torch.manual_seed(7 + rank)
        streams.append(list(cache.student_minibatches(agent.policy_logits, 1, args.student_minibatches)))
    for (obs0, targets0), (obs1, targets1) in zip(*streams):
        imitation = (students.imitation_loss(students.logits(obs0), targets0)
                     + students.imitation_loss(students.logits(obs1), targets1)) / 2
        students.zero_grad()
        imitation.backward()
        students.step()
    expected = _parameters(agent, students)
    assert len(expected) == len(rank0) and not any(torch.equal(a, b) for a, b in zip(before, expected))
    for got, want in zip(rank0, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# `lot-rl train` in 2 processes: identical networks, one run folder, exact resume


def _train_args(tmp_path: Path, **overrides) -> lot.Args:
    values = dict(env_id="BreakoutNoFrameskip-v4", env_backend="gymnasium", total_timesteps=3 * 2 * 2 * 16,
                  num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, obs_num=2, student_steps_ratio=1,
                  student_minibatches=2, run_dir=str(tmp_path / "runs"), save_every=100, env_threads=1)
    values.update(overrides)
    return lot.Args(**values)


def _recording(cls, built: list):
    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
    return Recording


def _train_on_rank(rank: int, tmp_path: Path) -> None:
    """A 3-update run, and the same run stopped after update 1 and resumed; each rank saves its final networks."""
    built: list[nn.Module] = []
    lot.Agent, lot.StudentPolicy = _recording(lot.Agent, built), _recording(lot.StudentPolicy, built)  # forked
    straight = lot.train(_train_args(tmp_path, run_name="straight"))
    networks = {"straight": [p.detach().clone() for net in built for p in net.state_dict().values()]}
    built.clear()
    args = _train_args(tmp_path, run_name="split")
    split = lot.train(args, max_updates=1)
    assert load_checkpoint(split)["update"] == 1
    built.clear()
    lot.train(args, resume=split)
    networks["resumed"] = [p.detach().clone() for net in built for p in net.state_dict().values()]
    torch.save({"networks": networks, "run_dirs": [str(straight), str(split)]}, tmp_path / f"rank{rank}.pt")


def test_two_rank_training_keeps_ranks_identical_and_resumes_exactly(tmp_path, capsys):
    assert run_ranks(_train_on_rank, tmp_path) == [0, 0]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0["run_dirs"] == rank1["run_dirs"]  # rank 0 chose the folders, for both
    for key in ("straight", "resumed"):
        assert len(rank0["networks"][key]) == 12 + 10  # the teacher's and the student's tensors
        assert all(torch.equal(a, b) for a, b in zip(rank0["networks"][key], rank1["networks"][key]))
    # Resumed exactly: each rank's env states, RNGs and cache came back from the one checkpoint
    assert all(torch.equal(a, b) for a, b in zip(rank0["networks"]["straight"], rank0["networks"]["resumed"]))

    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["split", "straight"]
    ckpt = load_checkpoint(runs / "straight")
    assert (ckpt["update"], ckpt["global_step"], ckpt["world_size"], len(ckpt["other_ranks"])) == (3, 192, 2, 1)
    own, other = ckpt["cache"]["entries"], ckpt["other_ranks"][0]["cache"]["entries"]
    assert len(own) == len(other) == 2 and not torch.equal(own[-1], other[-1])  # each rank's own rollouts
    assert ckpt["env_state"] is not None and ckpt["other_ranks"][0]["env_state"] is not None
    rows = [row for row in _metrics(runs / "straight") if "charts/episodic_return" not in row]
    assert [row["step"] for row in rows] == [64, 128, 192]  # one row per update of 2 ranks x 2 envs x 16 steps

    # Another number of processes cannot resume it: one line, exit 2
    assert main(["train", "--resume", str(runs / "split")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "from a run of 2 process(es)" in err and "not 1" in err


def _metrics(run_dir: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def test_lot_rl_train_nproc_2_on_breakout_then_eval_and_resume(tmp_path, capsys):
    """The launcher: `lot-rl train --nproc 2` on Breakout, one run folder whose checkpoint eval and --resume load."""
    argv = ["--nproc", "2", "--env-id", "BreakoutNoFrameskip-v4", "--num-envs", "2", "--num-steps", "16",
            "--num-minibatches", "2", "--update-epochs", "1", "--obs-num", "1", "--student-steps-ratio", "1",
            "--student-minibatches", "2", "--env-threads", "1", "--threads", "1", "--run-dir", str(tmp_path),
            "--run-name", "two"]
    assert main(["train", *argv, "--total-timesteps", "64"]) == 0
    run_dir = tmp_path / "two"
    assert [p.name for p in tmp_path.iterdir()] == ["two"]
    ckpt = load_checkpoint(run_dir)
    assert (ckpt["update"], ckpt["global_step"], ckpt["world_size"]) == (1, 64, 2)
    assert main(["eval", str(run_dir), "--episodes", "1", "--num-envs", "1", "--max-frames", "2000"]) == 0
    assert main(["train", *argv, "--resume", str(run_dir), "--total-timesteps", "128"]) == 0
    ckpt = load_checkpoint(run_dir)
    assert (ckpt["update"], ckpt["global_step"], ckpt["world_size"]) == (2, 128, 2)


# ----------------------------------------------------------------------------------------------------
# One process: nothing changes


def test_without_torchrun_no_process_group_and_no_collective(tmp_path, monkeypatch):
    """Without torchrun the hooks do nothing: no process group, no collective call (so a run is the
    one-process run as before: tests/test_ppo_lot_atari.py pins its gradients and exact resume)."""
    for name in ("all_reduce", "broadcast", "gather_object", "all_gather_object", "broadcast_object_list",
                 "init_process_group"):
        monkeypatch.setattr(torch.distributed, name, lambda *a, **k: pytest.fail("a collective in one process"))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    args = cfg_lib.resolve(lot.Args, dict(total_timesteps=128, num_envs=2, num_steps=32, num_minibatches=2,
                                          update_epochs=1, obs_num=1, student_steps_ratio=1, target_kl=10.0,
                                          run_dir=str(tmp_path), run_name="one"), lot.PRESETS, "minatar")
    run_dir = lot.train(args)
    ckpt = load_checkpoint(run_dir)
    assert (ckpt["world_size"], ckpt["other_ranks"], ckpt["global_step"]) == (1, [], 128)
    grads = [torch.randn(3)]
    net = nn.Linear(3, 1)
    net.weight.grad = grads[0].view(1, 3).clone()
    distributed.average_gradients(net)
    assert torch.equal(net.weight.grad.view(-1), grads[0])
    assert distributed.collect_on_main([1, 2]) == [1, 2] and distributed.rank_seed(5, 8) == 5
    assert distributed.on_main(lambda: "x") == "x" and distributed.any_rank(True) and not distributed.any_rank(False)


# ----------------------------------------------------------------------------------------------------
# Errors: one line, exit 2


def test_nccl_without_cuda_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--nproc", "2", "--dist-backend", "nccl", "--device", "cpu", "--run-dir",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--dist-backend nccl needs CUDA" in err
    assert list(tmp_path.iterdir()) == []
    # The same check under torchrun, before the process group starts
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(LoTUserError, match="nccl needs CUDA"):
        distributed.setup("cpu", backend="nccl")


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(LoTUserError, match="3 processes per node but this machine has 2 CUDA device"):
        distributed.check_backend("auto", torch.device("cuda"), 3)
    distributed.check_backend("auto", torch.device("cuda"), 2)
    distributed.check_backend("gloo", torch.device("cpu"), 16)  # CPU processes: as many as asked


def test_nproc_is_stripped_and_validated():
    assert distributed.strip_launcher_option(["--nproc", "2", "--seed", "3", "--nproc=4"]) == ["--seed", "3"]
    with pytest.raises(LoTUserError, match="--nproc must be >= 1"):
        distributed.launch("train", [], 0, "cpu")


def _rank_one_dies(rank: int, tmp_path: Path) -> None:
    if rank == 1:
        os._exit(3)  # a crash: no Python cleanup
    try:
        distributed.average_gradients(_linear_with_grad())
    except RuntimeError as exc:
        assert distributed.is_peer_error(exc)
        (tmp_path / "message").write_text(str(distributed.peer_failure(exc, "runs/x")))


def _linear_with_grad() -> nn.Module:
    net = nn.Linear(2, 1)
    net(torch.ones(1, 2)).sum().backward()
    return net


def test_a_rank_that_dies_ends_the_run_with_one_clear_line(tmp_path):
    assert run_ranks(_rank_one_dies, tmp_path) == [0, 3]
    message = (tmp_path / "message").read_text()
    assert message.startswith("rank 0: another process of this 2-process run stopped (")
    assert message.endswith("the last checkpoint is intact, continue with --resume runs/x") and "\n" not in message


# ----------------------------------------------------------------------------------------------------
# `lot-rl cv` in 2 processes: disjoint shares of each batch, identical models, one run folder, exact resume


def _record_teacher_batches(task_class, field: str) -> list[torch.Tensor]:
    """Make ``task_class`` record ``field`` of every teacher batch it hands out (in a forked rank: only there)."""
    seen: list[torch.Tensor] = []
    teacher_batch = task_class.teacher_batch

    def recording(self):
        batch = teacher_batch(self)
        seen.append(getattr(batch, field).clone())
        return batch

    task_class.teacher_batch = recording
    return seen


def _cv_on_rank(rank: int, tmp_path: Path) -> None:
    from lot_rl.supervised import cv
    from test_cv import tiny_args

    seen = _record_teacher_batches(cv.CVTask, "indices")
    args = dict(batch_size=4, alpha=0.5, student_steps_ratio=2)  # 2 ranks x 4 images: 4 steps per epoch
    straight = cv.train_cv(tiny_args(tmp_path, run_name="straight", **args))
    torch.save({"seen": seen, "finished": straight["finished"]}, tmp_path / f"rank{rank}.pt")
    split = tiny_args(tmp_path, run_name="split", **args)
    assert not cv.train_cv(split, max_steps=3)["finished"]  # stops inside epoch 1
    assert main(["cv", "--resume", split.run_dir + "/split"]) == 0  # the command line, resumed in 2 processes


def test_two_rank_cv_shards_batches_and_resumes_exactly(tmp_path, capsys):
    assert run_ranks(_cv_on_rank, tmp_path) == [0, 0]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0["finished"] and rank1["finished"] and len(rank0["seen"]) == len(rank1["seen"]) == 8
    for a, b in zip(rank0["seen"], rank1["seen"]):  # each step: two disjoint shares of one global batch
        assert len(a) == len(b) == 4 and not set(a.tolist()) & set(b.tolist())
    epoch1 = torch.cat(rank0["seen"][:4] + rank1["seen"][:4])
    assert sorted(epoch1.tolist()) == list(range(32))  # the 32 training images, each once per epoch

    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["split", "straight"]
    a, b = load_checkpoint(runs / "straight"), load_checkpoint(runs / "split")
    assert a["world_size"] == b["world_size"] == 2 and a["global_step"] == b["global_step"] == 8
    for key in a["trainer"]["teacher"]:
        assert torch.equal(a["trainer"]["teacher"][key], b["trainer"]["teacher"][key]), key
    summary = (runs / "split" / "summary.json").read_text()
    assert '"teacher_steps": 8' in summary and (runs / "split" / "best.pt").is_file()
    out = capsys.readouterr().out
    assert out.count('"best_epoch"') <= 1  # the summary is printed by rank 0 only


def _lm_on_rank(rank: int, tmp_path: Path) -> None:
    from lot_rl.supervised import lm
    from test_lm import tiny_args

    seen = _record_teacher_batches(lm.LMTask, "inputs")
    built: list[nn.Module] = []
    make_language_model = lm.make_language_model
    lm.make_language_model = lambda *a, **k: built.append(make_language_model(*a, **k)) or built[-1]
    lm.train_lm(tiny_args(tmp_path, batch_size=2, epochs=1))
    torch.save({"seen": seen, "models": [[t.clone() for t in m.state_dict().values()] for m in built]},
               tmp_path / f"rank{rank}.pt")


def test_two_rank_lm_trains_on_contiguous_shares_of_the_streams(tmp_path):
    from lot_rl.supervised import data as data_lib
    from test_lm import tiny_args

    assert run_ranks(_lm_on_rank, tmp_path) == [0, 0]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for a, b in zip(rank0["models"], rank1["models"]):  # teacher and student: the same on both processes
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # One process's 4 streams: process 0 reads streams 0-1, process 1 streams 2-3, window by window
    args = tiny_args(tmp_path)
    streams = data_lib.batchify(data_lib.load_text_data("ptb", args.data_dir).train, 4)
    windows = data_lib.bptt_windows(streams, args.bptt)
    assert len(rank0["seen"]) == len(rank1["seen"]) == len(windows)
    for (start, length), x0, x1 in zip(windows, rank0["seen"], rank1["seen"]):
        x, _ = data_lib.window(streams, start, length)
        assert torch.equal(x[:2], x0) and torch.equal(x[2:], x1)
    assert (tmp_path / "runs" / "run" / "summary.json").is_file()
