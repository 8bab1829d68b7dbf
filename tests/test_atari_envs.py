import numpy as np
import pytest
from stable_baselines3.common.atari_wrappers import NoopResetEnv

from lot_rl.envs.atari import (BACKENDS, NativeGameStart, _wrappers, get_env_state, make_atari_env,
                               parse_env_id, set_env_state, validate_flavour)
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


def _agent_view(env, actions, obs):
    """What the agent sees of a one-env vector env's first game stepped with ``actions`` after the reset that
    returned ``obs``: the observations it decides on, the rewards and terminations of its own steps, the game's
    return; and where the env forced steps (``info["forced"]``: they take no action from ``actions`` and the
    learner leaves them out)."""
    frames, rewards, terminations, forced_steps = [], [], [], []
    actions = iter(actions)
    action = next(actions)
    while True:
        next_obs, reward, terminated, truncated, info = env.step(np.array([action]))
        if info.get("forced", [False])[0]:
            forced_steps.append(len(frames))
        else:
            frames.append(obs[0])
            rewards.append(float(reward[0]))
            terminations.append(bool(terminated[0]))
            action = next(actions)
        obs = next_obs
        if info.get("_episode", [False])[0]:
            return frames, rewards, terminations, float(info["episode"]["r"][0]), forced_steps


def test_native_game_start_pixels_and_life_losses_on_cleanrls_wrappers_are_the_native_env():
    """Issue 18's three arms together leave no difference: CleanRL's wrappers with the native env's game start
    (--native-game-start: one FIRE frame, then 0-28 NOOP frames, three blank frames in the stack), its pixels
    (--gray-first) and its life losses (--life-loss-continue) play a whole game of Breakout, 5 lives, frame for
    frame, reward for reward and termination for termination as the native env does with the same actions."""
    actions = np.random.default_rng(0).integers(0, 4, 2000)
    native = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale")
    want = _agent_view(native, actions, native.reset(seed=0)[0])[:4]
    native.close()
    assert [int(frame.max()) for frame in want[0][0]][:3] == [0, 0, 0]  # the native start: a blank stack
    assert sum(want[2]) == 5  # four lives lost, then the game over
    matches = []
    for noops in range(29):  # the native env's noops come from its own RNG: find the start it chose
        env = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="gymnasium", gray_first=True,
                             native_game_start=True, life_loss_continue=True)
        next(w for w in _wrappers(env.env.envs[0]) if isinstance(w, NativeGameStart)).override_num_noops = noops
        got = _agent_view(env, actions, env.reset(seed=0)[0])[:4]
        env.close()
        if np.array_equal(got[0][0], want[0][0]):
            matches.append(noops)
            assert len(got[0]) == len(want[0])
            assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0]))
            assert got[1:] == want[1:]
    assert len(matches) == 1


def test_cleanrl_game_start_and_life_restarts_on_the_native_env_are_cleanrls_games():
    """The other way round (issue 18's fix): the native env with CleanRL's game start (--cleanrl-game-start: NOOP
    frames, then FIRE and RIGHT as forced steps, a fresh stack) and CleanRL's life restarts (--life-loss-restart)
    gives the agent, at every one of its own steps in a whole game of Breakout, the observation, reward and
    termination that CleanRL's wrappers (with the native env's gray-first pixels) give it for the same actions."""
    actions = np.random.default_rng(2).integers(0, 4, 3000)
    native = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale", life_loss_restart=True,
                            cleanrl_game_start=True)
    want = _agent_view(native, actions, native.reset(seed=0)[0])
    native.close()
    assert sum(want[2]) == 5 and want[3] >= 2  # a whole game with points scored
    steps_per_life = np.diff([0] + [i + 1 for i, t in enumerate(want[2]) if t])
    assert want[4][:2] == [0, 0]  # FIRE, RIGHT forced before the agent's first step
    assert len(want[4]) == 2 + 3 * 4  # and NOOP, FIRE, RIGHT after each of the 4 lives lost before the last
    assert all(steps_per_life > 0)
    for noops in range(1, 31):  # the native env's NOOPs come from its own RNG: find a start that matches
        env = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="gymnasium", gray_first=True)
        next(w for w in _wrappers(env.env.envs[0]) if isinstance(w, NoopResetEnv)).override_num_noops = noops
        obs, _ = env.reset(seed=0)  # one reset only: FireResetEnv's steps make a second one a life's restart
        if np.array_equal(obs[0], want[0][0]):
            break
        env.close()
    else:
        raise AssertionError("no CleanRL start matches the native env's")
    got = _agent_view(env, actions, obs)
    env.close()
    assert got[4] == []  # CleanRL's hidden steps are inside its resets
    assert len(got[0]) == len(want[0])
    assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0]))
    assert got[1:4] == want[1:4]


