"""envs/minatar.py and the lot_rl.envs interface: ids, the vector env against MinAtar's own games, episode
statistics, sticky actions, the frame cap, pictures, Atari-only options, and MinAtar without its package."""

import sys

import gymnasium as gym
import numpy as np
import pytest

from lot_rl import envs
from lot_rl.cli import main
from lot_rl.envs import minatar
from lot_rl.errors import LoTUserError

GAMES = ["MinAtar/Asterix-v1", "MinAtar/Breakout-v1", "MinAtar/Freeway-v1", "MinAtar/Seaquest-v1",
         "MinAtar/SpaceInvaders-v1"]


def test_env_ids_are_parsed_and_dispatched():
    game = envs.parse_env_id("MinAtar/SpaceInvaders-v1")
    assert (game.family, game.name, game.key, game.default_sticky) == ("minatar", "MinAtar-SpaceInvaders",
                                                                      "minatar:space_invaders", 0.1)
    assert envs.parse_env_id("MinAtar/breakout-v0").env_id == "MinAtar/Breakout-v0"
    atari = envs.parse_env_id("BreakoutNoFrameskip-v4")
    assert atari.family == "atari" and atari.key == "atari:breakout" and atari.key != envs.parse_env_id(
        "MinAtar/Breakout-v1").key
    with pytest.raises(LoTUserError, match=r"unknown MinAtar env id 'MinAtar/Breakot-v1'; did you mean "
                                           r"MinAtar/Breakout-v1\?"):
        envs.parse_env_id("MinAtar/Breakot-v1")
    with pytest.raises(LoTUserError, match="MinAtar ids are -v1"):
        envs.parse_env_id("MinAtar/Breakout-v3")


@pytest.mark.filterwarnings("ignore:.*MinAtar/Breakout-v0 is out of date")  # v0 on purpose: all six actions
@pytest.mark.parametrize("env_id, channels, actions", [
    ("MinAtar/Asterix-v1", 4, 5), ("MinAtar/Breakout-v1", 4, 3), ("MinAtar/Freeway-v1", 7, 3),
    ("MinAtar/Seaquest-v1", 10, 6), ("MinAtar/SpaceInvaders-v1", 6, 4), ("MinAtar/Breakout-v0", 4, 6)])
def test_observations_are_uint8_channels_first(env_id, channels, actions):
    env = envs.make_env(env_id, 3, seed=0)
    obs, _ = env.reset(seed=0)
    assert env.single_observation_space.shape == (channels, 10, 10) and env.single_action_space.n == actions
    assert obs.shape == (3, channels, 10, 10) and obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
    assert env.observation_space.shape == (3, channels, 10, 10)
    env.close()


@pytest.mark.parametrize("env_id", GAMES)
def test_vector_env_plays_exactly_minatars_games(env_id):
    """Step by step against MinAtar's registered gymnasium envs seeded alike (sticky actions 0.1 included):
    the same grids, rewards and terminations, and every finished game's true return and length."""
    num_envs, steps = 3, 400
    env = minatar.make_minatar_env(env_id, num_envs, seed=0)
    obs, _ = env.reset(seed=10)
    references = [gym.make(env_id) for _ in range(num_envs)]
    expected = [ref.reset(seed=10 + i)[0] for i, ref in enumerate(references)]
    returns, lengths, finished_games = np.zeros(num_envs), np.zeros(num_envs, int), 0
    rng = np.random.default_rng(0)
    for _ in range(steps):
        np.testing.assert_array_equal(obs, np.stack([e.transpose(2, 0, 1) for e in expected]).astype(np.uint8))
        actions = rng.integers(0, env.single_action_space.n, num_envs)
        obs, reward, terminated, truncated, info = env.step(actions)
        assert not truncated.any()  # MinAtar has no time limit
        for i, ref in enumerate(references):
            expected[i], ref_reward, ref_done, _, _ = ref.step(int(actions[i]))
            assert reward[i] == ref_reward and terminated[i] == ref_done
            returns[i] += ref_reward
            lengths[i] += 1
            assert bool(info.get("_episode", np.zeros(num_envs, bool))[i]) == ref_done
            if ref_done:
                assert info["episode"]["r"][i] == returns[i] and info["episode"]["l"][i] == lengths[i]
                returns[i], lengths[i], finished_games = 0.0, 0, finished_games + 1
                expected[i], _ = ref.reset()  # same-step autoreset: obs is already the next game's first grid
    if env_id != "MinAtar/Freeway-v1":  # a Freeway game lasts 2,500 steps
        assert finished_games > 0


