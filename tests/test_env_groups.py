"""Envs in groups (``--env-groups``): the same games as one vector env, and a rollout order that hides the emulator."""

import numpy as np
import pytest

from lot_rl.envs import make_env
from lot_rl.envs.groups import EnvGroups, concat_infos, interleaved_steps
from lot_rl.errors import LoTUserError

STEPS = 300  # long enough for several lives and whole games of random Breakout play


def _fixed_actions(num_envs, steps=STEPS, seed=0):
    return np.random.default_rng(seed).integers(0, 4, (steps, num_envs))


def _record(results, log, step, envs_now):
    obs, reward, term, trunc, info = results
    for row, env in enumerate(range(envs_now.start, envs_now.stop)):
        log.setdefault(env, []).append((step, obs[row].copy(), float(reward[row]), bool(term[row]), bool(trunc[row])))
    for row in np.flatnonzero(info.get("_episode", [])):
        log.setdefault("games", []).append((step, envs_now.start + int(row), float(info["episode"]["r"][row]),
                                            int(info["episode"]["l"][row])))


def _rollout(groups, actions):
    """Play ``actions`` (one per step and env) through interleaved_steps; every env's steps and finished games."""
    envs = make_env("BreakoutNoFrameskip-v4", actions.shape[1], 1, num_threads=1, groups=groups, backend="ale")
    envs.reset(seed=7)
    log, asked = {}, []

    def act(step, envs_now):
        asked.append((step, envs_now.start))
        return actions[step, envs_now]

    for step, envs_now, results in interleaved_steps(envs, len(actions), act):
        _record(results, log, step, envs_now)
    envs.close()
    return log, asked


def test_groups_play_the_games_of_one_vector_env():
    actions = _fixed_actions(4)
    one, _ = _rollout(1, actions)
    two, asked = _rollout(2, actions)
    assert len(one["games"]) >= 4  # whole games ended (and lives were lost) on the way
    assert one["games"] == two["games"]  # exact episode statistics: the same games, returns, lengths, steps
    for env in range(4):
        assert len(two[env]) == STEPS  # every env made exactly its steps
        for (s1, o1, r1, t1, u1), (s2, o2, r2, t2, u2) in zip(one[env], two[env]):
            assert (s1, r1, t1, u1) == (s2, r2, t2, u2) and np.array_equal(o1, o2)
    # the network acts for group 1 while group 0's games run, then for group 0 while group 1's run
    assert asked[:4] == [(0, 0), (0, 2), (1, 0), (1, 2)] and len(asked) == 2 * STEPS


def test_interleaved_order_records_before_acting_again():
    """A group's results come back before its next action is asked for, env 0's first within a step."""
    envs = make_env("BreakoutNoFrameskip-v4", 4, 1, num_threads=1, groups=2, backend="ale")
    envs.reset(seed=0)
    events = []

    def act(step, envs_now):
        events.append(("act", step, envs_now.start))
        return np.zeros(2, dtype=np.int64)

    for step, envs_now, _ in interleaved_steps(envs, 3, act):
        events.append(("result", step, envs_now.start))
    envs.close()
    assert events == [("act", 0, 0), ("act", 0, 2), ("result", 0, 0), ("act", 1, 0), ("result", 0, 2), ("act", 1, 2),
                      ("result", 1, 0), ("act", 2, 0), ("result", 1, 2), ("act", 2, 2),
                      ("result", 2, 0), ("result", 2, 2)]


def test_env_groups_step_and_reset_as_one_vector_env():
    actions = _fixed_actions(4, steps=60, seed=1)
    one = make_env("BreakoutNoFrameskip-v4", 4, 1, num_threads=1, backend="ale")
    two = make_env("BreakoutNoFrameskip-v4", 4, 1, num_threads=1, groups=2, backend="ale")
    assert isinstance(two, EnvGroups) and two.columns == [slice(0, 2), slice(2, 4)]
    assert two.observation_space.shape == (4, 4, 84, 84) and two.single_action_space.n == 4
    obs1, info1 = one.reset(seed=3)
    obs2, info2 = two.reset(seed=3)
    assert np.array_equal(obs1, obs2) and np.array_equal(info1["lives"], info2["lives"])
    for a in actions:
        r1, r2 = one.step(a), two.step(a)
        for x, y in zip(r1[:4], r2[:4]):
            assert np.array_equal(x, y)
    one.close()
    two.close()


def test_concat_infos_fills_what_a_group_lacks():
    infos = [{"lives": np.array([3, 2])},
             {"lives": np.array([5]), "_episode": np.array([True]), "episode": {"r": np.array([4.0]), "l": np.array([9])}}]
    joined = concat_infos(infos, [2, 1])
    assert joined["lives"].tolist() == [3, 2, 5]
    assert joined["_episode"].tolist() == [False, False, True]
    assert joined["episode"]["r"].tolist() == [0.0, 0.0, 4.0] and joined["episode"]["l"].tolist() == [0, 0, 9]


@pytest.mark.parametrize("env_id, kwargs, message", [
    ("BreakoutNoFrameskip-v4", dict(groups=3, backend="ale"), "--env-groups 3 does not divide --num-envs 4"),
    ("BreakoutNoFrameskip-v4", dict(groups=0, backend="ale"), "--env-groups must be >= 1, got 0"),
    ("BreakoutNoFrameskip-v4", dict(groups=2, backend="gymnasium"), "--env-groups 2 needs the native Atari backend"),
    ("MinAtar/Breakout-v1", dict(groups=2), "--env-groups is an Atari option"),
])
def test_impossible_groups_are_refused_in_one_line(env_id, kwargs, message):
    with pytest.raises(LoTUserError, match=message):
        make_env(env_id, 4, 1, **kwargs)
