import os
import random

import numpy as np
import pytest
import torch

from lot_rl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
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