def test_sticky_actions_default_to_minatars_and_can_be_changed():
    def sticky(env):
        return [sub.game.sticky_action_prob for sub in env.envs]
    assert sticky(envs.make_env("MinAtar/Breakout-v1", 2)) == [0.1, 0.1]
    assert sticky(envs.make_env("MinAtar/Breakout-v1", 2, repeat_action_probability=0.0)) == [0.0, 0.0]
    with pytest.raises(LoTUserError, match="repeat-action-probability must be in"):
        envs.make_env("MinAtar/Breakout-v1", 1, repeat_action_probability=1.0)


def test_frame_cap_truncates_and_reports_the_game():
    env = envs.make_env("MinAtar/Freeway-v1", 2, seed=0, training=False, max_episode_frames=50)
    env.reset(seed=0)
    for step in range(1, 51):
        _, _, terminated, truncated, info = env.step(np.zeros(2, int))  # no-op: the chicken waits, no game ends
        assert not terminated.any()
    assert truncated.all() and info["_episode"].all() and list(info["episode"]["l"]) == [50, 50]
    _, _, _, truncated, info = env.step(np.zeros(2, int))
    assert not truncated.any() and "_episode" not in info  # new games started


def test_frames_draw_each_channel_in_its_colour():
    grid = np.zeros((4, 10, 10), np.uint8)
    grid[0, 9, 4] = 1  # paddle
    grid[1, 3, 2] = grid[3, 3, 2] = 1  # the ball over a brick: the ball is drawn
    frame = minatar.grid_to_rgb(grid, scale=8)
    assert frame.shape == (80, 80, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[72:80, 32:40], np.broadcast_to(minatar.CHANNEL_COLOURS[0], (8, 8, 3)))
    np.testing.assert_array_equal(frame[24:32, 16:24], np.broadcast_to(minatar.CHANNEL_COLOURS[1], (8, 8, 3)))
    assert frame.reshape(-1, 3).any(axis=1).sum() == 2 * 64  # everything else black
    assert len({tuple(c) for c in minatar.CHANNEL_COLOURS}) == len(minatar.CHANNEL_COLOURS)  # distinct colours
    env = envs.make_env("MinAtar/Seaquest-v1", 2, render=True)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(envs.render_frame(env, 1), minatar.grid_to_rgb(obs[1]))


@pytest.mark.parametrize("options, message", [
    (dict(full_action_space=True), "--full-action-space is an Atari option"),
    (dict(backend="gymnasium"), "env backend 'gymnasium' is an Atari option"),
    (dict(mode=1), "--mode/--difficulty are Atari options"),
    (dict(num_threads=2), "--env-threads is an Atari option"),
    (dict(life_loss_continue=True), "--life-loss-continue is an Atari option"),
    (dict(gray_first=True), "--gray-first is an Atari option"),
    (dict(native_game_start=True), "--native-game-start is an Atari option"),
    (dict(cleanrl_game_start=True), "--cleanrl-game-start is an Atari option"),
])
def test_atari_only_options_are_refused(options, message):
    with pytest.raises(LoTUserError, match=message):
        envs.make_env("MinAtar/Breakout-v1", 1, **options)


def test_minatar_without_its_package_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "minatar", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "minatar.gym", None)
    assert main(["train", "--env-id", "MinAtar/Breakout-v1", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith('pip install -e ".[minatar]"')
    assert not any(tmp_path.iterdir())
    envs.parse_env_id("BreakoutNoFrameskip-v4")  # Atari needs nothing more
