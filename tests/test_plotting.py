"""lot-rl plot: smoothing, aggregation across runs, grouping by label, the image file, bad input."""

import struct
from pathlib import Path

import numpy as np
import pytest

from lot_rl import config as cfg_lib
from lot_rl import plotting
from lot_rl.agents.ppo_lot_atari import Args
from lot_rl.cli import main
from lot_rl.errors import LoTUserError
from lot_rl.runlog import RunLogger


def make_run(folder: Path, returns_offset: float, lot: bool = True, exp_name: str = "ppo_lot",
             env_id: str = "BreakoutNoFrameskip-v4", episodes: int = 40) -> Path:
    """A run folder as `lot-rl train` writes it: config.yaml and metrics.jsonl (through RunLogger)."""
    folder.mkdir(parents=True)
    args = Args(exp_name=exp_name, env_id=env_id, alpha=0.5 if lot else 0.0, num_students=1 if lot else 0)
    cfg_lib.save_config(args, folder / "config.yaml")
    logger = RunLogger(folder)
    for k in range(episodes):  # returns grow linearly with steps: return = step / 100 + offset
        step = 100 * (k + 1)
        logger.log(step, {"charts/episodic_return": step / 100 + returns_offset, "charts/episodic_length": 400})
        if k % 4 == 3:
            scalars = {"losses/entropy": 1.0}
            if lot:
                scalars.update({"lot/teacher_kl": 0.1, "lot/student_kl": 0.2})
            logger.log(step, scalars)
    logger.close()
    return folder


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_moving_average_known_values():
    np.testing.assert_allclose(plotting.moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(plotting.moving_average(np.array([3.0, 1.0]), 10), [3.0, 2.0])
    np.testing.assert_array_equal(plotting.moving_average(np.array([5.0, 7.0]), 1), [5.0, 7.0])
    with pytest.raises(LoTUserError, match="--smooth"):
        plotting.moving_average(np.array([1.0]), 0)


def test_aggregate_mean_and_spread_on_the_common_steps():
    x1, x2 = np.linspace(0, 100, 11), np.linspace(10, 120, 23)
    curves = [(x1, x1.copy()), (x2, x2 + 2.0)]
    grid, mean, low, high = plotting.aggregate(curves, "std", points=50)
    assert (grid[0], grid[-1]) == (10.0, 100.0)  # only where both runs have data
    np.testing.assert_allclose(mean, grid + 1.0)
    np.testing.assert_allclose(high - mean, np.sqrt(2.0))  # sample std of {y, y + 2}
    _, _, low, high = plotting.aggregate(curves, "minmax", points=50)
    np.testing.assert_allclose([low, high], [grid, grid + 2.0])
    _, _, low, high = plotting.aggregate(curves, "sem", points=50)
    np.testing.assert_allclose(high - low, 2.0)  # 2 * sqrt(2) / sqrt(2)
    assert plotting.aggregate([(np.array([1.0]), np.array([1.0]))]) is None


def test_default_labels_come_from_the_config():
    assert plotting.default_label({"alpha": 0.0, "num_students": 0, "exp_name": "ppo_lot"}, "f") == "PPO"
    assert plotting.default_label({"alpha": 0.5, "num_students": 1, "student_steps_ratio": 5}, "f") == \
        "LoT (alpha 0.5, N 5)"
    assert plotting.default_label({"exp_name": "wide", "alpha": 0.5, "num_students": 1}, "f") == "wide"
    assert plotting.default_label({}, "folder") == "folder"


def test_runs_are_grouped_by_label_and_averaged(tmp_path):
    runs = [make_run(tmp_path / "lot1", 0.0), make_run(tmp_path / "lot2", 2.0),
            make_run(tmp_path / "ppo", 10.0, lot=False)]
    figure = plotting.learning_curves_figure(runs, smooth=1)
    returns_ax, kl_ax = figure.axes[:2]
    lines = {line.get_label(): line for line in returns_ax.lines}
    assert set(lines) == {"LoT (alpha 0.5, N 5) (n=2)", "PPO (n=1)"}
    x, y = lines["LoT (alpha 0.5, N 5) (n=2)"].get_data()
    np.testing.assert_allclose(y, x / 100 + 1.0)  # the mean of offsets 0 and 2
    x, y = lines["PPO (n=1)"].get_data()
    np.testing.assert_allclose(y, x / 100 + 10.0)
    assert len(returns_ax.collections) == 1  # a spread band only for the group with two runs
    kl_lines = {line.get_label(): line.get_linestyle() for line in kl_ax.lines}
    assert kl_lines == {"LoT (alpha 0.5, N 5) (n=2), teacher KL": "-", "LoT (alpha 0.5, N 5) (n=2), student KL": "--"}


def test_plot_command_writes_an_image(tmp_path, capsys):
    runs = [make_run(tmp_path / "a", 0.0), make_run(tmp_path / "b", 1.0, lot=False),
            make_run(tmp_path / "c", 1.0, env_id="PongNoFrameskip-v4")]
    out = tmp_path / "curves.png"
    assert main(["plot", *map(str, runs), "--out", str(out), "--metric", "losses/entropy"]) == 0
    assert str(out) in capsys.readouterr().out
    width, height = png_size(out)
    # three panels (return, KL, entropy) by two games (Breakout, Pong) at 110 dpi
    assert (width, height) == (3 * 5 * 110, 2 * int(3.6 * 110))


@pytest.mark.parametrize("extra, message", [
    (["--labels", "only-one"], "--labels has 1 names for 2 runs"),
    (["--metric", "no/such_tag"], "no/such_tag"),
    (["--smooth", "0"], "--smooth must be >= 1"),
    (["--out", "{tmp}/a_file/curves.png"], "--out: cannot write"),
])
def test_plot_bad_input(extra, message, tmp_path, capsys):
    runs = [make_run(tmp_path / "a", 0.0), make_run(tmp_path / "b", 1.0)]
    (tmp_path / "a_file").write_text("")
    argv = ["plot", *map(str, runs), "--out", str(tmp_path / "x.png")] + [e.format(tmp=tmp_path) for e in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_plot_needs_run_folders_with_episodes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    young = make_run(tmp_path / "young", 0.0, episodes=0)
    assert main(["plot", str(young), "--out", str(tmp_path / "x.png")]) == 2
    assert "no episode has finished yet" in capsys.readouterr().err
