"""--track (Weights & Biases, offline here: no network) and --capture-video: what reaches W&B, TensorBoard and the
run folder; resume; the sweep's pass-through; --track without wandb."""

import hashlib
import json
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lot_rl import config as cfg_lib
from lot_rl import sweep as sweep_lib
from lot_rl.agents import ppo_lot_atari as lot
from lot_rl.cli import main
from lot_rl.envs import make_env
from lot_rl.envs.atari import observation_picture
from lot_rl.runlog import read_metrics
from lot_rl.supervised.cv import train_cv
from lot_rl.tracking import TrackingOptions, read_run_id
from lot_rl.video import probe
from test_cv import tiny_args as tiny_cv_args
from test_video import decoded_frames

VIDEO_TAG = "videos/env0"


def minatar_args(tmp_path, **overrides) -> lot.Args:
    """A real MinAtar Breakout run of one env, 32 steps per update (MinAtar's random games last a few steps)."""
    values = dict(env_id="MinAtar/Breakout-v1", total_timesteps=64, num_envs=1, num_steps=32, num_minibatches=1,
                  update_epochs=1, run_dir=str(tmp_path / "runs"), run_name="run")
    values.update(overrides)
    return cfg_lib.resolve(lot.Args, values, lot.PRESETS, "minatar-ppo")


def logged_points(rows: list[dict]) -> list[tuple]:
    """(step, tag, value) of every scalar in metrics.jsonl rows."""
    return sorted((row["step"], tag, value) for row in rows for tag, value in row.items()
                  if tag not in ("step", "time"))


def wandb_points(history: list[dict], step_metric: str = "global_step") -> list[tuple]:
    """(step, tag, value) of every scalar in W&B history rows (W&B's own `_...` keys and videos left out)."""
    return sorted((row[step_metric], tag, value) for row in history for tag, value in row.items()
                  if not tag.startswith("_") and tag != step_metric and not isinstance(value, dict))


def tensorboard_videos(run_dir) -> list:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return events.Images(VIDEO_TAG) if VIDEO_TAG in events.Tags()["images"] else []


def test_a_tracked_run_gives_wandb_its_config_every_scalar_once_its_videos_and_a_summary(tmp_path, offline_wandb):
    args = minatar_args(tmp_path, track=True, capture_video=True, video_every=2, wandb_group="g",
                        wandb_tags=["smoke"])
    run_dir = lot.train(args)
    [run] = offline_wandb()
    assert (run["id"], run["name"], run["project"], run["group"], run["tags"]) == \
        (read_run_id(run_dir), "run", "lot_rl", "g", ["smoke"])
    assert {k: v for k, v in run["config"].items() if k != "_wandb"} == cfg_lib.to_dict(args)

    # Every scalar of metrics.jsonl reaches W&B once, under the same tag, at the same global_step.
    rows = read_metrics(run_dir)
    assert wandb_points(run["history"]) == logged_points(rows) and len(logged_points(rows)) > 20

    # Every 2nd game of env 0 (the only env) as H.264 in videos/, one picture per step of the game; the game in
    # progress when training ends is saved as far as it went.
    games = [row for row in rows if "charts/episodic_length" in row]
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"episode-{k:05d}.mp4" for k in range(0, len(games) + 1, 2)]
    assert len(videos) >= 3
    for video in videos:
        info = probe(video)
        assert (info.codec, info.pixel_format, info.width, info.height, info.fps) == ("h264", "yuv420p", 320, 320, 10)
        game = int(video.stem.split("-")[1])
        if game < len(games):
            assert info.frames == games[game]["charts/episodic_length"]
    # ... each in W&B (the file itself, logged at the step its game ended) and in TensorBoard (a GIF).
    logged = [row for row in run["history"] if VIDEO_TAG in row]
    assert [row[VIDEO_TAG]["sha256"] for row in logged] == [hashlib.sha256(v.read_bytes()).hexdigest()
                                                            for v in videos]
    assert all((run["files"] / row[VIDEO_TAG]["path"]).is_file() for row in logged)
    ended = [games[int(v.stem.split("-")[1])]["step"] if int(v.stem.split("-")[1]) < len(games) else 64
             for v in videos]
    assert [row["global_step"] for row in logged] == ended
    images = tensorboard_videos(run_dir)
    assert [image.step for image in images] == ended
    assert all(image.encoded_image_string.startswith(b"GIF8") and image.width == 320 for image in images)

    returns = [row["charts/episodic_return"] for row in games]
    assert run["summary"]["final/episodic_return"] == pytest.approx(np.mean(returns))
    assert run["summary"]["final/episodes"] == len(returns)


def test_a_resumed_run_continues_its_wandb_run(tmp_path, offline_wandb, capsys):
    args = minatar_args(tmp_path, track=True, total_timesteps=96, save_every=10)
    run_dir = lot.train(args, max_updates=1)  # stops with a checkpoint after 32 steps, as Ctrl-C does
    run_id = read_run_id(run_dir)
    assert main(["train", "--resume", str(run_dir)]) == 0  # --track comes back with the saved options
    first, second = offline_wandb()
    assert first["id"] == second["id"] == run_id == read_run_id(run_dir)
    assert max(row["global_step"] for row in first["history"]) <= 32 < min(row["global_step"]
                                                                          for row in second["history"])
    # Together the two attempts hold exactly the run's scalars: none lost, none twice.
    assert wandb_points(first["history"] + second["history"]) == logged_points(read_metrics(run_dir))
    assert second["summary"]["final/episodes"] == sum("charts/episodic_return" in r for r in read_metrics(run_dir))


