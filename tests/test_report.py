"""`lot-rl report`: the numbers against hand computations, the files, and each bad input."""

import json
import shutil

import numpy as np
import pytest

from lot_rl import suite_stats
from lot_rl.cli import main
from lot_rl.report import build_report
from lot_rl.results import build_result, load_results, write_result
from lot_rl.sweep import RunSpec, result_path, run_path

TOTAL_STEPS = 1000


def write_fake_run(out, env_id, variant, seed, score, evaluation=None, total_timesteps=TOTAL_STEPS):
    """A run folder as `lot-rl train` leaves it (200 episodes: 0 for the first 100, then `score`), and its result."""
    spec = RunSpec(env_id, variant, seed, {})
    run_dir = run_path(out, spec)
    run_dir.mkdir(parents=True)
    rows = [{"step": 5 * k, "time": 1000.0 + k, "charts/episodic_return": 0.0 if k <= 100 else score}
            for k in range(1, 201)]
    rows += [{"step": 100 * k, "time": 1000.0 + 20 * k, "charts/SPS": 100.0} for k in range(1, 11)]
    rows.sort(key=lambda r: r["step"])
    if score is None:
        rows = [r for r in rows if "charts/SPS" in r]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "config.yaml").write_text(f"env_id: {env_id}\nseed: {seed}\nrun_dir: /somewhere\n"
                                         f"total_timesteps: {total_timesteps}\n")
    result = build_result(run_dir, env_id, variant, seed)
    if evaluation is not None:
        result["evaluation"] = {"episodes": 3, "mean": evaluation}
    write_result(result_path(out, spec), result)


@pytest.fixture
def sweep_dir(tmp_path):
    """Two MinAtar games x 3 seeds x {ppo, lot}, final scores chosen by hand."""
    out = tmp_path / "sweep"
    scores = {("MinAtar/Breakout-v1", "ppo"): [4.0, 6.0, 8.0], ("MinAtar/Breakout-v1", "lot"): [6.0, 8.0, 8.0],
              ("MinAtar/Asterix-v1", "ppo"): [2.0, 3.0, 4.0], ("MinAtar/Asterix-v1", "lot"): [3.0, 3.0, 1.0]}
    for (env_id, variant), values in scores.items():
        for seed, score in enumerate(values, start=1):
            write_fake_run(out, env_id, variant, seed, score, evaluation=score + 1.0)
    return out, scores


def test_result_file_from_a_run_folder(sweep_dir):
    out, _ = sweep_dir
    result = json.loads(result_path(out, RunSpec("MinAtar/Breakout-v1", "ppo", 2, {})).read_text())
    assert (result["total_steps"], result["updates"], result["episodes"]) == (TOTAL_STEPS, 10, 200)
    assert result["final"]["score"] == 6.0 and result["final"]["episodes"] == 100
    steps, scores = result["curve"]["steps"], result["curve"]["scores"]
    assert len(steps) == 50 and steps[-1] == TOTAL_STEPS and scores[-1] == 6.0
    # by step 500, episodes 1..100 (all 0) finished; by step 600, 120: the last 100 are 80 zeros and 20 sixes
    assert scores[steps.index(500)] == 0.0 and scores[steps.index(600)] == pytest.approx(1.2)
    assert "run_dir" not in result["config"]  # no machine path in a file meant to be committed


def test_report_numbers_by_hand(sweep_dir):
    out, scores = sweep_dir
    report = build_report(load_results(out), baseline="ppo", resamples=500)
    assert report["variants"] == ["ppo", "lot"]  # the baseline first
    cell = next(g for g in report["per_game"] if g["env_id"] == "MinAtar/Breakout-v1" and g["variant"] == "lot")
    assert cell["mean"] == pytest.approx(22 / 3, rel=1e-5) and cell["low"] <= cell["mean"] <= cell["high"]
    assert cell["normalized_mean"] == pytest.approx((22 / 3 - 0.38) / (17.0 - 0.38), rel=1e-5)

    scipy_stats = pytest.importorskip("scipy.stats")
    for row in report["aggregate"]:
        normalized = {env: suite_stats.normalize(suite_stats.game_key(env), scores[(env, row["variant"])])
                      for env in ("MinAtar/Breakout-v1", "MinAtar/Asterix-v1")}
        pooled = np.concatenate(list(normalized.values()))
        assert row["iqm"] == pytest.approx(scipy_stats.trim_mean(pooled, 0.25), rel=1e-5)
        assert row["mean"] == pytest.approx(np.mean([v.mean() for v in normalized.values()]), rel=1e-5)
        assert row["iqm_low"] <= row["iqm"] <= row["iqm_high"] and (row["games"], row["runs"]) == (2, 6)
        # the sample-efficiency curve ends at the final scores (the curve's last point is the final score)
        assert report["sample_efficiency"][row["variant"]]["iqm"][-1] == pytest.approx(row["iqm"], rel=1e-5)

    (improvement,) = report["improvement"]
    # Breakout: lot (6, 8, 8) vs ppo (4, 6, 8): 6 beats 4, ties 6, loses to 8 -> 1.5; each 8 -> 1 + 1 + 0.5
    # = 2.5; total 6.5 / 9. Asterix: lot (3, 3, 1) vs ppo (2, 3, 4): each 3 -> 1 + 0.5 + 0 = 1.5; 1 -> 0; 3 / 9.
    assert improvement["probability"] == pytest.approx((6.5 / 9 + 3 / 9) / 2, rel=1e-5)
    assert improvement["low"] <= improvement["probability"] <= improvement["high"]

    profile = report["performance_profile"]
    assert profile["taus"][0] == 0.0 and len(profile["taus"]) == 101
    assert profile["variants"]["ppo"]["fraction"][0] == 1.0  # every run beats the random policy


