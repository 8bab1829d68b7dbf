import os
import random

import numpy as np
import pytest
import torch

from lot_rl.checkpoint import load_checkpoint, restore_optimizer, rng_state, save_checkpoint, set_rng_state
from lot_rl.errors import LoTUserError


def test_roundtrip_and_header(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", "demo", {"w": torch.arange(3), "n": 5})
    data = load_checkpoint(tmp_path, kind="demo")  # a run folder is accepted
    assert torch.equal(data["w"], torch.arange(3)) and data["n"] == 5 and data["path"] == str(path)
    with pytest.raises(LoTUserError, match="is a 'demo' checkpoint, expected 'other'"):
        load_checkpoint(path, kind="other")


def test_truncated_and_foreign_files_are_reported(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", "demo", {"w": torch.randn(1000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(LoTUserError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(LoTUserError, match="not a lot_rl checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(LoTUserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", "demo", {"v": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, "demo", {"v": Unpicklable()})
    assert load_checkpoint(path)["v"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_rng_state_roundtrip(tmp_path):
    state = rng_state()
    save_checkpoint(tmp_path / "c.pt", "demo", {"rng": state})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_restore_optimizer_keeps_the_progress_and_applies_new_hyperparameters():
    def build(lr, weight_decay):
        net = torch.nn.Linear(3, 2)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        return net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda done: 1.0 / (1 + done))

    net, opt, sched = build(0.1, 0.0)
    for _ in range(3):
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    # The same options: exactly the saved state.
    _, same, same_sched = build(0.1, 0.0)
    restore_optimizer(same, opt.state_dict(), same_sched, sched.state_dict())
    assert same.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.1 / 4
    assert same_sched.get_last_lr() == sched.get_last_lr()
    assert torch.equal(same.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # Other options: the moments and the schedule's progress are kept, the new learning rate and decay apply.
    _, other, other_sched = build(1.0, 0.5)
    restore_optimizer(other, opt.state_dict(), other_sched, sched.state_dict())
    assert other.param_groups[0]["lr"] == 1.0 / 4 and other.param_groups[0]["weight_decay"] == 0.5
    assert other_sched.last_epoch == 3 and other_sched.base_lrs == [1.0]
    assert torch.equal(other.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
