"""lot-rl eval / compare: full games on real Breakout, flavours, videos, JSON, reproducibility, bad input.

Checkpoints are written directly in the training format (random or hand-set networks), which takes
milliseconds instead of a training run. Hand-set policies make outcomes predictable: a teacher that always
presses FIRE launches every ball and loses its five lives quickly; a student that always moves LEFT never
relaunches the ball after the first life and plays until the frame cap.
"""

import argparse
import json
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from gymnasium.vector import VectorWrapper

from lot_rl import config as cfg_lib
from lot_rl import evaluation, stats
from lot_rl.agents.ppo_lot_atari import CHECKPOINT_KIND, Agent, Args, make_students
from lot_rl.checkpoint import save_checkpoint
from lot_rl.cli import main
from lot_rl.envs import atari
from lot_rl.errors import LoTUserError

FIRE, LEFT = 1, 3
RANDOM_SETTINGS = dict(episodes=2, num_envs=2, greedy=False, max_frames=20_000)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks and batches: intra-op threads only add overhead here
    yield
    torch.set_num_threads(threads)


def write_checkpoint(folder: Path, teacher_action: int | None = None, student_action: int | None = None,
                     env_id: str = "BreakoutNoFrameskip-v4", num_actions: int = 4, seed: int = 0,
                     obs_shape: tuple[int, ...] = (4, 84, 84), life_loss_restart: bool = True,
                     env_backend: str | None = "ale", life_loss_continue: bool = False) -> Path:
    """A checkpoint with the payload `lot-rl train` writes (by default of a run on the native env); optionally
    constant-action policies."""
    torch.manual_seed(seed)
    args = Args(env_id=env_id, num_students=1, life_loss_restart=life_loss_restart,
                life_loss_continue=life_loss_continue, env_backend=env_backend if not env_id.startswith("MinAtar/") else None)
    agent = Agent(num_actions, obs_shape)
    students = make_students(args, num_actions, torch.device("cpu"), lambda _: 1.0, obs_shape)
    for net, action in ((agent, teacher_action), (students.networks[0], student_action)):
        if action is not None:
            with torch.no_grad():
                net.actor.weight.zero_()
                net.actor.bias.zero_()
                net.actor.bias[action] = 5.0
    return save_checkpoint(folder / "checkpoint.pt", CHECKPOINT_KIND, {
        "config": cfg_lib.to_dict(args), "num_actions": num_actions, "observation_shape": list(obs_shape),
        "update": 7, "global_step": 7168,
        "agent": agent.state_dict(), "students": students.state_dict()})


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("random_run")
    write_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fixed_run")  # trained with the native env's own life losses
    write_checkpoint(folder, teacher_action=FIRE, student_action=LEFT, life_loss_restart=False)
    return folder


# ----------------------------------------------------------------------------------------------------
# Playing full games


def test_episode_shares_are_fixed_and_sum_to_episodes():
    assert evaluation.episode_shares(30, 8) == [4, 4, 4, 4, 4, 4, 3, 3]
    assert evaluation.episode_shares(3, 8) == [1, 1, 1]
    assert sum(evaluation.episode_shares(101, 7)) == 101