def test_native_game_start_keeps_cleanrls_life_restarts():
    """--native-game-start alone moves only the game start: after a life loss the wrappers still take NOOP, FIRE,
    RIGHT and restart the stack with four copies of one frame; a new game starts on three blank frames."""
    env = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="gymnasium", native_game_start=True)
    obs, _ = env.reset(seed=1)
    assert [int(frame.max()) for frame in obs[0][:3]] == [0, 0, 0] and obs[0][3].max() > 0
    rng = np.random.default_rng(1)
    lives = games = 0
    while games < 1:
        obs, reward, terminated, truncated, info = env.step(rng.integers(0, 4, 1))
        if info.get("_episode", [False])[0]:
            games += 1
            assert [int(frame.max()) for frame in obs[0][:3]] == [0, 0, 0]
        elif terminated[0]:
            lives += 1
            assert all(np.array_equal(obs[0][i], obs[0][3]) for i in range(3)) and obs[0][3].max() > 0
    assert lives == 4
    env.close()


BREAKOUT_BALL_X, BREAKOUT_BALL_Y = 99, 101  # RAM addresses of the ball's position


def _first_balls(native_game_start: bool, noop_counts) -> list[tuple[int, int]]:
    """Where the ball is in the first observation of Breakout games started with each of ``noop_counts``
    NOOP frames."""
    env = make_atari_env("BreakoutNoFrameskip-v4", 1, backend="gymnasium", native_game_start=native_game_start,
                         episodic_life=False)  # every reset a new game
    start = next(w for w in _wrappers(env.env.envs[0]) if isinstance(w, (NoopResetEnv, NativeGameStart)))
    balls = []
    for i, noops in enumerate(noop_counts):
        start.override_num_noops = noops
        env.reset(seed=0 if i == 0 else None)
        ram = env.env.envs[0].unwrapped.ale.getRAM()
        balls.append((int(ram[BREAKOUT_BALL_X]), int(ram[BREAKOUT_BALL_Y])))
    env.close()
    return balls


def test_how_each_game_start_serves_the_first_ball_on_breakout():
    """The mechanism behind issue 18's game-start arm. CleanRL's start (1-30 NOOP frames, then FIRE) serves the
    ball from one of four places, chosen by the NOOP count, and the agent first sees it at the same height every
    game. The native env's start (FIRE on the first frame, then 0-28 NOOP frames) serves every game's first ball
    the same way, and the agent first sees it 0-28 frames further along that one path, nearer the paddle."""
    cleanrl = _first_balls(False, range(1, 31))
    assert {y for _, y in cleanrl} == {120}
    assert len({x for x, _ in cleanrl}) == 4
    assert all(cleanrl[i] == cleanrl[i + 4] for i in range(26))  # the serve cycles with the NOOP count
    native = _first_balls(True, range(29))
    assert len({x + y for x, y in native}) == 1  # one diagonal path: one serve
    assert [y - native[0][1] for _, y in native] == list(range(29))  # seen one frame further per NOOP


def test_gray_first_gives_cleanrls_wrappers_the_native_envs_pixels():
    """Issue 18's --gray-first arm: on Breakout's start screen the score, walls and bricks (the top 50 of 84 rows;
    below, the ball and paddle are where each env's own start put them) are the native env's pixel for pixel;
    CleanRL's RGB-then-gray frames differ there by rounding, one gray level at most."""
    frames = {}
    for name, kw in (("native", dict(backend="ale")), ("gray_first", dict(backend="gymnasium", gray_first=True)),
                     ("cleanrl", dict(backend="gymnasium"))):
        env = make_atari_env("BreakoutNoFrameskip-v4", 1, **kw)
        frames[name] = env.reset(seed=0)[0][0, -1, :50].astype(int)
        env.close()
    assert np.array_equal(frames["gray_first"], frames["native"])
    difference = np.abs(frames["cleanrl"] - frames["native"])
    assert difference.max() == 1 and difference.sum() > 0


