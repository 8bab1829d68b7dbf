"""Seed-level statistics over a suite of games, with the definitions of Agarwal et al. (2021), "Deep RL at the
Edge of the Statistical Precipice" (the ``rliable`` library).

A sweep gives one final score per run (game x variant x seed). Per game, scores are normalized as
``(score - random) / (reference - random)`` (:data:`NORMALIZATION`: the random policy's score and a reference
score per game, each with its source), so that games of different scales can be pooled. Across games:

- the interquartile mean (IQM) of all runs' normalized scores (the mean of the middle 50%, pooled over games and
  seeds) and the mean (over games of the per-game mean over seeds);
- the probability of improvement ``P(X > Y)`` of variant X over variant Y: per game, the chance that a run of X
  scores above a run of Y (ties count 1/2: the Mann-Whitney U statistic over n*m), averaged over games;
- the performance profile: the fraction of runs whose normalized score exceeds tau (per game, then averaged over
  games), for a range of tau;
- all with 95% *stratified* bootstrap intervals: runs are resampled with replacement within each game, each game
  independently (rliable's ``StratifiedBootstrap``), and the interval is the percentile interval.

The resampling is ``scipy.stats.bootstrap`` (its independent resampling of several samples is exactly the
stratified bootstrap, one sample per game), with a fixed seed so that the same results always give the same
intervals. (rliable 1.2.0 itself is not used: its ``library`` module, which holds the bootstrap, fails to import
with pandas 3 and arch 7.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from lot_rl.stats import iqm, pairwise_improvement

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


# ----------------------------------------------------------------------------------------------------
# Normalization scores


@dataclass(frozen=True)
class ScoreAnchors:
    """A game's random-policy score and reference score, and where each comes from."""

    random: float
    reference: float
    random_source: str
    reference_source: str


_MINATAR_RANDOM = ("uniform random policy, mean episode return measured on this project's machine (minatar 1.0.15, "
                   "sticky actions 0.1)")
_MINATAR_REFERENCE = ("AC(lambda) at 5M frames, read from the learning curves of Young & Tian (2019), 'MinAtar: An "
                      "Atari-Inspired Testbed', approximate")
_ATARI_RANDOM = "random policy score of DeepMind's Atari tables (Mnih et al. 2015; Badia et al. 2020, Agent57)"
_ATARI_REFERENCE = ("human score of DeepMind's Atari tables (Badia et al. 2020, Agent57; the scores rliable's Atari "
                    "data use)")

NORMALIZATION: dict[str, ScoreAnchors] = {
    "MinAtar/Asterix": ScoreAnchors(0.49, 19.0, _MINATAR_RANDOM, _MINATAR_REFERENCE),
    "MinAtar/Breakout": ScoreAnchors(0.38, 17.0, _MINATAR_RANDOM, _MINATAR_REFERENCE),
    "MinAtar/Freeway": ScoreAnchors(0.30, 47.0, _MINATAR_RANDOM, _MINATAR_REFERENCE),
    "MinAtar/Seaquest": ScoreAnchors(0.10, 15.0, _MINATAR_RANDOM, _MINATAR_REFERENCE),
    "MinAtar/SpaceInvaders": ScoreAnchors(4.07, 185.0, _MINATAR_RANDOM, _MINATAR_REFERENCE),
    "BeamRider": ScoreAnchors(363.9, 16926.5, _ATARI_RANDOM, _ATARI_REFERENCE),
    "Breakout": ScoreAnchors(1.7, 30.5, _ATARI_RANDOM, _ATARI_REFERENCE),
    "Gravitar": ScoreAnchors(173.0, 3351.4, _ATARI_RANDOM, _ATARI_REFERENCE),
    "Pong": ScoreAnchors(-20.7, 14.6, _ATARI_RANDOM, _ATARI_REFERENCE),
    "UpNDown": ScoreAnchors(533.4, 11693.2, _ATARI_RANDOM, _ATARI_REFERENCE),
}

_ENV_ID = re.compile(r"^(?P<suite>MinAtar/)?(?:ALE/)?(?P<name>[A-Za-z0-9]+?)(?:NoFrameskip)?(?:-v\d+)?$")


