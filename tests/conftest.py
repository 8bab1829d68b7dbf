import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest runs alongside the ALE threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: a CUDA variant of a test (the `device` fixture's cuda parameter), skipped "
                                       "without CUDA; `pytest -m gpu` runs them all on a GPU machine")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])])
def device(request):
    """The device a test runs on: the CPU, and a CUDA device where there is one (marked ``gpu``). On CUDA, TF32
    is off for the test, so that comparisons of two computations hold to float32 tolerances."""
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


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


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode with its files in ``tmp_path/wandb-files`` (no network); returns a function that reads
    back every offline run written there (see :func:`read_offline_runs`)."""
    import wandb

    folder = tmp_path / "wandb-files"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # W&B reads its settings (WANDB_DIR) once per process: start afresh with these
    yield lambda: read_offline_runs(folder)
    wandb.teardown()


def read_offline_runs(folder: Path) -> list[dict]:
    """The offline W&B runs under ``folder`` in the order they were made: for each, its ``id``, ``name``, ``group``,
    ``tags``, ``config``, ``history`` (one dict per logged row), ``summary`` and the ``files`` folder.

    An offline run is W&B's transaction log (``run-<id>.wandb``): LevelDB's log format (32 KiB blocks of records,
    each a 7-byte header: CRC32C, length, type full/first/middle/last) after a 7-byte file header, each record a
    ``wandb_internal_pb2.Record`` protobuf. wandb 0.31 has no reader of its own in Python, so the tests read it.
    """
    import json
    import struct
    import time

    from wandb.proto import wandb_internal_pb2

    def key_of(item):
        return [item.key] if item.key else list(item.nested_key)

    def put(target, keys, value_json):
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = json.loads(value_json)

    def read_run(run_dir: Path) -> dict | None:
        data = next(run_dir.glob("run-*.wandb")).read_bytes()
        if data[:4] != b":W&B":
            return None  # not written yet
        run = {"history": [], "summary": {}, "config": {}, "files": run_dir / "files"}
        position, pending, finished = 7, b"", False
        while position + 7 <= len(data):
            left = 32768 - position % 32768
            if left < 7:  # a block's tail too short for a header is padding
                position += left
                continue
            _, length, kind = struct.unpack("<IHB", data[position:position + 7])
            if kind == 0:  # zeros up to the end of the block
                position += left
                continue
            if position + 7 + length > len(data):
                return None  # still being written
            pending += data[position + 7:position + 7 + length]
            position += 7 + length
            if kind not in (1, 4):  # first or middle part of a record
                continue
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name == "run":
                run.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group,
                           tags=list(record.run.tags), project=record.run.project,
                           start=record.run.start_time.seconds + record.run.start_time.nanos * 1e-9)
                for item in record.run.config.update:
                    put(run["config"], key_of(item), item.value_json)
            elif kind_name == "config":
                for item in record.config.update:
                    put(run["config"], key_of(item), item.value_json)
            elif kind_name == "history":
                row = {}
                for item in record.history.item:
                    put(row, key_of(item), item.value_json)
                run["history"].append(row)
            elif kind_name == "summary":
                for item in record.summary.update:
                    put(run["summary"], key_of(item), item.value_json)
            elif kind_name == "exit":
                finished = True
        return run if finished else None

    runs = []
    for run_dir in folder.glob("wandb/offline-run-*"):
        # W&B's service may still be writing a run that has finished in Python: wait for its exit record.
        deadline = time.time() + 30
        while (run := read_run(run_dir)) is None:
            assert time.time() < deadline, f"{run_dir}: the W&B run never finished"
            time.sleep(0.1)
        runs.append(run)
    return sorted(runs, key=lambda run: run["start"])