@pytest.mark.parametrize("life_loss_continue", [False, True])
def test_env_state_restore_continues_the_same_games(tmp_path, life_loss_continue):
    env = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="gymnasium", life_loss_continue=life_loss_continue)
    env.reset(seed=3)
    _play(env, 100)
    state = get_env_state(env)
    save_checkpoint(tmp_path / "env.pt", "env", {"state": state})  # must survive a safe torch.load
    state = load_checkpoint(tmp_path / "env.pt")["state"]
    other = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="gymnasium", life_loss_continue=life_loss_continue)
    other.reset(seed=99)
    set_env_state(other, state)
    ra, ta, ga = _play(env, 400, seed=5)
    rb, tb, gb = _play(other, 400, seed=5)
    assert np.array_equal(ra, rb) and np.array_equal(ta, tb) and ga == gb
    assert get_env_state(make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale")) is None  # native: not capturable


def test_bad_env_options():
    with pytest.raises(LoTUserError, match="--num-envs must be >= 1"):
        make_atari_env("BreakoutNoFrameskip-v4", 0)
    with pytest.raises(LoTUserError, match="repeat-action-probability"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, repeat_action_probability=1.5)
    with pytest.raises(LoTUserError, match="--life-loss-continue .* use --env-backend gymnasium"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale", life_loss_continue=True)
    with pytest.raises(LoTUserError, match="--gray-first .* use --env-backend gymnasium"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale", gray_first=True)
    with pytest.raises(LoTUserError, match="--native-game-start .* use --env-backend gymnasium"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, backend="ale", native_game_start=True)
    with pytest.raises(LoTUserError, match="--cleanrl-game-start .* use --env-backend ale"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, backend="gymnasium", cleanrl_game_start=True)
    with pytest.raises(LoTUserError, match="--life-loss-restart and --life-loss-continue are opposites"):
        make_atari_env("BreakoutNoFrameskip-v4", 1, life_loss_restart=True, life_loss_continue=True)


def _cleanrl_breakout(num_envs: int):
    """CleanRL's ppo_atari.py environment, assembled here as its make_env does (its wrappers are SB3's; its
    gymnasium 0.29 turned frames gray with OpenCV), with gymnasium 0.29's same-step autoreset."""
    import cv2
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import (ClipRewardEnv, EpisodicLifeEnv, FireResetEnv,
                                                         MaxAndSkipEnv, NoopResetEnv)

    def make():
        env = gym.wrappers.RecordEpisodeStatistics(gym.make("BreakoutNoFrameskip-v4"))
        env = EpisodicLifeEnv(MaxAndSkipEnv(NoopResetEnv(env, noop_max=30), skip=4))
        env = ClipRewardEnv(FireResetEnv(env))
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.TransformObservation(env, lambda o: cv2.cvtColor(o, cv2.COLOR_RGB2GRAY),
                                                gym.spaces.Box(0, 255, (84, 84), np.uint8))
        return gym.wrappers.FrameStackObservation(env, 4)

    return gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def test_gymnasium_backend_is_cleanrls_environment():
    """Same seed, same actions: the same observations, clipped rewards and terminations as CleanRL's env,
    over several lives and games."""
    ours, cleanrl = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="gymnasium"), _cleanrl_breakout(2)
    obs_a, _ = ours.reset(seed=1)
    obs_b, _ = cleanrl.reset(seed=1)
    assert np.array_equal(obs_a, obs_b)
    rng = np.random.default_rng(1)
    terminations = 0
    for _ in range(600):
        actions = rng.integers(0, 4, 2)
        obs_a, r_a, term_a, trunc_a, _ = ours.step(actions)
        obs_b, r_b, term_b, trunc_b, _ = cleanrl.step(actions)
        assert np.array_equal(obs_a, obs_b) and np.array_equal(np.sign(r_a), r_b)
        assert np.array_equal(term_a, term_b) and np.array_equal(trunc_a, trunc_b)
        terminations += int(term_a.sum())
    assert terminations >= 4  # life losses happened, so the reset paths were compared too
    ours.close(), cleanrl.close()


def _noop(env, steps: int) -> tuple[np.ndarray, dict, int | None]:
    """NOOP for up to ``steps`` steps; stops at the first termination. Returns the last observation, info,
    and the step of the termination (None if none)."""
    for t in range(steps):
        obs, _, term, trunc, info = env.step(np.zeros(env.num_envs, dtype=np.int64))
        if term[0] or trunc[0]:
            return obs, info, t
    return obs, info, None


def _lives(env, info) -> int:
    """The emulator's lives: in the native env's info; read from the game under gymnasium's wrappers."""
    return int(info["lives"][0]) if "lives" in info else env.env.envs[0].unwrapped.ale.lives()


@pytest.mark.parametrize("backend, life", [("gymnasium", None), ("ale", "restart"), ("ale", None),
                                           ("gymnasium", "continue")])
def test_what_each_backend_does_after_a_life_loss_on_breakout(backend, life):
    """Issue 12 / 18: after a life loss the gymnasium backend (CleanRL's EpisodicLifeEnv + FireResetEnv) takes
    NOOP, FIRE and RIGHT inside its reset and restarts the frame stack: the agent's next observation is four
    copies of one frame and the ball is already in play. The native backend with ``life_loss_restart``
    (issue 18) does the same, except that its three hidden steps are forced steps the learner sees marked in
    ``info["forced"]``. Without it (the default), the native env only reports the life loss: the stack keeps
    the frames around it and the ball waits until the agent presses FIRE; so do CleanRL's wrappers with
    ``life_loss_continue`` (issue 18's experiment, the opposite conversion)."""
    restart = life == "restart"
    env = make_atari_env("BreakoutNoFrameskip-v4", 1, backend=backend, life_loss_restart=restart,
                         life_loss_continue=life == "continue")
    _, info = env.reset(seed=3)
    assert _lives(env, info) == 5
    obs, info, lost_at = _noop(env, 500)  # the game's start is fired by both backends: the ball falls past
    assert lost_at is not None and _lives(env, info) == 4
    if restart:
        assert not info["forced"].any()  # the step that lost the life was the agent's
        forced_actions = []
        for _ in range(3):
            env_actions = []
            original_step = env.env.step
            env.env.step = lambda a: (env_actions.append(int(a[0])), original_step(a))[1]
            obs, _, _, _, info = env.step(np.zeros(1, dtype=np.int64))
            env.env.step = original_step
            assert info["forced"][0]  # the learner leaves these steps out of its loss
            forced_actions += env_actions
        assert forced_actions == [0, 1, 2]  # NOOP, FIRE, RIGHT: CleanRL's hidden steps, in its order
    frames_alike = all(np.array_equal(obs[0, 0], obs[0, k]) for k in range(1, 4))
    _, info, next_loss = _noop(env, 300)  # the agent never presses FIRE
    if (backend == "gymnasium" and life != "continue") or restart:
        assert frames_alike  # a fresh stack
        assert next_loss is not None and _lives(env, info) == 3  # the ball was launched for the agent
    else:
        assert not frames_alike  # the stack runs on across the life loss
        assert next_loss is None and _lives(env, info) == 4  # the ball waits for FIRE
        env.step(np.ones(1, dtype=np.int64))  # FIRE
        _, info, next_loss = _noop(env, 300)
        assert next_loss is not None and _lives(env, info) == 3
    env.close()


def test_life_loss_restart_stacks_frames_as_the_native_env_between_life_losses():
    """The restarting wrapper stacks frames itself (the native env runs with a stack of one): between life
    losses its observations equal the native env's own 4-frame stack, for the same seed and actions."""
    ours = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="ale", life_loss_restart=True)
    native = make_atari_env("BreakoutNoFrameskip-v4", 2, backend="ale", life_loss_restart=False)
    obs_a, _ = ours.reset(seed=5)
    obs_b, _ = native.reset(seed=5)
    assert np.array_equal(obs_a[:, -1], obs_b[:, -1])  # the first frame; the native stack pads with blanks
    rng = np.random.default_rng(0)
    compared = 0
    for step in range(200):  # up to the first life loss
        actions = rng.integers(0, 4, 2)
        obs_a, r_a, term_a, _, info_a = ours.step(actions)
        obs_b, r_b, term_b, _, _ = native.step(actions)
        assert not info_a["forced"].any() and np.array_equal(term_a, term_b) and np.array_equal(r_a, r_b)
        if term_a.any():
            break
        if step >= 3:  # once the blank padding of the native stack has rolled out
            assert np.array_equal(obs_a, obs_b)
            compared += 1
    assert compared >= 10
    ours.close(), native.close()


def test_native_envs_stepped_together_are_each_env_alone():
    """Issue 18: env i of the native vector env (seeded seed + i) gives, under its own actions, the frames,
    rewards and terminations of that env built alone with seed + i: stepping the envs in C++ threads neither
    mixes their games nor reorders their results."""
    steps, num_envs = 300, 4
    actions = np.random.default_rng(0).integers(0, 4, (steps, num_envs))
    together = make_atari_env("BreakoutNoFrameskip-v4", num_envs, 1, backend="ale")
    frames, _ = together.reset(seed=1)
    seen = [(frames.copy(), None, None)]
    for t in range(steps):
        obs, reward, terminated, _, _ = together.step(actions[t])
        seen.append((obs.copy(), reward.copy(), terminated.copy()))
    together.close()
    for i in range(num_envs):
        alone = make_atari_env("BreakoutNoFrameskip-v4", 1, 1 + i, backend="ale")
        obs, _ = alone.reset(seed=1 + i)
        np.testing.assert_array_equal(obs[0], seen[0][0][i])
        for t in range(steps):
            obs, reward, terminated, _, _ = alone.step(actions[t, i:i + 1])
            np.testing.assert_array_equal(obs[0], seen[t + 1][0][i], err_msg=f"env {i}, step {t}")
            assert reward[0] == seen[t + 1][1][i] and terminated[0] == seen[t + 1][2][i]
        alone.close()