def game_key(env_id: str) -> str:
    """The game an env id plays, as :data:`NORMALIZATION` names it: ``MinAtar/Breakout``, ``Breakout``."""
    match = _ENV_ID.match(env_id.strip())
    if match is None:
        return env_id
    return ("MinAtar/" if match.group("suite") else "") + match.group("name")


def normalize(game: str, scores: np.ndarray | Sequence[float]) -> np.ndarray | None:
    """``(score - random) / (reference - random)`` for ``game`` (a :func:`game_key`), or None if it has no anchors."""
    anchors = NORMALIZATION.get(game)
    if anchors is None:
        return None
    return (np.asarray(scores, dtype=np.float64) - anchors.random) / (anchors.reference - anchors.random)


# ----------------------------------------------------------------------------------------------------
# Statistics of several games' runs (each game a "stratum": an array whose last axis is its runs)


def aggregate_iqm(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """IQM of all runs of all games pooled (rliable's ``aggregate_iqm``)."""
    return iqm(np.concatenate(strata, axis=axis), axis=axis)


def aggregate_mean(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over games of each game's mean over runs (rliable's ``aggregate_mean`` with equal runs per game)."""
    return np.mean([np.mean(s, axis=axis) for s in strata], axis=0)


def improvement_statistic(games: int) -> Callable[..., np.ndarray]:
    """``statistic(x_1, ..., x_games, y_1, ..., y_games)``: P(X > Y) averaged over games (ties count 1/2).

    Vectorized over leading (bootstrap) axes: each argument has shape ``(batch, runs)``.
    """
    def statistic(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
        batch = np.shape(strata[0])[:-1]
        per_game = [pairwise_improvement(np.reshape(x, (-1, np.shape(x)[-1])), np.reshape(y, (-1, np.shape(y)[-1])))
                    .reshape(batch) for x, y in zip(strata[:games], strata[games:])]
        return np.mean(per_game, axis=0)
    return statistic


def probability_of_improvement(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    """P(X > Y) of variant X over Y: ``x[k]``, ``y[k]`` are the runs' scores on game k (ties count 1/2)."""
    return float(improvement_statistic(len(x))(*map(np.asarray, x), *map(np.asarray, y)))


def profile_statistic(taus: np.ndarray) -> Callable[..., np.ndarray]:
    """``statistic(*strata)``: for each tau, the fraction of runs scoring above tau, averaged over games
    (rliable's run-score distribution). Returns shape ``(len(taus), *batch)``."""
    taus = np.asarray(taus, dtype=np.float64)

    def statistic(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
        fractions = [(np.asarray(s)[None, ...] > taus.reshape((-1,) + (1,) * np.ndim(s))).mean(axis=-1)
                     for s in strata]
        return np.mean(fractions, axis=0)
    return statistic


def stratified_interval(strata: Sequence[np.ndarray], statistic: Callable[..., np.ndarray],
                        confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``statistic(*strata, axis=-1)`` under the stratified bootstrap.

    Each stratum (a game: an array whose last axis holds its runs; leading axes, e.g. curve points, are kept)
    is resampled with replacement along its runs, independently of the others, ``resamples`` times. A game
    with a single run has nothing to resample and enters every resample as it is.
    """
    from scipy.stats import bootstrap

    samples = [np.asarray(s, dtype=np.float64) for s in strata]
    varying = [k for k, s in enumerate(samples) if s.shape[-1] > 1]
    if not varying:
        point = np.asarray(statistic(*samples, axis=-1), dtype=np.float64)
        return point, point

    def with_fixed(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        first = resampled[0]
        resampling = first.ndim > samples[varying[0]].ndim  # scipy added a bootstrap axis before the runs
        full, given = [], iter(resampled)
        for k, sample in enumerate(samples):
            if k in varying:
                full.append(next(given))
            else:  # the single run, repeated over the bootstrap axis
                fixed = np.expand_dims(sample, -2) if resampling else sample
                full.append(np.broadcast_to(fixed, first.shape[:-1] + (1,)))
        return statistic(*full, axis=-1)

    result = bootstrap([samples[k] for k in varying], with_fixed, n_resamples=resamples, vectorized=True,
                       axis=-1, confidence_level=confidence, method="percentile",
                       rng=np.random.default_rng(seed), batch=max(1, min(resamples, 1000)))
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)
