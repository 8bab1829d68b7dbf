"""IQM, bootstrap intervals and the probability of improvement on inputs with known answers."""

import numpy as np
import pytest

from lot_rl import stats
from lot_rl.errors import LoTUserError


@pytest.mark.parametrize("values, expected", [
    ([5.0], 5.0),                        # n < 4: nothing is cut
    ([1.0, 2.0, 9.0], 4.0),
    ([1.0, 2.0, 3.0, 100.0], 2.5),       # int(0.25 * 4) = 1 cut from each end
    ([0.0, 0.0, 0.0, 0.0, 100.0], 0.0),  # int(1.25) = 1
    (list(range(1, 9)), 4.5),            # middle four of 1..8: 3, 4, 5, 6
    ([8, 1, 7, 2, 6, 3, 5, 4], 4.5),     # order does not matter
])
def test_iqm_known_values(values, expected):
    assert stats.iqm(values) == pytest.approx(expected)


def test_iqm_matches_scipy_trim_mean():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in range(1, 40):
        x = rng.exponential(10.0, size=n)
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))


def test_iqm_along_axis_is_rowwise():
    x = np.array([[1.0, 2.0, 3.0, 100.0], [4.0, 4.0, 4.0, 4.0]])
    np.testing.assert_allclose(stats.iqm(x, axis=-1), [2.5, 4.0])


def test_bootstrap_interval_of_constant_is_the_constant():
    assert stats.bootstrap_interval([7.0] * 10) == (7.0, 7.0)


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    x = np.random.default_rng(0).normal(50.0, 10.0, size=30)
    low, high = stats.bootstrap_interval(x)
    assert (low, high) == stats.bootstrap_interval(x)  # fixed seed
    assert low < stats.iqm(x) < high
    assert stats.bootstrap_interval(x, seed=1) != (low, high)
    # A different statistic and confidence: the mean's 50% interval sits inside its 95% interval.
    m95 = stats.bootstrap_interval(x, lambda s, axis: s.mean(axis=axis))
    m50 = stats.bootstrap_interval(x, lambda s, axis: s.mean(axis=axis), confidence=0.5)
    assert m95[0] < m50[0] < x.mean() < m50[1] < m95[1]


def test_bootstrap_interval_covers_the_true_iqm_about_95_percent_of_the_time():
    # For a symmetric distribution the population IQM equals the mean (here 0).
    rng = np.random.default_rng(1)
    trials = 200
    covered = sum(lo <= 0.0 <= hi for lo, hi in
                  (stats.bootstrap_interval(rng.normal(0.0, 1.0, 60), resamples=1000, seed=t)
                   for t in range(trials)))
    assert 0.88 <= covered / trials <= 0.995


def test_interval_shrinks_with_more_episodes():
    rng = np.random.default_rng(2)
    small, large = rng.normal(0, 1, 20), rng.normal(0, 1, 500)
    width = lambda x: np.subtract(*stats.bootstrap_interval(x)[::-1])
    assert width(large) < width(small) / 3


def test_summarize_fields():
    s = stats.summarize([1.0, 2.0, 3.0, 100.0])
    assert (s.episodes, s.mean, s.median, s.iqm, s.min, s.max) == (4, 26.5, 2.5, 2.5, 1.0, 100.0)
    assert s.std == pytest.approx(np.std([1.0, 2.0, 3.0, 100.0]))
    assert s.iqm_low <= s.iqm <= s.iqm_high
    assert set(s.to_dict()) == {"episodes", "mean", "std", "median", "iqm", "iqm_low", "iqm_high", "min", "max"}


def test_probability_of_improvement_known_values():
    # pairs (2,1) win, (2,2) tie, (3,1) win, (3,2) win -> (3 + 0.5) / 4
    assert stats.probability_of_improvement([2.0, 3.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert stats.probability_of_improvement([5.0, 6.0], [1.0, 2.0]) == 1.0
    assert stats.probability_of_improvement([1.0, 2.0], [5.0, 6.0]) == 0.0
    assert stats.probability_of_improvement([3.0, 3.0], [3.0]) == 0.5
    x, y = np.random.default_rng(4).normal(size=(2, 25))
    assert stats.probability_of_improvement(x, y) + stats.probability_of_improvement(y, x) == pytest.approx(1.0)


def test_compare_returns_shift():
    rng = np.random.default_rng(5)
    baseline = rng.normal(100.0, 5.0, size=40)
    better = baseline + 10.0
    c = stats.compare_returns(better, baseline)
    assert c.iqm_difference == pytest.approx(10.0)
    assert 0.0 < c.difference_low < 10.0 < c.difference_high
    assert c.probability_of_improvement > 0.8 and c.poi_low <= c.probability_of_improvement <= c.poi_high
    same = stats.compare_returns(baseline, baseline)
    assert same.probability_of_improvement == 0.5 and same.iqm_difference == 0.0
    assert same.difference_low < 0.0 < same.difference_high
    assert same.poi_low < 0.5 < same.poi_high
    assert stats.compare_returns(better, baseline) == c  # reproducible


def test_bad_inputs_are_user_errors():
    with pytest.raises(LoTUserError, match="at least one"):
        stats.summarize([])
    with pytest.raises(LoTUserError, match="confidence"):
        stats.bootstrap_interval([1.0], confidence=1.5)
