import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest runs alongside the ALE threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): one thread is
    faster for them, and far faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_args(tmp_path):
    """Options for a real but tiny Atari run (2 envs x 32 steps per update)."""
    from lot_rl.agents.ppo_lot_atari import Args

    def make(**overrides):
        values = dict(total_timesteps=256, num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2,
                      obs_num=2, student_steps_ratio=1, student_minibatches=2, run_dir=str(tmp_path / "runs"),
                      run_name="run", save_every=1, env_threads=1)
        values.update(overrides)
        return Args(**values)

    return make


@pytest.fixture
def load_script():
    """Import a file of ``scripts/`` (not a package) as a module: ``load_script("benchmark_reweight")``."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses in the script look their module up here
        spec.loader.exec_module(module)
        return module

    return load