@pytest.mark.parametrize("backend,size", [("gymnasium", (160, 210)), ("ale", (168, 168))])
def test_capture_video_on_both_atari_backends(tiny_args, backend, size):
    """The gymnasium backend records the game's RGB screen; the native one (no screens) the 84x84 frames the agent
    sees, at twice their size. A random Breakout game outlasts these 32 steps: its first 33 pictures are saved."""
    args = tiny_args(env_backend=backend, capture_video=True, num_envs=1, total_timesteps=32, num_minibatches=1,
                     update_epochs=1, alpha=0.0, num_students=0, student_steps_ratio=0)
    run_dir = lot.train(args)
    [video] = (run_dir / "videos").glob("*.mp4")
    info = probe(video)
    assert (video.name, info.codec, (info.width, info.height), info.frames) == ("episode-00000.mp4", "h264", size, 33)
    assert len(tensorboard_videos(run_dir)) == 1
    if backend == "ale":
        first = decoded_frames(video)[0].astype(int)
        env = make_env(args.env_id, 1, args.seed, backend="ale", num_threads=1)
        observation, _ = env.reset(seed=args.seed)
        env.close()
        assert np.abs(first - observation_picture(observation[0])).mean() < 2  # the agent's frame, in gray


def test_cv_tracks_every_epoch_and_its_test_summary(tmp_path, offline_wandb):
    summary = train_cv(tiny_cv_args(tmp_path, track=True))
    [run] = offline_wandb()
    run_dir = tmp_path / "runs" / "run"
    assert run["id"] == read_run_id(run_dir) and run["config"]["depth"] == 8
    assert wandb_points(run["history"], "epoch") == logged_points(read_metrics(run_dir))
    assert {k: run["summary"][k] for k in summary["test"]} == pytest.approx(summary["test"])
    assert run["summary"]["best_epoch"] == summary["best_epoch"]


MINATAR_GRID = """\
env_ids: [MinAtar/Breakout-v1]
seeds: [3]
common: {total_timesteps: 32, num_envs: 1, num_steps: 32, num_minibatches: 1, update_epochs: 1}
variants: {lot: {preset: minatar, obs_num: 1, student_steps_ratio: 1}}
"""


def test_a_tracked_sweep_run_is_grouped_tagged_and_gets_its_evaluation(tmp_path, offline_wandb):
    (tmp_path / "grid.yaml").write_text(MINATAR_GRID)
    grid = sweep_lib.read_grid(tmp_path / "grid.yaml")
    out, _ = sweep_lib.prepare_folder(tmp_path / "my-sweep", grid)
    [spec] = grid.runs()
    spec = sweep_lib.tracked(spec, TrackingOptions(track=True, wandb_tags=["mine"]), "my-sweep")
    result = sweep_lib.execute_run(spec, out, eval_episodes=2)
    training, evaluation = offline_wandb()
    assert (training["name"], training["group"], training["tags"]) == (spec.name, "my-sweep", ["mine", "lot", "seed3"])
    assert evaluation["id"] == training["id"]  # the evaluation is added to the same W&B run's summary
    assert evaluation["summary"]["eval/mean"] == result["evaluation"]["mean"]
    assert evaluation["summary"]["eval/episodes"] == 2


def test_the_sweep_command_passes_its_tracking_options(tmp_path, monkeypatch):
    (tmp_path / "grid.yaml").write_text(MINATAR_GRID)
    seen = {}
    monkeypatch.setattr(sweep_lib, "sweep", lambda grid, out, **kwargs: seen.update(kwargs) or
                        sweep_lib.SweepSummary(total=0))
    assert main(["sweep", str(tmp_path / "grid.yaml"), "--track", "--wandb-project", "p", "--wandb-tags", "a", "b",
                 "--wandb-mode", "offline"]) == 0
    assert seen["tracking"] == TrackingOptions(track=True, wandb_project="p", wandb_tags=["a", "b"],
                                               wandb_mode="offline")
    # How a run executes, not what it computes: a sweep folder accepts runs with other tracking options.
    assert {"track", "wandb_group", "capture_video"} <= set(sweep_lib.EXECUTION_KEYS)


@pytest.mark.parametrize("command", ["train", "cv", "lm", "sweep"])
def test_track_without_wandb_is_one_line_and_exit_2_before_any_folder(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it fails
    (tmp_path / "grid.yaml").write_text(MINATAR_GRID)
    argv = ([command, "--run-dir", str(tmp_path / "runs")] if command != "sweep" else
            [command, str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "runs")])
    assert main(argv + ["--track"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--track needs the wandb package" in err
    assert 'pip install -e ".[track]"' in err
    assert not (tmp_path / "runs").exists()


def test_wandb_refusing_the_run_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import wandb

    def not_logged_in(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", not_logged_in)
    assert main(["train", "--env-id", "MinAtar/Breakout-v1", "--num-envs", "1", "--track", "--run-dir",
                 str(tmp_path / "runs"), "--run-name", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "W&B could not start the run: No API key configured" in err
    assert "--wandb-mode offline" in err and not (tmp_path / "runs" / "run" / "checkpoint.pt").exists()
