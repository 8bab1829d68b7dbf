"""The committed MinAtar results (docs/results.md): every number and table of the committed report is what
`lot-rl report` computes from the committed per-run result files, so the report can be rebuilt without training."""

import json
from pathlib import Path

from lot_rl.report import build_report, write_report
from lot_rl.results import load_results
from lot_rl.sweep import read_grid

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "minatar"


def test_committed_report_is_what_lot_rl_report_computes(tmp_path):
    results = load_results(RESULTS)
    assert results, f"no result files under {RESULTS / 'results'}"
    committed = RESULTS / "report"
    write_report(build_report(results, baseline="ppo"), tmp_path, plots=False)
    for name in ("report.json", "report.txt", "per_game.csv", "aggregate.csv", "improvement.csv",
                 "performance_profile.csv", "sample_efficiency.csv", "curves.csv", "throughput.csv"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), f"{name} differs: rerun lot-rl report"


def test_committed_results_come_from_the_results_grid():
    grid = read_grid(REPO / "scripts" / "grids" / "minatar-results.yaml")
    for result in load_results(RESULTS):
        assert result["env_id"] in grid.env_ids and result["seed"] in grid.seeds
        expected = grid.variants[result["variant"]]
        # the options that decide learning are the grid's (paths and per-machine settings aside)
        assert {k: result["config"][k] for k in expected if k in result["config"] and k != "env_threads"} == \
            {k: v for k, v in expected.items() if k in result["config"] and k != "env_threads"}
        assert result["total_steps"] >= expected["total_timesteps"] - expected["num_envs"] * expected["num_steps"]
        json.dumps(result)  # plain JSON: nothing but numbers, strings and lists
