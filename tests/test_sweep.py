"""`lot-rl sweep`: the grid resolved as `lot-rl train` resolves options, each bad input, skip, resume after a
killed worker, Ctrl-C, and the submitit path (through its local executor)."""

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lot_rl import config as cfg_lib
from lot_rl.agents import ppo_lot_atari
from lot_rl.checkpoint import load_checkpoint
from lot_rl.cli import main
from lot_rl.runlog import read_metrics
from lot_rl.results import learning_curve
from lot_rl.sweep import RUN_KEYS, execute_run, prepare_folder, read_grid, result_path, run_path, run_state

GRID = """\
env_ids: [BreakoutNoFrameskip-v4, PongNoFrameskip-v4]
seeds: [1, 2]
common: {total_timesteps: 4096, num_envs: 2}
variants:
  ppo: {preset: ppo, learning_rate: 0.001}
  lot: {obs-num: 2}
"""
TINY = {"num_envs": 2, "num_steps": 16, "num_minibatches": 1, "update_epochs": 1, "env_threads": 1}


def write_grid(tmp_path, text=GRID, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def tiny_grid(tmp_path, total_timesteps, variants="{ppo: {preset: ppo}}", **common):
    options = {**TINY, "total_timesteps": total_timesteps, **common}
    return write_grid(tmp_path, f"env_ids: [BreakoutNoFrameskip-v4]\nseeds: [1]\ncommon: {json.dumps(options)}\n"
                                f"variants: {variants}\n")


def test_grid_expands_seed_major_with_options_resolved_as_train_resolves_them(tmp_path):
    grid = read_grid(write_grid(tmp_path), ["num_steps=16"])
    runs = grid.runs()
    assert [(r.seed, r.env_id, r.variant) for r in runs[:4]] == [
        (1, "BreakoutNoFrameskip-v4", "ppo"), (1, "BreakoutNoFrameskip-v4", "lot"),
        (1, "PongNoFrameskip-v4", "ppo"), (1, "PongNoFrameskip-v4", "lot")]
    assert len(runs) == 8 and runs[-1].name == "PongNoFrameskip-v4__lot__2"
    # what `lot-rl train --preset ppo --total-timesteps 4096 ...` resolves: preset < common < variant < --set
    parser = argparse.ArgumentParser()
    ppo_lot_atari.configure_parser(parser)
    for name, argv in (("ppo", ["--preset", "ppo", "--learning-rate", "0.001"]), ("lot", ["--obs-num", "2"])):
        ns = parser.parse_args(argv + ["--total-timesteps", "4096", "--num-envs", "2", "--num-steps", "16"])
        args, _ = cfg_lib.args_from_namespace(ns, ppo_lot_atari.Args, ppo_lot_atari.PRESETS, "atari-ppo-lot")
        assert grid.variants[name] == {k: v for k, v in cfg_lib.to_dict(args).items() if k not in RUN_KEYS}
    assert grid.variants["ppo"]["lr_schedule"] == "linear" and grid.variants["ppo"]["total_timesteps"] == 4096
    assert [r.name for r in grid.runs(env_ids=["PongNoFrameskip-v4"], variants=["lot"])] == [
        "PongNoFrameskip-v4__lot__1", "PongNoFrameskip-v4__lot__2"]
    spec = runs[0].train_options(tmp_path / "out", threads=3)
    assert (spec["run_dir"], spec["run_name"], spec["exp_name"], spec["env_threads"]) == (
        str(tmp_path / "out" / "runs"), "BreakoutNoFrameskip-v4__ppo__1", "ppo", 3)


@pytest.mark.parametrize("grid, argv, message", [
    (GRID.replace("{obs-num: 2}", "{alhpa: 0.5}"), [], "unknown option 'alhpa' in grid file {g}, variant 'lot'; "
                                                        "did you mean --alpha?"),
    (GRID.replace("{obs-num: 2}", "{num_envs: many}"), [], "option --num-envs in grid file {g}, variant 'lot' must "
                                                            "be int, got 'many'"),
    (GRID.replace("{obs-num: 2}", "{cache_mode: weird}"), [], "variant 'lot' must be one of ['copies', 'reference']"),
    (GRID.replace("{obs-num: 2}", "{num_steps: 0}"), [], "grid file {g}, variant 'lot': --num-steps must be >= 1"),
    (GRID.replace("{obs-num: 2}", "{preset: nope}"), [], "variant 'lot': unknown preset 'nope'; choose one of"),
    (GRID.replace("{obs-num: 2}", "{seed: 3}"), [], "variant 'lot': seed is set by the sweep for each run"),
    (GRID.replace("seeds: [1, 2]", "seeds: []"), [], "the grid is empty"),
    (GRID.replace("variants:", "variant:"), [], "unknown key 'variant'; a grid has env_ids, seeds, common, variants"),
    (GRID.replace("PongNoFrameskip-v4", "Pongg"), [], "env_ids: unknown Atari env id 'Pongg'"),
    (GRID, ["--variants", "nope"], "--variants: variant 'nope' is not in the grid; it has ppo, lot"),
    (GRID, ["--seeds", "7"], "--seeds: seed 7 is not in the grid; it has 1, 2"),
    (GRID, ["--set", "alpha"], "--set 'alpha': give KEY=VALUE"),
    (GRID, ["--set", "clip_coef=-1"], "variant 'ppo': --clip-coef must be > 0"),
])
def test_bad_grid_is_one_line_and_exit_2_before_anything_runs(tmp_path, capsys, grid, argv, message):
    path = write_grid(tmp_path, grid)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lot-rl sweep: error: ") and "\n" not in err
    assert message.format(g=path) in err
    assert not out.exists()


def test_a_sweep_folder_keeps_its_grid(tmp_path, capsys):
    path = write_grid(tmp_path)
    out = tmp_path / "out"
    prepare_folder(out, read_grid(path))
    assert main(["sweep", str(path), "--out", str(out), "--set", "total_timesteps=8192"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lot-rl sweep: error: sweep folder {out} was made from another grid (variant 'ppo': total_timesteps 4096 "
        f"there, 8192 here); give another --out, or rename the variant whose options changed")
    # narrowing the same grid, or changing only how runs execute, is the same sweep
    assert main(["sweep", str(path), "--out", str(out), "--seeds", "2", "--variants", "lot", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--set", "device=cpu", "save_every=5", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "new       BreakoutNoFrameskip-v4__ppo__1"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["sweep", str(path), "--out", str(other)]) == 2
    assert "is not a sweep folder (it has no grid.yaml) and is not empty" in capsys.readouterr().err
    (out / "grid.yaml").write_text("[1, 2]\n")
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 2
    assert f"{out / 'grid.yaml'} is not a sweep's grid (unreadable YAML, or no variants)" in capsys.readouterr().err


def test_a_grid_that_adds_games_seeds_or_variants_extends_the_folder(tmp_path, capsys):
    """Adding an arm or seeds to a grid file and rerunning it on its folder: the new runs join the finished ones
    (kept, skipped), and the folder's grid becomes the union, so that the earlier grid still reads as part of it."""
    first = tiny_grid(tmp_path, 64, variants="{ppo: {preset: ppo}}")
    out = tmp_path / "out"
    assert main(["sweep", str(first), "--out", str(out), "--threads", "1"]) == 0
    finished = result_path(out, read_grid(first).runs()[0])
    before = finished.read_text()
    capsys.readouterr()

    second = write_grid(tmp_path, first.read_text().replace("seeds: [1]", "seeds: [1, 2]").replace(
        "{ppo: {preset: ppo}}", "{ppo: {preset: ppo}, lr: {preset: ppo, learning_rate: 0.001}}"), "second.yaml")
    assert main(["sweep", str(second), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"sweep {out}: would add seed 2, variant lr to its grid"
    assert printed[1:] == ["done      BreakoutNoFrameskip-v4__ppo__1", "new       BreakoutNoFrameskip-v4__lr__1",
                           "new       BreakoutNoFrameskip-v4__ppo__2", "new       BreakoutNoFrameskip-v4__lr__2",
                           "4 run(s); nothing was run (--dry-run)"]
    assert "lr" not in yaml.safe_load((out / "grid.yaml").read_text())["variants"]  # a dry run writes nothing

    assert main(["sweep", str(second), "--out", str(out), "--threads", "1", "--variants", "lr", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"sweep {out}: its grid now also has seed 2, variant lr" in printed
    assert "1 run(s)" in printed and "0 finished" in printed
    stored = yaml.safe_load((out / "grid.yaml").read_text())
    assert stored["seeds"] == [1, 2] and list(stored["variants"]) == ["ppo", "lr"]
    assert stored["variants"]["lr"]["learning_rate"] == 0.001 and stored["variants"]["ppo"]["learning_rate"] == 2.5e-4
    assert finished.read_text() == before  # the first grid's run is untouched
    assert sorted(p.name for p in (out / "results").iterdir()) == [
        "BreakoutNoFrameskip-v4__lr__2.json", "BreakoutNoFrameskip-v4__ppo__1.json"]
    # the first grid, narrower than the folder's now, is still this sweep; a grid changing a variant is not
    assert main(["sweep", str(first), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "done      BreakoutNoFrameskip-v4__ppo__1"
    changed = write_grid(tmp_path, second.read_text().replace("learning_rate: 0.001", "learning_rate: 0.002"),
                         "third.yaml")
    assert main(["sweep", str(changed), "--out", str(out), "--dry-run"]) == 2
    assert "(variant 'lr': learning_rate 0.001 there, 0.002 here)" in capsys.readouterr().err
    assert yaml.safe_load((out / "grid.yaml").read_text()) == stored


def test_the_example_smoke_grid_resolves():
    grid = read_grid(Path(__file__).resolve().parents[1] / "scripts" / "grids" / "atari-smoke.yaml")
    assert len(grid.runs()) == 12 and grid.variants["lot-light"]["student_steps_ratio"] == 1
    assert grid.variants["ppo"]["num_students"] == 0 and grid.variants["ppo"]["total_timesteps"] == 4096


@pytest.mark.parametrize("name", ["minatar.yaml", "minatar-results.yaml"])
def test_the_minatar_grids_resolve_with_the_minatar_presets(name):
    grid = read_grid(Path(__file__).resolve().parents[1] / "scripts" / "grids" / name)
    assert len(grid.env_ids) == 5 and all(env_id.startswith("MinAtar/") for env_id in grid.env_ids)
    ppo, lot = grid.variants["ppo"], grid.variants["lot"]
    assert ppo["num_students"] == 0 and ppo["alpha"] == 0 and ppo["num_envs"] == 64
    assert (lot["alpha"], lot["student_steps_ratio"], lot["obs_num"]) == (0.5, 5, 10)
    assert grid.variants["lot-ref"]["cache_mode"] == "reference"
    # LoT differs from PPO in its LoT options only
    lot_options = {"alpha", "num_students", "student_steps_ratio", "obs_num", "temperature", "student_weight_decay"}
    assert {k for k in ppo if ppo[k] != lot[k]} <= lot_options


def test_a_minatar_sweep_trains_and_writes_its_result(tmp_path, capsys):
    options = {**TINY, "total_timesteps": 64}
    del options["env_threads"]  # an Atari option: the sweep leaves it out for MinAtar runs
    path = write_grid(tmp_path, f"env_ids: [MinAtar/Breakout-v1]\nseeds: [3]\ncommon: {json.dumps(options)}\n"
                                f"variants: {{lot: {{preset: minatar}}}}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1", "--set", "num_envs=2",
                 "num_minibatches=1", "num_steps=16"]) == 0
    result = json.loads((out / "results" / "MinAtar-Breakout-v1__lot__3.json").read_text())
    assert result["env_id"] == "MinAtar/Breakout-v1" and result["seed"] == 3 and result["total_steps"] == 64
    assert result["config"]["env_threads"] == 0 and result["config"]["alpha"] == 0.5


def test_a_minatar_grid_without_the_minatar_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "minatar", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "minatar.gym", None)
    monkeypatch.delitem(__import__("gymnasium").registry, "MinAtar/Breakout-v1", raising=False)
    path = write_grid(tmp_path, "env_ids: [MinAtar/Breakout-v1]\nseeds: [1]\nvariants: {ppo: {preset: minatar-ppo}}\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[minatar]"' in err
    assert not (tmp_path / "out").exists()


def test_learning_curve_is_the_final_score_protocol_at_each_point():
    steps, scores = learning_curve([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0], total_steps=40, points=4, window=2)
    assert steps == [10, 20, 30, 40] and scores == [1.0, 1.5, 2.5, 3.5]
    assert learning_curve([15], [7.0], total_steps=20, points=2)[1] == [None, 7.0]


def test_sweep_trains_writes_results_then_skips_finished_runs(tmp_path, capsys, monkeypatch):
    path = tiny_grid(tmp_path, 128, variants="{ppo: {preset: ppo}, lot: {obs_num: 1, student_steps_ratio: 1}}")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] BreakoutNoFrameskip-v4__" in printed and "[2/2] BreakoutNoFrameskip-v4__" in printed
    assert "2 run(s) finished now, 0 already finished, 0 failed" in printed
    assert "report: lot-rl report " in printed
    specs = read_grid(path).runs()
    for spec in specs:
        result = json.loads(result_path(out, spec).read_text())
        assert (result["env_id"], result["variant"], result["seed"]) == (spec.env_id, spec.variant, spec.seed)
        assert (result["total_steps"], result["updates"]) == (128, 4)  # 2 envs x 16 steps per update
        assert result["config"]["exp_name"] == spec.variant and result["config"]["total_timesteps"] == 128
        assert result["wall_time_s"] > 0 and result["env_steps_per_s"] > 0 and len(result["curve"]["steps"]) == 50
        assert {"checkpoint.pt", "metrics.jsonl", "config.yaml", "train.log"} <= {
            p.name for p in run_path(out, spec).iterdir()}
    assert json.loads(result_path(out, specs[1]).read_text())["config"]["obs_num"] == 1
    stamps = [result_path(out, s).stat().st_mtime_ns for s in specs]
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert "0 run(s) finished now, 2 already finished" in capsys.readouterr().out
    assert [result_path(out, s).stat().st_mtime_ns for s in specs] == stamps

    # Asking for an evaluation later evaluates the final checkpoint; it does not train again.
    from lot_rl import evaluation

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    played = evaluation.EvalResult(policy="teacher", returns=[1.0, 2.0, 6.0], lengths=[40] * 3,
                                   truncated=[False] * 3, settings={"greedy": True, "sticky": 0.0, "mode": None,
                                                                    "difficulty": None, "max_frames": 108_000,
                                                                    "seed": 1})
    monkeypatch.setattr(ppo_lot_atari, "train", no_training)
    monkeypatch.setattr(evaluation, "evaluate_policy", lambda run_dir, **kw: played)
    assert run_state(out, specs[0], eval_episodes=3) == "evaluate"
    result = execute_run(specs[0], out, eval_episodes=3)
    assert result["evaluation"]["episodes"] == 3 and result["evaluation"]["mean"] == 3.0
    assert result["evaluation"]["returns"] == [1.0, 2.0, 6.0] and "greedy" in result["evaluation"]["protocol"]
    assert run_state(out, specs[0], eval_episodes=3) == "done"


def _wait(condition, what, timeout=120.0, pause=0.05):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)


def _update_rows(run_dir):
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    return [row["step"] for row in read_metrics(run_dir) if "charts/SPS" in row]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from Linux's /proc")
def test_a_sweep_in_the_background_stops_a_run_that_is_still_starting(tmp_path):
    """A sweep started in the background (SIGINT ignored, as `nohup lot-rl sweep ... &` leaves it) and stopped
    with SIGTERM while its run's process is still starting up: the run stops too, and the sweep with it, instead
    of the run ignoring the stop (it inherited the ignored SIGINT) and training to its end."""
    path = tiny_grid(tmp_path, 32 * 400)
    out = tmp_path / "out"
    spec = read_grid(path).runs()[0]
    sweep = subprocess.Popen([sys.executable, "-m", "lot_rl", "sweep", str(path), "--out", str(out), "--workers",
                              "1", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))

    def run_process_started():
        return any("spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace") and
                   "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
                   for c in _children(sweep.pid) if Path(f"/proc/{c}/cmdline").exists())

    _wait(run_process_started, "the run's process", pause=0.005)
    sweep.send_signal(signal.SIGTERM)
    printed = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and f"{spec.name}: interrupted" in printed, printed
    assert not result_path(out, spec).exists()


def test_a_killed_run_resumes_from_its_checkpoint_and_ctrl_c_stops_cleanly(tmp_path, capsys):
    updates = 24
    path = tiny_grid(tmp_path, 32 * updates, save_every=2)
    out = tmp_path / "out"
    spec = read_grid(path).runs()[0]
    run_dir = run_path(out, spec)
    command = [sys.executable, "-m", "lot_rl", "sweep", str(path), "--out", str(out), "--workers", "1",
               "--threads", "1"]

    def start():  # as from a terminal: SIGINT not ignored
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    # 1. SIGKILL the worker once it has written its first checkpoint: the sweep reports it and goes on
    sweep = start()
    _wait(lambda: (run_dir / "checkpoint.pt").is_file(), "the first checkpoint")
    worker = json.loads((run_dir / "sweep_attempts.jsonl").read_text().splitlines()[0])["pid"]
    os.kill(worker, signal.SIGKILL)
    printed = sweep.communicate(timeout=120)[0]
    killed_at = time.time()
    assert sweep.returncode == 1 and "FAILED: killed by signal 9" in printed, printed
    first = load_checkpoint(run_dir)["update"]
    assert 2 <= first < updates and not result_path(out, spec).exists()

    # 2. rerun: the run resumes; Ctrl-C makes it finish its update, save a checkpoint and stop
    sweep = start()
    _wait(lambda: len(_update_rows(run_dir)) >= first + 2, "the resumed run's progress")
    sweep.send_signal(signal.SIGINT)
    printed = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and "interrupted, checkpoint saved" in printed, printed
    second = load_checkpoint(run_dir)["update"]
    assert first < second < updates and not result_path(out, spec).exists()

    # 3. rerun to the end, here through submitit's local executor (the Slurm path without a cluster): every
    # update ran once, the first ones being those of the killed attempt
    executor = "submitit-local" if importlib.util.find_spec("submitit") else "pool"
    assert main(["sweep", str(path), "--out", str(out), "--executor", executor, "--threads", "1"]) == 0
    assert f"[1/1] {spec.name}: " in capsys.readouterr().out
    checkpoint = load_checkpoint(run_dir)
    assert (checkpoint["update"], checkpoint["global_step"]) == (updates, 32 * updates)
    assert _update_rows(run_dir) == [32 * k for k in range(1, updates + 1)]
    assert all(row["time"] < killed_at for row in read_metrics(run_dir) if row["step"] <= 32 * first)
    attempts = [json.loads(line) for line in (run_dir / "sweep_attempts.jsonl").read_text().splitlines()]
    assert [a["resume"] for a in attempts] == [False, True, True]
    result = json.loads(result_path(out, spec).read_text())
    assert (result["updates"], result["total_steps"], result["machine"]["torch_threads"]) == (updates, 32 * updates, 1)
    if executor == "submitit-local":
        assert list((out / "slurm").glob("*_log.out"))
