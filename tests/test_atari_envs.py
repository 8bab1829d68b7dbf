import numpy as np
import pytest

from lot_rl.envs.atari import (get_env_state, make_atari_env, parse_env_id, set_env_state, validate_flavour)
from lot_rl.checkpoint import load_checkpoint, save_checkpoint
from lot_rl.errors import LoTUserError


def test_env_ids_are_parsed():
    assert parse_env_id("BreakoutNoFrameskip-v4").rom == "breakout"
    assert parse_env_id("ALE/Breakout-v5").default_sticky == 0.25
    assert parse_env_id("BreakoutNoFrameskip-v4").default_sticky == 0.0
    assert parse_env_id("MsPacmanNoFrameskip-v4").rom == "ms_pacman"
    assert parse_env_id("breakout").name == "Breakout"


def test_unknown_env_id_suggests_close_names():
    with pytest.raises(LoTUserError, match="unknown Atari env id 'Breakuot-v4'; did you mean BreakoutNoFrameskip-v4"):
        parse_env_id("Breakuot-v4")
    with pytest.raises(LoTUserError, match="only -v4 and -v5"):
        parse_env_id("Breakout-v3")


def test_flavour_validation_lists_valid_values():
    validate_flavour("ALE/Breakout-v5", 4, 1)
    with pytest.raises(LoTUserError, match=r"Breakout has no mode 3; valid modes: \[0, 4, 8"):
        validate_flavour("ALE/Breakout-v5", 3, None)


def _play(env, steps, seed=0):
    """Random play; returns per-step raw rewards, terminations and the reported finished games."""
    rng = np.random.default_rng(seed)
    rewards, terms, games = [], [], []
    for _ in range(steps):
        _, r, term, trunc, info = env.step(rng.integers(0, env.single_action_space.n, env.num_envs))
        rewards.append(r.copy())
        terms.append(term.copy())
        games.append({int(i): (info["episode"]["r"][i], info["episode"]["l"][i])
                      for i in np.flatnonzero(info.get("_episode", np.zeros(env.num_envs, bool)))})
    return np.array(rewards), np.array(terms), games


@pytest.mark.parametrize("backend", ["ale", "gymnasium"])
def test_episode_statistics_report_true_game_returns(backend):
    """Space Invaders pays 5-30 points per alien: returns must be unclipped and summed over all lives,
    while the env terminates (for learning) at every life loss."""
    env = make_atari_env("SpaceInvadersNoFrameskip-v4", 2, seed=0, backend=backend)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    rewards, terms, games = _play(env, 1500)
    env.close()
    finished = [(t, i, ret, length) for t, g in enumerate(games) for i, (ret, length) in g.items()]
    assert finished, "random play should finish a game of Space Invaders in 1500 steps"
    assert terms.sum() > len(finished)  # life losses terminate without ending the game
    assert rewards.max() > 1  # raw rewards, not clipped
    for env_index in range(2):
        start = 0
        for t, i, ret, length in finished:
            if i != env_index:
                continue
            assert ret == pytest.approx(rewards[start:t + 1, i].sum())
            steps = t + 1 - start
            assert 4 * steps - 3 <= length <= 4 * steps + 4 * 30 + 8  # frames: 4 per step (+ no-op start)
            start = t + 1


def test_backends_build_the_same_spaces():
    a = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale")
    b = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="gymnasium")
    assert a.single_observation_space.shape == b.single_observation_space.shape == (4, 84, 84)
    assert a.single_action_space.n == b.single_action_space.n == 4
    oa, _ = a.reset(seed=0)
    ob, _ = b.reset(seed=0)
    # Both show the same start screen after preprocessing, up to resize/grayscale rounding.
    assert np.abs(oa[0, -1].astype(int) - ob[0, -1].astype(int)).mean() < 8
    a.close(), b.close()


def test_env_state_restore_continues_the_same_games(tmp_path):
    env = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="gymnasium")
    env.reset(seed=3)
    _play(env, 100)
    state = get_env_state(env)
    save_checkpoint(tmp_path / "env.pt", "env", {"state": state})  # must survive a safe torch.load
    state = load_checkpoint(tmp_path / "env.pt")["state"]
    other = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="gymnasium")
    other.reset(seed=99)
    set_env_state(other, state)
    ra, ta, ga = _play(env, 400, seed=5)
    rb, tb, gb = _play(other, 400, seed=5)
    assert np.array_equal(ra, rb) and np.array_equal(ta, tb) and ga == gb
    assert get_env_state(make_atari_env("BreakoutNoFrameskip-v4", 1)) is None  # native: not capturable


def test_bad_env_options():
    with pytest.raises(LoTUserError, match="--num-envs must be >= 1"):
        make_atari_env("BreakoutNoFrameskip-v4", 0)
    with pytest.raises(LoTUserError, match="repeat-action-probability"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, repeat_action_probability=1.5)