class GameSpy(VectorWrapper):
    """Independently sums the raw per-step rewards of each game and the lowest lives count it reached."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.sums = np.zeros(self.num_envs)
        self.min_lives = info["lives"].astype(int).copy()
        self.games = [[] for _ in range(self.num_envs)]
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.sums += reward
        finished = info.get("_episode", np.zeros(self.num_envs, bool))
        for i in range(self.num_envs):
            if finished[i]:
                self.games[i].append((self.sums[i], self.min_lives[i]))
                self.sums[i], self.min_lives[i] = 0.0, info["lives"][i]  # the next game has begun
            else:
                self.min_lives[i] = min(self.min_lives[i], info["lives"][i])
        return obs, reward, terminated, truncated, info


def test_play_games_counts_whole_games_with_unclipped_returns():
    env = GameSpy(atari.make_atari_env("BreakoutNoFrameskip-v4", 2, 0, episodic_life=False, backend="ale"))
    uniform = lambda obs: torch.zeros(obs.shape[0], 4)
    returns, lengths, truncated = evaluation.play_games(env, uniform, 5, greedy=False, seed=3)
    env.close()
    # env 0 plays 3 games, env 1 plays 2; results are env-major
    expected = [g for i, share in enumerate([3, 2]) for g in env.games[i][:share]]
    assert len(returns) == 5
    assert returns == [float(r) for r, _ in expected]
    # every game went down to its last life: it was not cut at the first life loss
    assert [lives for _, lives in expected] == [1] * 5
    assert not any(truncated)
    assert all(l > 300 for l in lengths)  # five lives of random play, not one


def test_policies_are_the_saved_networks_and_the_frame_cap_cuts_games(fixed_run):
    report = evaluation.evaluate(fixed_run, "all", evaluation.EvalSettings(episodes=2, num_envs=2, max_frames=1200))
    teacher, student = report.results
    assert (teacher.policy, student.policy) == ("teacher", "student:0")
    # always FIRE: five quick lives, game over long before the cap
    assert not any(teacher.truncated) and max(teacher.lengths) < 1200
    # always LEFT: the ball is never relaunched after the first life, so the cap ends the game
    assert all(student.truncated) and min(student.lengths) >= 1100
    assert report.global_step == 7168


def test_evaluation_plays_lives_as_the_run_was_trained(tmp_path):
    """Issue 18: a run trained with the life-loss restart is evaluated with it: the ball is relaunched for the
    always-LEFT policy after every life loss, so its games end (the one trained without it stalls, above)."""
    write_checkpoint(tmp_path, teacher_action=FIRE, student_action=LEFT, life_loss_restart=True)
    report = evaluation.evaluate(tmp_path, "student:0", evaluation.EvalSettings(episodes=2, num_envs=2,
                                                                                max_frames=5000))
    student = report.results[0]
    assert student.settings["life_loss_restart"] and not any(student.truncated)


@pytest.mark.parametrize("env_backend", ["gymnasium", None])
def test_a_run_on_cleanrls_wrappers_is_evaluated_with_their_life_restarts(tmp_path, env_backend):
    """Issue 18: CleanRL's wrappers restart every life in training (hidden NOOP and FIRE), so a run trained on them
    plays full games with those restarts too: the always-LEFT policy's games end, as with --life-loss-restart above.
    A run whose config names no env trained on the native env (the default before issue 18): no restart, it stalls."""
    write_checkpoint(tmp_path, teacher_action=FIRE, student_action=LEFT, life_loss_restart=False,
                     env_backend=env_backend)
    report = evaluation.evaluate(tmp_path, "student:0", evaluation.EvalSettings(episodes=2, num_envs=2,
                                                                                max_frames=5000))
    student = report.results[0]
    assert student.settings["backend"] == "gymnasium"  # the run's env, or the default
    if env_backend == "gymnasium":
        assert student.settings["life_loss_restart"] and not any(student.truncated)
        assert all(length < 5000 for length in student.lengths)
    else:
        assert not student.settings["life_loss_restart"] and all(student.truncated)


def test_a_run_on_cleanrls_wrappers_with_native_life_losses_is_evaluated_without_restarts(tmp_path):
    """Issue 18's --life-loss-continue arm learnt to press FIRE after a life loss, as on the native env: it plays
    full games without restarts, so the always-LEFT policy never relaunches the ball and stalls until the cap."""
    write_checkpoint(tmp_path, teacher_action=FIRE, student_action=LEFT, life_loss_restart=False,
                     env_backend="gymnasium", life_loss_continue=True)
    report = evaluation.evaluate(tmp_path, "student:0", evaluation.EvalSettings(episodes=2, num_envs=2,
                                                                                max_frames=5000))
    student = report.results[0]
    assert student.settings["backend"] == "gymnasium"
    assert not student.settings["life_loss_restart"] and all(student.truncated)


@pytest.fixture(scope="module")
def seeded(random_run):
    """One evaluation of the random-initialised teacher (seed 4), shared by the tests below."""
    return evaluation.evaluate(random_run, "teacher", evaluation.EvalSettings(seed=4, **RANDOM_SETTINGS))


def test_evaluation_is_reproducible(random_run, seeded):
    first = seeded.results[0]
    other = evaluation.evaluate_policy(random_run, seed=5, **RANDOM_SETTINGS)
    assert first.lengths != other.lengths  # the seed matters...
    assert first.summary == stats.summarize(first.returns)
    # ...and the same seed gives the same games: see the JSON and compare tests, which play seed 4 again


# ----------------------------------------------------------------------------------------------------
# Flavours


def test_invalid_flavours_list_the_valid_values(random_run):
    ckpt = evaluation.load_train_checkpoint(random_run)
    with pytest.raises(LoTUserError, match=r"no mode 3; valid modes: \[0, 4, 8,.*44\]"):
        evaluation.resolve_settings(ckpt, evaluation.EvalSettings(mode=3))
    with pytest.raises(LoTUserError, match=r"no difficulty 7; valid difficulties: \[0, 1\]"):
        evaluation.resolve_settings(ckpt, evaluation.EvalSettings(difficulty=7))


def test_sticky_actions_follow_the_protocol(random_run):
    ckpt = evaluation.load_train_checkpoint(random_run)
    resolve = lambda **kw: evaluation.resolve_settings(ckpt, evaluation.EvalSettings(**kw))["sticky"]
    assert resolve() == 0.0  # as trained on a v4 id
    assert resolve(sticky=0.25) == 0.25
    assert resolve(env_id="ALE/Breakout-v5") == 0.25  # the v5 protocol
    with pytest.raises(LoTUserError, match="--sticky"):
        resolve(sticky=1.5)


def test_a_run_is_played_on_the_env_it_trained_on_unless_told_otherwise(random_run):
    """Issue 18 moved the default Atari env to CleanRL's wrappers: a native-env run is still evaluated natively,
    a run that named no env (saved before the change) on the default."""
    ckpt = evaluation.load_train_checkpoint(random_run)
    backend = lambda config, **kw: evaluation.resolve_settings(
        {**ckpt, "config": {**ckpt["config"], **config}}, evaluation.EvalSettings(**kw))["backend"]
    assert backend({"env_backend": "ale"}) == "ale"
    assert backend({"env_backend": "gymnasium"}) == "gymnasium"
    assert backend({"env_backend": "ale"}, backend="gymnasium") == "gymnasium"  # the option wins
    assert backend({"env_backend": None}) is None  # make_env's default: gymnasium
    assert atari.parse_env_id("BreakoutNoFrameskip-v4").choose_backend(None) == "gymnasium"


def test_flavour_sweep_plays_every_mode_and_difficulty(fixed_run, monkeypatch):
    monkeypatch.setattr(atari, "game_flavours", lambda env_id: ([0, 4], [1]))  # a small grid, for speed
    built = []
    original = atari.make_atari_env
    monkeypatch.setattr(atari, "make_atari_env", lambda *a, **kw: built.append(kw) or original(*a, **kw))
    report = evaluation.evaluate(fixed_run, "teacher", evaluation.EvalSettings(episodes=1, num_envs=1, sticky=0.25),
                                 flavours=True)
    assert [(r.settings["mode"], r.settings["difficulty"]) for r in report.results] == [(None, None), (0, 1), (4, 1)]
    assert [(kw["mode"], kw["difficulty"], kw["backend"], kw["repeat_action_probability"]) for kw in built] == \
        [(None, None, "gymnasium", 0.25), (0, 1, "gymnasium", 0.25), (4, 1, "gymnasium", 0.25)]
    table = evaluation.format_report(report)
    assert "IQM vs default" in table and "mode 4, difficulty 1" in table
    with pytest.raises(LoTUserError, match="--flavours all"):
        evaluation.evaluate(fixed_run, "teacher", evaluation.EvalSettings(mode=4), flavours=True)


# ----------------------------------------------------------------------------------------------------
# Video and JSON


def test_video_is_written_at_full_resolution(fixed_run, tmp_path):
    result = evaluation.evaluate_policy(fixed_run, episodes=1, num_envs=1, video_dir=tmp_path / "videos",
                                        video_episodes=1)
    assert [Path(v).name for v in result.videos] == ["teacher-episode000.mp4"]
    reader = imageio_ffmpeg.read_frames(result.videos[0])
    meta = next(reader)
    frames = [np.frombuffer(raw, np.uint8).reshape(210, 160, 3) for raw in reader]
    assert meta["codec"] == "h264" and meta["size"] == (160, 210)  # what browsers play
    assert frames and frames[0].shape == (210, 160, 3)
    # one frame per agent step of the recorded game (its no-op and FIRE starts are not agent steps)
    steps = result.lengths[0] // 4
    assert steps - 12 <= len(frames) <= steps + 1
    assert np.mean([f.std() for f in frames]) > 5  # real pictures, not blank frames


def test_json_holds_every_game_and_the_settings(random_run, seeded, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", str(random_run), "--episodes", "2", "--num-envs", "2", "--sample", "--seed", "4",
                 "--max-frames", "20000", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["format"] == "lot_rl-eval" and data["global_step"] == 7168 and data["update"] == 7
    assert data["config"]["env_id"] == "BreakoutNoFrameskip-v4"
    s = data["settings"]
    assert (s["episodes"], s["greedy"], s["seed"], s["sticky"], s["max_frames"], s["full_games"]) == \
        (2, False, 4, 0.0, 20000, True)
    (result,) = data["results"]
    assert result["policy"] == "teacher" and len(result["episodes"]) == 2
    returns = [e["return"] for e in result["episodes"]]
    lengths = [e["length"] for e in result["episodes"]]
    assert result["summary"]["mean"] == pytest.approx(np.mean(returns))
    assert result["summary"]["iqm_low"] <= result["summary"]["iqm"] <= result["summary"]["iqm_high"]
    # reproducible: the CLI replays exactly the games of the Python function with the same seed
    assert (returns, lengths) == (seeded.results[0].returns, seeded.results[0].lengths)
    assert evaluation.read_eval_json(out).result("teacher").returns == returns


# ----------------------------------------------------------------------------------------------------
# compare


def fake_eval_json(path: Path, returns, greedy: bool = True) -> Path:
    settings = {"env_id": "BreakoutNoFrameskip-v4", "game": "Breakout", "episodes": len(returns), "greedy": greedy,
                "seed": 0, "num_envs": 8, "sticky": 0.0, "mode": None, "difficulty": None, "max_frames": 108000,
                "full_action_space": False, "full_games": True, "backend": "ale"}
    result = evaluation.EvalResult("teacher", list(map(float, returns)), [1000] * len(returns),
                                   [False] * len(returns), settings)
    report = evaluation.EvalReport(str(path), "BreakoutNoFrameskip-v4", 100, 1, {}, settings, [result])
    return report.write_json(path)


def test_compare_side_by_side(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base, lot = rng.normal(100, 10, 20).round(), rng.normal(120, 10, 20).round()
    a, b = fake_eval_json(tmp_path / "ppo.json", base), fake_eval_json(tmp_path / "lot.json", lot)
    plot = tmp_path / "compare.png"
    assert main(["compare", str(a), str(b), "--labels", "PPO", "LoT", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    c = stats.compare_returns(lot, base)
    assert "PPO" in out.splitlines()[2] and "LoT" in out.splitlines()[2]
    assert f"{c.probability_of_improvement:.2f} [{c.poi_low:.2f}, {c.poi_high:.2f}]" in out
    assert f"{c.iqm_difference:+.1f} [{c.difference_low:+.1f}, {c.difference_high:+.1f}]" in out
    assert c.difference_low > 0  # a 20-point shift is detected
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_evaluates_runs_with_the_same_settings(random_run, seeded, tmp_path):
    saved = seeded.write_json(tmp_path / "saved.json")
    entries = evaluation.compare_runs([saved, random_run], evaluation.EvalSettings(seed=4, **RANDOM_SETTINGS))
    assert [e.label for e in entries] == ["saved", random_run.name]
    assert entries[0].result.returns == entries[1].result.returns  # read back == evaluated again
    with pytest.raises(LoTUserError, match="greedy is False in one and True in the other"):
        evaluation.compare_runs([saved, fake_eval_json(tmp_path / "g.json", [1, 2])])


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    write_checkpoint(root / "pong", env_id="PongNoFrameskip-v4", num_actions=6)
    write_checkpoint(root / "actions", num_actions=6)  # claims Breakout, but 6 actions
    write_checkpoint(root / "minatar", env_id="MinAtar/Breakout-v1", num_actions=3, obs_shape=(4, 10, 10))
    (root / "a_file").write_text("")
    (root / "other.json").write_text('{"some": "thing"}')
    (root / "broken.json").write_text('{"format": ')
    return root


@pytest.mark.parametrize("argv, message", [
    (["eval", "{root}/missing"], "no checkpoint at"),
    (["eval", "{root}/corrupt"], "truncated or corrupt"),
    (["eval", "{root}/pong", "--env-id", "BreakoutNoFrameskip-v4"], "trained on Pong"),
    (["eval", "{root}/actions"], "has 6 actions"),
    (["eval", "{run}", "--policy", "student:3"], "unknown --policy 'student:3'"),
    (["eval", "{run}", "--mode", "5"], "valid modes"),
    (["eval", "{run}", "--difficulty", "9"], "valid difficulties"),
    (["eval", "{run}", "--json", "{root}/a_file/out.json"], "--json: cannot write"),
    (["eval", "{run}", "--video", "{root}/a_file/videos"], "--video: cannot write"),
    (["eval", "{run}", "--episodes", "0"], "--episodes must be >= 1"),
    (["compare", "{run}", "{root}/pong"], "game is 'Breakout' in one and 'Pong'"),
    (["compare", "{run}", "{run}", "--plot", "{root}/a_file/x.png"], "--plot: cannot write"),
    (["compare", "{run}"], "at least two runs"),
    (["compare", "{run}", "{root}/other.json"], "is not a lot-rl eval --json file"),
    (["compare", "{run}", "{root}/broken.json"], "is not valid JSON"),
    # Atari-only options on a MinAtar run
    (["eval", "{root}/minatar", "--mode", "1"], "--mode/--difficulty are Atari options"),
    (["eval", "{root}/minatar", "--difficulty", "0"], "--mode/--difficulty are Atari options"),
    (["eval", "{root}/minatar", "--flavours", "all"], "--flavours all is an Atari option"),
    (["eval", "{root}/minatar", "--backend", "gymnasium"], "env backend 'gymnasium' is an Atari option"),
    (["eval", "{root}/minatar", "--env-id", "BreakoutNoFrameskip-v4"], "trained on MinAtar-Breakout"),
    (["compare", "{root}/minatar", "{run}"], "game is 'MinAtar-Breakout' in one and 'Breakout'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, bad_files, random_run, capsys):
    argv = [a.format(root=bad_files, run=random_run) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_minatar_run_without_minatar_says_how_to_install_it(bad_files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "minatar", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "minatar.gym", None)
    assert main(["eval", str(bad_files / "minatar")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith('pip install -e ".[minatar]"')


def test_greedy_and_sample_exclude_each_other(random_run):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(random_run), "--greedy", "--sample"])
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_train_spellings_of_sticky_actions_and_backend_are_accepted(command):
    parser = argparse.ArgumentParser()
    evaluation.configure_parser(parser, command)
    runs = ["a"] if command == "eval" else ["a", "b"]
    train_spelling = evaluation.settings_from_args(parser.parse_args(
        [*runs, "--repeat-action-probability", "0.25", "--env-backend", "gymnasium"]))
    eval_spelling = evaluation.settings_from_args(
        parser.parse_args([*runs, "--sticky", "0.25", "--backend", "gymnasium"]))
    assert train_spelling == eval_spelling
    assert (train_spelling.sticky, train_spelling.backend) == (0.25, "gymnasium")


def test_evaluate_policy_takes_settings_and_named_overrides(random_run, seeded):
    settings = evaluation.EvalSettings(seed=5, **RANDOM_SETTINGS)
    overridden = evaluation.evaluate_policy(random_run, "teacher", settings, seed=4)
    assert overridden.settings["seed"] == 4 and overridden.returns == seeded.results[0].returns
    with pytest.raises(LoTUserError, match="unknown setting.*sticki; settings are episodes, greedy"):
        evaluation.evaluate_policy(random_run, sticki=0.25)


def test_the_frame_cap_marks_games_it_stopped():
    class CappedGames:  # two envs whose games end after 400 and 1000 frames; the cap is 1000
        num_envs = 2

        def reset(self, seed=None):
            return np.zeros((2, 4, 84, 84), np.uint8), {}

        def step(self, actions):
            info = {"_episode": np.array([True, True]),
                    "episode": {"r": np.array([1.0, 2.0]), "l": np.array([400, 1000])}}
            return np.zeros((2, 4, 84, 84), np.uint8), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool), info

    uniform = lambda obs: torch.zeros(obs.shape[0], 4)
    assert evaluation.play_games(CappedGames(), uniform, 2, max_frames=1000)[2] == [False, True]
    assert evaluation.play_games(CappedGames(), uniform, 2)[2] == [False, False]  # no cap given: none known
