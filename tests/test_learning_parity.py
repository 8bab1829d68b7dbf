"""scripts/learning_parity.py (issue 18): the side-by-side table scores each run over the same window of env steps,
from our run folders, CleanRL's TensorBoard logs and plain text logs alike."""

import json
import statistics

import pytest


def test_window_score_takes_the_games_that_end_inside_it(load_script):
    parity = load_script("learning_parity")
    run = parity.Run("ppo", 1, [(100, 1.0), (250, 4.0), (300, 6.0), (301, 100.0)])
    assert parity.Window(200, 300).score(run) == (5.0, 2)  # (200, 300]: the games ending at 250 and 300
    assert parity.Window(400, 500).score(run) == (None, 0)


def test_table_gives_each_arm_its_seeds_mean_std_and_range(load_script):
    parity = load_script("learning_parity")
    runs = [parity.Run("ppo", 1, [(10, 2.0), (20, 4.0)]), parity.Run("ppo", 2, [(15, 5.0)]),
            parity.Run("cleanrl-script", 1, [(12, 8.0)]), parity.Run("cleanrl-script", 2, [(18, 10.0)])]
    table, rows = parity.parity_table(runs, parity.Window(0, 20))
    assert [row.arm for row in rows] == ["cleanrl-script", "ppo"]  # the baseline first
    ppo = rows[1].summary()
    assert ppo["mean"] == pytest.approx(4.0) and ppo["std"] == pytest.approx(statistics.stdev([3.0, 5.0]))
    assert (ppo["min"], ppo["max"], ppo["games"]) == (3.0, 5.0, 1.5)
    assert "| ppo | 3.00 | 5.00 | 4.00 | 1.41 | 3.00-5.00 | 2 | - |" in table  # no reference arm here
    unfinished = parity.Run("ppo", 3, [(500, 1.0)])  # no game in the window yet: left out, games too
    _, rows = parity.parity_table(runs + [unfinished], parity.Window(0, 20))
    assert rows[1].summary()["games"] == 1.5 and rows[1].summary()["mean"] == pytest.approx(4.0)


def test_permutation_p_counts_the_splits_as_extreme_as_the_arms(load_script):
    parity = load_script("learning_parity")
    # 20 ways to split six scores into three and three: only the arms' own split and its mirror are as extreme
    assert parity.permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / 20)
    assert parity.permutation_p([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert parity.permutation_p([1.0, 9.0, 5.0], [2.0, 8.0, 5.0]) == 1.0  # equal means: every split is as extreme
    runs = [parity.Run("ppo-gymnasium", seed, [(10, float(v))]) for seed, v in ((1, 9), (2, 10), (3, 11))]
    runs += [parity.Run("ppo", seed, [(10, float(v))]) for seed, v in ((1, 4), (2, 5), (3, 6))]
    table, _ = parity.parity_table(runs, parity.Window(0, 20))
    assert "| ppo | 4.00 | 5.00 | 6.00 | 5.00 | 1.00 | 4.00-6.00 | 1 | 0.100 |" in table
    assert table.splitlines()[2].startswith("| arm |") and "p vs ppo-gymnasium" in table


def test_runs_are_read_from_our_folders_cleanrl_logs_and_text_files(load_script, tmp_path):
    parity = load_script("learning_parity")
    ours = tmp_path / "runs" / "BreakoutNoFrameskip-v4__ppo__3"
    ours.mkdir(parents=True)
    rows = [{"step": 8, "charts/episodic_return": 2.0, "charts/episodic_length": 40},
            {"step": 16, "losses/value_loss": 0.1},
            {"step": 24, "charts/episodic_return": 7.0, "charts/episodic_length": 90}]
    (ours / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from torch.utils.tensorboard import SummaryWriter

    cleanrl = tmp_path / "cleanrl-script" / "seed2"
    writer = SummaryWriter(str(cleanrl))
    for step, value in [(5, 1.0), (9, 3.0)]:
        writer.add_scalar("charts/episodic_return", value, step)
    writer.add_scalar("charts/SPS", 300, 9)
    writer.close()
    (cleanrl / "finished").write_text("done\n")
    text = tmp_path / "prior.txt"
    text.write_text("100 1.0\n200 2.0\n")

    runs = parity.collect_runs(tmp_path, [f"prior:7:{text}"])
    got = {(r.arm, r.seed): r.episodes for r in runs}
    assert got == {("ppo", 3): [(8, 2.0), (24, 7.0)], ("cleanrl-script", 2): [(5, 1.0), (9, 3.0)],
                   ("prior", 7): [(100, 1.0), (200, 2.0)]}


def test_bad_options_are_refused_in_one_line(load_script, capsys):
    parity = load_script("learning_parity")
    with pytest.raises(SystemExit) as exit_info:
        parity.main(["--no-train", "--text-run", "cleanrl:one:path"])
    assert exit_info.value.code == 2 and "ARM:SEED:PATH" in capsys.readouterr().err


def test_the_committed_parity_table_is_what_the_committed_runs_give(load_script, tmp_path):
    """docs/learning_parity.md's table (docs/results/breakout-parity/table.json) is rebuilt from the committed
    per-game text runs by the script, exactly."""
    from pathlib import Path
    parity = load_script("learning_parity")
    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "breakout-parity"
    runs = [f"{p.stem.rsplit('_seed', 1)[0]}:{p.stem.rsplit('_seed', 1)[1]}:{p}" for p in sorted(folder.glob("*.txt"))]
    out = tmp_path / "table.json"
    assert parity.main(["--out", str(tmp_path / "none"), "--no-train", "--json", str(out),
                        *[arg for run in runs for arg in ("--text-run", run)]]) == 0
    assert json.loads(out.read_text()) == json.loads((folder / "table.json").read_text())
