"""Seed-level statistics across games against hand computations (rliable's definitions)."""

import itertools

import numpy as np
import pytest

from lot_rl import suite_stats as S


@pytest.mark.parametrize("env_id, key", [
    ("MinAtar/Breakout-v1", "MinAtar/Breakout"), ("MinAtar/SpaceInvaders-v0", "MinAtar/SpaceInvaders"),
    ("BreakoutNoFrameskip-v4", "Breakout"), ("ALE/Breakout-v5", "Breakout"), ("Pong-v4", "Pong"),
    ("UpNDown", "UpNDown"),
])
def test_game_key(env_id, key):
    assert S.game_key(env_id) == key


def test_normalization_table_covers_minatar_and_the_papers_atari_games():
    for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"):
        anchors = S.NORMALIZATION[f"MinAtar/{game}"]
        assert anchors.reference > anchors.random and anchors.random_source and anchors.reference_source
    for game in ("BeamRider", "Breakout", "UpNDown", "Gravitar", "Pong"):
        assert game in S.NORMALIZATION
    np.testing.assert_allclose(S.normalize("Breakout", [1.7, 30.5, 16.1]), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(S.normalize("Pong", [-20.7, 14.6]), [0.0, 1.0])
    assert S.normalize("NoSuchGame", [1.0]) is None


def test_aggregate_iqm_pools_all_runs_of_all_games():
    # 1..8 pooled: the middle four are 3, 4, 5, 6
    assert S.aggregate_iqm(np.array([1.0, 2, 3, 4]), np.array([5.0, 6, 7, 8])) == pytest.approx(4.5)
    # one outlier run cannot move it: 0, 0, 0, 0, 100 -> int(1.25) = 1 cut each end -> mean(0, 0, 0)
    assert S.aggregate_iqm(np.array([0.0, 0.0]), np.array([0.0, 0.0, 100.0])) == pytest.approx(0.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(0).normal(size=(5, 7))
    assert S.aggregate_iqm(*x) == pytest.approx(scipy_stats.trim_mean(x.reshape(-1), 0.25))


def test_aggregate_mean_weighs_games_equally():
    assert S.aggregate_mean(np.array([1.0, 3.0]), np.array([10.0])) == pytest.approx((2.0 + 10.0) / 2)


def test_probability_of_improvement_with_ties_by_hand():
    # game 1: x = 1, 2, 3 against y = 2, 2, 1: x=1 -> 0 + 0 + 1/2; x=2 -> 1/2 + 1/2 + 1; x=3 -> 3. Sum 5.5 of 9.
    # game 2: one run each, equal: 1/2. Averaged over games.
    expected = (5.5 / 9 + 0.5) / 2
    x, y = [np.array([1.0, 2, 3]), np.array([5.0])], [np.array([2.0, 2, 1]), np.array([5.0])]
    assert S.probability_of_improvement(x, y) == pytest.approx(expected)
    assert S.probability_of_improvement(y, x) == pytest.approx(1 - expected)  # P(X > Y) + P(Y > X) = 1
    assert S.probability_of_improvement([np.array([4.0, 4.0])], [np.array([4.0])]) == 0.5


def test_probability_of_improvement_matches_rliable():
    metrics = pytest.importorskip("rliable.metrics")  # its metrics import; its bootstrap module does not here
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 4, size=(6, 3)).astype(float), rng.integers(0, 4, size=(6, 3)).astype(float)
    ours = S.probability_of_improvement(list(x.T), list(y.T))
    assert ours == pytest.approx(metrics.probability_of_improvement(x, y))  # rliable: (runs, games) matrices


def test_performance_profile_by_hand():
    taus = np.array([0.0, 0.5, 1.5])
    profile = S.profile_statistic(taus)(np.array([0.1, 0.5]), np.array([1.0, 2.0]))
    # game 1: above 0 -> 2/2, above 0.5 -> 0/2 (not strictly), above 1.5 -> 0/2; game 2: 2/2, 2/2, 1/2
    np.testing.assert_allclose(profile, [1.0, 0.5, 0.25])


def test_stratified_bootstrap_resamples_within_games_only():
    # Each game's runs are all equal: resampling within games cannot move the mean, while pooling the six runs
    # and resampling them together would.
    low, high = S.stratified_interval([np.zeros(3), np.full(3, 10.0)], S.aggregate_mean, resamples=500)
    assert (float(low), float(high)) == (5.0, 5.0)
    # A game with a single run enters every resample as it is.
    low, high = S.stratified_interval([np.array([0.0, 0.0, 0.0, 0.0]), np.array([7.0])], S.aggregate_mean,
                                      resamples=500)
    assert (float(low), float(high)) == (3.5, 3.5)


def test_stratified_bootstrap_percentiles_match_the_exact_distribution():
    # Games [0, 1] and [0, 2]: the 16 equally likely resamples give the aggregate mean exactly; with many
    # resamples the percentile interval is the exact distribution's quantiles.
    a, b = np.array([0.0, 1.0]), np.array([0.0, 2.0])
    exact = [S.aggregate_mean(a[list(i)], b[list(j)]) for i in itertools.product(range(2), repeat=2)
             for j in itertools.product(range(2), repeat=2)]
    low, high = S.stratified_interval([a, b], S.aggregate_mean, resamples=20_000)
    assert (float(low), float(high)) == (min(exact), max(exact)) == (0.0, 1.5)  # each extreme has mass 1/16
    low50, high50 = S.stratified_interval([a, b], S.aggregate_mean, confidence=0.5, resamples=20_000)
    assert (float(low50), float(high50)) == tuple(np.percentile(exact, [25, 75]))


def test_stratified_bootstrap_equals_an_explicit_resampling():
    # The same stratified bootstrap written out with NumPy: the intervals agree to Monte Carlo error.
    rng = np.random.default_rng(5)
    games = [rng.normal(loc, 1.0, size=n) for loc, n in ((0.0, 5), (3.0, 8), (-1.0, 6))]
    resamples = 20_000
    draws = [g[rng.integers(0, g.size, size=(resamples, g.size))] for g in games]
    explicit = S.aggregate_iqm(*draws)
    ours = S.stratified_interval(games, S.aggregate_iqm, resamples=resamples)
    np.testing.assert_allclose(ours, np.percentile(explicit, [2.5, 97.5]), atol=0.05)


def test_stratified_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    locations = np.array([0.0, 1.0, 5.0, -2.0])
    truth = locations.mean()
    trials, covered = 200, 0
    for t in range(trials):
        games = [rng.normal(loc, 1.0, size=10) for loc in locations]
        low, high = S.stratified_interval(games, S.aggregate_mean, resamples=1000, seed=t)
        covered += low <= truth <= high
    assert 0.88 <= covered / trials <= 0.99


def test_stratified_bootstrap_is_reproducible_and_vector_valued():
    rng = np.random.default_rng(3)
    games = [rng.normal(size=(4, 5)), rng.normal(size=(4, 3))]  # 4 curve points x runs
    low, high = S.stratified_interval(games, S.aggregate_iqm, resamples=500)
    assert low.shape == high.shape == (4,) and np.all(low <= high)
    again = S.stratified_interval(games, S.aggregate_iqm, resamples=500)
    np.testing.assert_array_equal(low, again[0])
    assert not np.array_equal(low, S.stratified_interval(games, S.aggregate_iqm, resamples=500, seed=1)[0])
    point = S.aggregate_iqm(*games)
    assert np.all((low <= point + 1e-12) & (point - 1e-12 <= high))
