"""Statistics for evaluation returns: IQM, bootstrap intervals and the probability of improvement.

Few episodes of a noisy game make the mean a poor summary. Following Agarwal et al. (2021), "Deep RL at
the Edge of the Statistical Precipice" (rliable), evaluations report the interquartile mean (IQM, the mean
of the middle 50% of returns: robust to a few outlier games yet using half the data, unlike the median)
with a 95% percentile-bootstrap interval, and compare two agents by the probability of improvement
P(X > Y) and the bootstrap interval of their IQM difference.

Everything is plain NumPy (no SciPy). Bootstraps use a fixed seed, so the same returns always give the
same interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from lot_rl.errors import require

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _as_array(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    require(x.size > 0, f"{name}: need at least one value")
    return x


def trimmed_mean(values: Sequence[float] | np.ndarray, proportion: float, axis: int = -1) -> np.ndarray | float:
    """Mean after cutting ``int(proportion * n)`` values from each end (``scipy.stats.trim_mean``'s rule)."""
    x = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    require(0.0 <= proportion < 0.5, f"trim proportion must be in [0, 0.5), got {proportion}")
    cut = int(proportion * n)
    middle = np.take(x, np.arange(cut, n - cut), axis=axis)
    result = middle.mean(axis=axis)
    return float(result) if np.ndim(result) == 0 else result


def iqm(values: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% (``trim_mean(values, 0.25)``)."""
    return trimmed_mean(values, 0.25, axis=axis)


def _resample(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap samples of ``x`` (with replacement), shape (resamples, n)."""
    return x[rng.integers(0, x.size, size=(resamples, x.size))]


def _percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float] | np.ndarray,
                       statistic: Callable[..., np.ndarray] = iqm, confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` (called as ``statistic(samples, axis=-1)``)."""
    require(0.0 < confidence < 1.0, f"confidence must be in (0, 1), got {confidence}")
    x = _as_array(values)
    samples = _resample(x, resamples, np.random.default_rng(seed))
    return _percentile_interval(np.asarray(statistic(samples, axis=-1)), confidence)


def probability_of_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 for one episode of each, over all pairs (the Mann-Whitney U statistic / nm)."""
    a, b = _as_array(x, "x"), _as_array(y, "y")
    return float(pairwise_improvement(a[None, :], b[None, :])[0])


def pairwise_improvement(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 for each row pair of (r, n) and (r, m) arrays (row chunks bound the memory)."""
    out = np.empty(a.shape[0])
    for start in range(0, a.shape[0], chunk):
        pa, pb = a[start:start + chunk, :, None], b[start:start + chunk, None, :]
        out[start:start + chunk] = (pa > pb).mean(axis=(1, 2)) + 0.5 * (pa == pb).mean(axis=(1, 2))
    return out


@dataclass(frozen=True)
class Summary:
    """The evaluation table's row for one set of episode returns."""

    episodes: int
    mean: float
    std: float
    median: float
    iqm: float
    iqm_low: float
    iqm_high: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(returns: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE,
              resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Summary:
    """Episodes, mean, std (population, ddof=0), median, IQM and its bootstrap interval, min and max."""
    x = _as_array(returns, "returns")
    low, high = bootstrap_interval(x, iqm, confidence, resamples, seed)
    return Summary(episodes=int(x.size), mean=float(x.mean()), std=float(x.std()), median=float(np.median(x)),
                   iqm=float(iqm(x)), iqm_low=low, iqm_high=high, min=float(x.min()), max=float(x.max()))


@dataclass(frozen=True)
class Comparison:
    """How a candidate's returns compare with a baseline's."""

    probability_of_improvement: float
    poi_low: float
    poi_high: float
    iqm_difference: float
    difference_low: float
    difference_high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare_returns(candidate: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray,
                    confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> Comparison:
    """P(candidate > baseline) and IQM(candidate) - IQM(baseline), each with a bootstrap interval.

    The two sets of episodes are resampled independently (they come from different agents).
    """
    a, b = _as_array(candidate, "candidate"), _as_array(baseline, "baseline")
    rng = np.random.default_rng(seed)
    sa, sb = _resample(a, resamples, rng), _resample(b, resamples, rng)
    diff_low, diff_high = _percentile_interval(iqm(sa, axis=-1) - iqm(sb, axis=-1), confidence)
    poi_low, poi_high = _percentile_interval(pairwise_improvement(sa, sb), confidence)
    return Comparison(probability_of_improvement=probability_of_improvement(a, b), poi_low=poi_low,
                      poi_high=poi_high, iqm_difference=float(iqm(a) - iqm(b)),
                      difference_low=diff_low, difference_high=diff_high)