def test_report_files_are_reproducible_and_rebuilt_from_result_files_alone(sweep_dir, tmp_path, capsys):
    out, _ = sweep_dir
    assert main(["report", str(out), "--baseline", "ppo", "--resamples", "300"]) == 0
    printed = capsys.readouterr().out
    assert "P(X > ppo)" in printed and "MinAtar/Asterix-v1" in printed
    files = out / "report"
    first = {p.name: p.read_bytes() for p in files.iterdir()}
    for name in ("aggregates.png", "performance_profile.png", "sample_efficiency.png", "game_curves.png"):
        assert first[name][:8] == b"\x89PNG\r\n\x1a\n" and len(first[name]) > 10_000
    # the committed case: only the result files, copied elsewhere, without run folders or checkpoints
    flat = tmp_path / "committed"
    flat.mkdir()
    for path in (out / "results").glob("*.json"):
        shutil.copy(path, flat)
    assert main(["report", str(flat), "--baseline", "ppo", "--resamples", "300", "--no-plots"]) == 0
    again = {p.name: p.read_bytes() for p in (flat / "report").iterdir()}
    assert set(again) == {n for n in first if not n.endswith(".png")}
    for name, data in again.items():
        assert data == first[name], name
    report = json.loads(first["report.json"])
    aggregate_csv = first["aggregate.csv"].decode().splitlines()
    assert aggregate_csv[0].startswith("variant,games,runs,iqm")
    assert aggregate_csv[1].split(",")[:4] == ["ppo", "2", "6", repr(report["aggregate"][0]["iqm"])]


def test_eval_score_and_what_the_aggregates_leave_out(tmp_path):
    out = tmp_path / "sweep"
    for seed, score in enumerate([1.0, 2.0], start=1):
        write_fake_run(out, "MinAtar/Breakout-v1", "ppo", seed, score, evaluation=10.0 * score)
        write_fake_run(out, "SeaquestNoFrameskip-v4", "ppo", seed, 100.0 * score)
    write_fake_run(out, "MinAtar/Breakout-v1", "ppo", 3, None, total_timesteps=5)  # no episode; another budget
    report = build_report(load_results(out), resamples=200)
    assert "variant ppo: its runs differ in total_timesteps (results of different grids?)" in report["notes"]
    assert any("SeaquestNoFrameskip-v4: no random/reference scores" in n for n in report["notes"])
    assert any("MinAtar-Breakout-v1__ppo__3: no episode finished" in n for n in report["notes"])
    (row,) = report["aggregate"]
    assert (row["games"], row["runs"]) == (1, 2)
    assert {g["env_id"] for g in report["per_game"]} == {"MinAtar/Breakout-v1", "SeaquestNoFrameskip-v4"}
    with pytest.raises(Exception, match="has no evaluation"):
        build_report(load_results(out), score="eval", resamples=200)
    breakout = [r for r in load_results(out) if r["env_id"] == "MinAtar/Breakout-v1" and r["seed"] < 3]
    evaluated = build_report(breakout, score="eval", resamples=200)
    assert evaluated["per_game"][0]["mean"] == 15.0


@pytest.mark.parametrize("case, message", [
    ("baseline", "--baseline 'nope' is not in the results; their variants are lot, ppo"),
    ("empty", "no lot-rl sweep results in"),
    ("not results", "no lot-rl sweep results in"),
    ("eval", "has no evaluation; rerun the sweep with --eval-episodes N"),
])
def test_bad_input_is_one_line_and_exit_2(case, message, sweep_dir, tmp_path, capsys):
    out, _ = sweep_dir
    argv = ["report", str(out), "--resamples", "200", "--no-plots"]
    if case == "baseline":
        argv += ["--baseline", "nope"]
    elif case == "empty":
        argv[1] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif case == "not results":
        argv[1] = str(tmp_path / "other")
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "x.json").write_text('{"format": "something else"}')
    else:
        for path in (out / "results").glob("*.json"):
            data = json.loads(path.read_text())
            data["evaluation"] = None
            path.write_text(json.dumps(data))
        argv += ["--score", "eval"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lot-rl report: error: ") and message in err and "\n" not in err
