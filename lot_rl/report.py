"""``lot-rl report DIR``: seed-level statistics and figures of a sweep's results (rliable's definitions).

Reads the compact result files of ``lot-rl sweep`` (``DIR/results/*.json`` of a sweep folder, or ``DIR/*.json``
where they were copied, e.g. to commit them) and nothing else, so every number and figure can be rebuilt without
checkpoints. The statistics are those of :mod:`lot_rl.suite_stats`:

- per game and variant: the mean final score over seeds with a 95% bootstrap interval;
- across games, on normalized scores: IQM and mean with stratified bootstrap intervals, the probability of
  improvement of each variant over ``--baseline``, performance profiles, and sample-efficiency curves
  (normalized IQM against env steps);
- throughput: env steps/s and wall time per variant.

It writes into ``DIR/report/`` (or ``--out``): ``report.json`` (every number), one CSV per table, ``report.txt``
(the printed tables) and the PNG figures. The same results always give the same files (fixed bootstrap seed,
no dates, numbers rounded to 6 significant digits).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lot_rl import suite_stats
from lot_rl.errors import require
from lot_rl.results import FINAL_PROTOCOL, load_results
from lot_rl.sweep import EXECUTION_KEYS, RUN_KEYS

REPORT_FORMAT = "lot_rl-report"
REPORT_VERSION = 1
REPORT_DIR = "report"
SCORES = {"train": FINAL_PROTOCOL,
          "eval": "mean return of the evaluation games of the final checkpoint (lot-rl sweep --eval-episodes)"}
PROFILE_POINTS = 101
SIGNIFICANT_DIGITS = 6


def run_score(result: dict[str, Any], score: str) -> float | None:
    """A run's final score by the chosen protocol (``train`` or ``eval``); None if no episode finished."""
    if score == "train":
        return result["final"]["score"]
    evaluation = result.get("evaluation")
    require(bool(evaluation), f"--score eval: run {result['run']} has no evaluation; rerun the sweep with "
                              f"--eval-episodes N (it only evaluates the finished runs)")
    return evaluation["mean"]


def _interval(strata: Sequence[np.ndarray], statistic, settings: dict[str, Any]) -> tuple[Any, Any]:
    low, high = suite_stats.stratified_interval(strata, statistic, settings["confidence"], settings["resamples"],
                                                settings["seed"])
    return low.tolist(), high.tolist()


def _curve_matrix(runs: list[dict[str, Any]], steps: np.ndarray) -> np.ndarray:
    """The runs' learning curves on ``steps`` (rows: points, columns: runs); NaN where a run has no value."""
    columns = []
    for result in runs:
        x = np.asarray(result["curve"]["steps"], dtype=np.float64)
        y = np.asarray([np.nan if v is None else v for v in result["curve"]["scores"]], dtype=np.float64)
        same = x.shape == steps.shape and bool(np.all(x == steps))
        # np.interp gives NaN next to a missing (NaN) point, and outside the run's steps.
        columns.append(y if same else np.interp(steps, x, y, left=np.nan, right=np.nan))
    return np.stack(columns, axis=-1)


def _common_steps(runs: list[dict[str, Any]]) -> np.ndarray:
    """The runs' curve steps if they all share them, else evenly spaced points over the steps all cover."""
    first = runs[0]["curve"]["steps"]
    if all(r["curve"]["steps"] == first for r in runs):
        return np.asarray(first, dtype=np.float64)
    start = max(r["curve"]["steps"][0] for r in runs)
    end = min(r["curve"]["steps"][-1] for r in runs)
    return np.linspace(start, end, len(first)) if end > start else np.asarray([end], dtype=np.float64)


def _option_differences(results: list[dict[str, Any]]) -> list[str]:
    """A note per variant whose runs were trained with different options (other than game, seed, execution)."""
    ignored = {*RUN_KEYS, *EXECUTION_KEYS}
    notes = []
    for variant in sorted({r["variant"] for r in results}):
        configs = [r["config"] for r in results if r["variant"] == variant]
        keys = sorted({k for c in configs for k in c if k not in ignored
                       and len({json.dumps(c.get(k)) for c in configs}) > 1})
        if keys:
            notes.append(f"variant {variant}: its runs differ in {', '.join(keys)} (results of different grids?)")
    return notes


@dataclass
class _Scores:
    """The runs' scores by game and variant (runs without a score left out), in seed order."""

    env_ids: list[str]
    variants: list[str]
    runs: dict[tuple[str, str], list[dict[str, Any]]]  # (env_id, variant) -> results, each with its "score"

    def games(self, variant: str, normalized: bool) -> dict[str, np.ndarray]:
        """env_id -> the variant's scores on it (normalized: only the games with anchors)."""
        out = {}
        for env_id in self.env_ids:
            runs = self.runs.get((env_id, variant))
            if runs:
                values = np.asarray([r["score"] for r in runs], dtype=np.float64)
                values = suite_stats.normalize(suite_stats.game_key(env_id), values) if normalized else values
                if values is not None:
                    out[env_id] = values
        return out


def _per_game(scores: _Scores, settings: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for env_id in scores.env_ids:
        for variant in scores.variants:
            values = scores.games(variant, normalized=False).get(env_id)
            if values is None:
                continue
            low, high = _interval([values], suite_stats.aggregate_mean, settings) if values.size > 1 else (None, None)
            normalized = suite_stats.normalize(suite_stats.game_key(env_id), values)
            rows.append({"env_id": env_id, "game": suite_stats.game_key(env_id), "variant": variant,
                         "seeds": [r["seed"] for r in scores.runs[(env_id, variant)]], "scores": values.tolist(),
                         "runs": int(values.size), "mean": float(values.mean()), "low": low, "high": high,
                         "normalized_mean": None if normalized is None else float(normalized.mean())})
    return rows


def _aggregate(scores: _Scores, settings: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant in scores.variants:
        values = list(scores.games(variant, normalized=True).values())
        if not values:
            continue
        iqm_low, iqm_high = _interval(values, suite_stats.aggregate_iqm, settings)
        mean_low, mean_high = _interval(values, suite_stats.aggregate_mean, settings)
        rows.append({"variant": variant, "games": len(values), "runs": int(sum(v.size for v in values)),
                     "iqm": float(suite_stats.aggregate_iqm(*values)), "iqm_low": iqm_low, "iqm_high": iqm_high,
                     "mean": float(suite_stats.aggregate_mean(*values)), "mean_low": mean_low, "mean_high": mean_high})
    return rows


def _improvement(scores: _Scores, baseline: str, settings: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """P(X > baseline) on raw scores (normalization keeps each game's order), over the games both have."""
    rows = []
    base = scores.games(baseline, normalized=False)
    for variant in scores.variants:
        if variant == baseline:
            continue
        other = scores.games(variant, normalized=False)
        common = [e for e in scores.env_ids if e in base and e in other]
        if not common:
            notes.append(f"{variant} and {baseline} share no game: no probability of improvement")
            continue
        samples = [other[e] for e in common] + [base[e] for e in common]
        statistic = suite_stats.improvement_statistic(len(common))
        low, high = _interval(samples, statistic, settings)
        rows.append({"variant": variant, "baseline": baseline, "games": len(common),
                     "probability": float(statistic(*samples)), "low": low, "high": high})
    return rows


def _performance_profile(scores: _Scores, settings: dict[str, Any]) -> dict[str, Any]:
    games = {v: scores.games(v, normalized=True) for v in scores.variants}
    pooled = [x for by_game in games.values() for x in by_game.values()]
    if not pooled:
        return {}
    everything = np.concatenate(pooled)
    taus = np.linspace(min(0.0, float(everything.min())), max(1.0, float(everything.max())), PROFILE_POINTS)
    statistic = suite_stats.profile_statistic(taus)
    profile: dict[str, Any] = {"taus": taus.tolist(), "variants": {}}
    for variant, by_game in games.items():
        if by_game:
            low, high = _interval(list(by_game.values()), statistic, settings)
            profile["variants"][variant] = {"fraction": statistic(*by_game.values()).tolist(), "low": low,
                                            "high": high}
    return profile


def _curves(scores: _Scores, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per game and variant the mean learning curve over seeds; per variant the normalized IQM curve."""
    curves, efficiency = [], {}
    for variant in scores.variants:
        runs_by_game = {e: scores.runs[(e, variant)] for e in scores.env_ids if (e, variant) in scores.runs}
        if not runs_by_game:
            continue
        steps = _common_steps([r for runs in runs_by_game.values() for r in runs])
        matrices = {e: _curve_matrix(runs, steps) for e, runs in runs_by_game.items()}
        for env_id, matrix in matrices.items():
            ok = ~np.isnan(matrix).any(axis=1)  # the points where every seed has a value
            if ok.any():
                mean = matrix[ok].mean(axis=1)
                low, high = (_interval([matrix[ok]], suite_stats.aggregate_mean, settings) if matrix.shape[1] > 1
                             else (mean.tolist(), mean.tolist()))
                curves.append({"env_id": env_id, "variant": variant, "steps": steps[ok].tolist(),
                               "mean": mean.tolist(), "low": low, "high": high})
        normalized = {e: suite_stats.normalize(suite_stats.game_key(e), m) for e, m in matrices.items()}
        normalized = {e: m for e, m in normalized.items() if m is not None}
        if normalized:
            ok = ~np.any([np.isnan(m).any(axis=1) for m in normalized.values()], axis=0)
            if ok.any():
                values = [m[ok] for m in normalized.values()]
                low, high = _interval(values, suite_stats.aggregate_iqm, settings)
                efficiency[variant] = {"steps": steps[ok].tolist(), "iqm": suite_stats.aggregate_iqm(*values).tolist(),
                                       "low": low, "high": high, "games": len(values)}
    return curves, efficiency


def _throughput(results: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        speeds = [r["env_steps_per_s"] for r in runs if r.get("env_steps_per_s")]
        rows.append({"variant": variant, "runs": len(runs),
                     "env_steps_per_s": float(np.mean(speeds)) if speeds else None,
                     "wall_hours": sum(r["wall_time_s"] or 0.0 for r in runs) / 3600.0,
                     "total_steps": int(sum(r["total_steps"] for r in runs)),
                     "machines": sorted({r.get("machine", {}).get("cpu", "?") for r in runs})})
    return rows


def build_report(results: list[dict[str, Any]], baseline: str | None = None, score: str = "train",
                 confidence: float = suite_stats.CONFIDENCE, resamples: int = suite_stats.RESAMPLES,
                 seed: int = suite_stats.BOOTSTRAP_SEED) -> dict[str, Any]:
    """Every number of the report, as plain JSON-ready data (see the module docstring)."""
    require(score in SCORES, f"unknown --score {score!r}; choose one of {', '.join(SCORES)}")
    require(0.0 < confidence < 1.0, f"--confidence must be in (0, 1), got {confidence}")
    require(resamples >= 100, f"--resamples must be >= 100, got {resamples}")
    settings = {"confidence": confidence, "resamples": resamples, "seed": seed}
    names = sorted({r["variant"] for r in results})
    require(baseline is None or baseline in names,
            f"--baseline {baseline!r} is not in the results; their variants are {', '.join(names)}")
    scores = _Scores(env_ids=sorted({r["env_id"] for r in results}),
                     variants=([baseline] if baseline else []) + [v for v in names if v != baseline], runs={})
    notes: list[str] = []
    for result in sorted(results, key=lambda r: (r["env_id"], r["variant"], r["seed"])):
        value = run_score(result, score)
        if value is None:
            notes.append(f"run {result['run']}: no episode finished, left out")
        else:
            scores.runs.setdefault((result["env_id"], result["variant"]), []).append({**result, "score": value})
    notes += _option_differences(results)
    for env_id in scores.env_ids:
        if suite_stats.game_key(env_id) not in suite_stats.NORMALIZATION:
            notes.append(f"{env_id}: no random/reference scores in lot_rl.suite_stats.NORMALIZATION, so it has "
                         f"per-game numbers only and the aggregates leave it out")
    games = sorted({suite_stats.game_key(e) for e in scores.env_ids} & set(suite_stats.NORMALIZATION))
    curves, efficiency = _curves(scores, settings)
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "score": {"name": score, "protocol": SCORES[score]},
        "bootstrap": {**settings, "method": "stratified bootstrap over runs within each game, percentile interval"},
        "baseline": baseline, "variants": scores.variants, "env_ids": scores.env_ids, "runs": len(results),
        "normalization": {g: dataclasses.asdict(suite_stats.NORMALIZATION[g]) for g in games},
        "per_game": _per_game(scores, settings), "aggregate": _aggregate(scores, settings),
        "improvement": _improvement(scores, baseline, settings, notes) if baseline else [],
        "performance_profile": _performance_profile(scores, settings), "sample_efficiency": efficiency,
        "curves": curves, "throughput": _throughput(results, scores.variants), "notes": notes,
    }
    return _rounded(report)


def _rounded(value: Any) -> Any:
    """Floats to :data:`SIGNIFICANT_DIGITS` significant digits, so that reports compare equal across machines."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------
# Text and files


def _ci(mean: float, low: float | None, high: float | None, digits: int) -> str:
    if low is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_report(report: dict[str, Any]) -> str:
    """The printed tables: per game, across games, probability of improvement, throughput, notes."""
    from lot_rl.evaluation import format_table

    boot = report["bootstrap"]
    lines = [f"{report['runs']} runs, {len(report['env_ids'])} game(s), variants {', '.join(report['variants'])}",
             f"score: {report['score']['protocol']}",
             f"intervals: {boot['confidence']:.0%}, {boot['method']} ({boot['resamples']:,} resamples, seed "
             f"{boot['seed']})", "", "Per game: mean score over seeds [CI]"]
    rows = []
    for env_id in report["env_ids"]:
        cells = {g["variant"]: g for g in report["per_game"] if g["env_id"] == env_id}
        rows.append([env_id] + [_ci(cells[v]["mean"], cells[v]["low"], cells[v]["high"], 2) + f" (n={cells[v]['runs']})"
                                if v in cells else "-" for v in report["variants"]])
    lines.append(format_table(["game"] + report["variants"], rows))
    if report["aggregate"]:
        lines += ["", "Across games, normalized score (score - random) / (reference - random) [CI]"]
        lines.append(format_table(["variant", "games", "runs", "IQM", "mean"], [
            [a["variant"], str(a["games"]), str(a["runs"]), _ci(a["iqm"], a["iqm_low"], a["iqm_high"], 3),
             _ci(a["mean"], a["mean_low"], a["mean_high"], 3)] for a in report["aggregate"]]))
    if report["improvement"]:
        base = report["baseline"]
        lines += ["", f"Probability of improvement over {base}: P(run of X beats run of {base}), ties 1/2, "
                      f"averaged over games [CI]"]
        lines.append(format_table(["variant", "games", f"P(X > {base})"], [
            [p["variant"], str(p["games"]), _ci(p["probability"], p["low"], p["high"], 3)]
            for p in report["improvement"]]))
    lines += ["", "Throughput"]
    lines.append(format_table(["variant", "runs", "env steps/s", "wall hours", "env steps"], [
        [t["variant"], str(t["runs"]), "-" if t["env_steps_per_s"] is None else f"{t['env_steps_per_s']:,.0f}",
         f"{t['wall_hours']:.2f}", f"{t['total_steps']:,}"] for t in report["throughput"]]))
    if report["normalization"]:
        lines += ["", "Normalization (random; reference):"]
        lines += [f"  {g}: {a['random']:g}; {a['reference']:g}" for g, a in report["normalization"].items()]
        sources = sorted({(a["random_source"], a["reference_source"]) for a in report["normalization"].values()})
        lines += [f"  random: {r}; reference: {ref}" for r, ref in sources]
    if report["notes"]:
        lines += ["", "Notes:"] + [f"  {n}" for n in report["notes"]]
    return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_report(report: dict[str, Any], out: str | os.PathLike, plots: bool = True) -> list[Path]:
    """Write ``report.json``, the CSVs, ``report.txt`` and (with ``plots``) the PNGs into ``out``; return them."""
    from lot_rl.runlog import ensure_writable_dir

    out = ensure_writable_dir(out, "--out")
    written = [out / "report.json"]
    written[0].write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.txt").write_text(format_report(report) + "\n")
    written.append(out / "report.txt")
    written.append(_write_csv(out / "per_game.csv", ["env_id", "game", "variant", "runs", "mean", "low", "high",
                                                     "normalized_mean", "seeds", "scores"],
                              [[g["env_id"], g["game"], g["variant"], g["runs"], g["mean"], g["low"], g["high"],
                                g["normalized_mean"], " ".join(map(str, g["seeds"])), " ".join(map(str, g["scores"]))]
                               for g in report["per_game"]]))
    written.append(_write_csv(out / "aggregate.csv", ["variant", "games", "runs", "iqm", "iqm_low", "iqm_high",
                                                      "mean", "mean_low", "mean_high"],
                              [[a[k] for k in ("variant", "games", "runs", "iqm", "iqm_low", "iqm_high", "mean",
                                               "mean_low", "mean_high")] for a in report["aggregate"]]))
    written.append(_write_csv(out / "improvement.csv", ["variant", "baseline", "games", "probability", "low", "high"],
                              [[p[k] for k in ("variant", "baseline", "games", "probability", "low", "high")]
                               for p in report["improvement"]]))
    profile = report["performance_profile"]
    written.append(_write_csv(out / "performance_profile.csv", ["variant", "tau", "fraction", "low", "high"],
                              [[v, tau, d["fraction"][k], d["low"][k], d["high"][k]]
                               for v, d in profile.get("variants", {}).items()
                               for k, tau in enumerate(profile["taus"])]))
    written.append(_write_csv(out / "sample_efficiency.csv", ["variant", "step", "iqm", "low", "high"],
                              [[v, step, d["iqm"][k], d["low"][k], d["high"][k]]
                               for v, d in report["sample_efficiency"].items() for k, step in enumerate(d["steps"])]))
    written.append(_write_csv(out / "curves.csv", ["env_id", "variant", "step", "mean", "low", "high"],
                              [[c["env_id"], c["variant"], step, c["mean"][k], c["low"][k], c["high"][k]]
                               for c in report["curves"] for k, step in enumerate(c["steps"])]))
    written.append(_write_csv(out / "throughput.csv", ["variant", "runs", "env_steps_per_s", "wall_hours",
                                                       "total_steps"],
                              [[t[k] for k in ("variant", "runs", "env_steps_per_s", "wall_hours", "total_steps")]
                               for t in report["throughput"]]))
    if plots:
        from lot_rl import plotting

        intervals = plotting.plot_score_intervals(report, out / "aggregates.png")
        written += [intervals] if intervals is not None else []
        written.append(plotting.plot_game_curves(report, out / "game_curves.png"))
        if profile:
            written.append(plotting.plot_performance_profile(report, out / "performance_profile.png"))
        if report["sample_efficiency"]:
            written.append(plotting.plot_sample_efficiency(report, out / "sample_efficiency.png"))
    return written


def report(folder: str | os.PathLike, baseline: str | None = None, score: str = "train",
           out: str | os.PathLike | None = None, confidence: float = suite_stats.CONFIDENCE,
           resamples: int = suite_stats.RESAMPLES, seed: int = suite_stats.BOOTSTRAP_SEED,
           plots: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """Build the report of a sweep folder (or a folder of result files) and write its files into ``out``
    (default: ``folder/report``). Returns the report and the files written."""
    results = load_results(folder)
    built = build_report(results, baseline, score, confidence, resamples, seed)
    return built, write_report(built, Path(out) if out is not None else Path(folder) / REPORT_DIR, plots)


# ----------------------------------------------------------------------------------------------------
# Command line: `lot-rl report`


def configure_parser(parser: argparse.ArgumentParser, command: str = "report") -> None:
    parser.description = ("Seed-level statistics of a sweep (rliable's definitions): per-game means with bootstrap "
                          "intervals, normalized IQM and mean with stratified bootstrap intervals, probability of "
                          "improvement over a baseline, performance profiles and sample-efficiency curves.")
    parser.add_argument("folder", metavar="DIR", help="a sweep folder, or a folder holding its result files")
    parser.add_argument("--baseline", default=None, metavar="VARIANT",
                        help="variant the others are compared with (probability of improvement)")
    parser.add_argument("--score", choices=list(SCORES), default="train",
                        help="train: mean return of the last 100 training episodes (default); eval: mean of the "
                             "evaluation games (sweep --eval-episodes)")
    parser.add_argument("--out", default=None, metavar="DIR", help="where to write the files (default: DIR/report)")
    parser.add_argument("--resamples", type=int, default=suite_stats.RESAMPLES,
                        help=f"bootstrap resamples (default: {suite_stats.RESAMPLES:,})")
    parser.add_argument("--confidence", type=float, default=suite_stats.CONFIDENCE,
                        help=f"interval level (default: {suite_stats.CONFIDENCE})")
    parser.add_argument("--seed", type=int, default=suite_stats.BOOTSTRAP_SEED, help="bootstrap seed (default: 0)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="numbers only, no PNG")


def run_command(ns: argparse.Namespace, command: str = "report") -> int:
    built, written = report(ns.folder, ns.baseline, ns.score, ns.out, ns.confidence, ns.resamples, ns.seed, ns.plots)
    print(format_report(built))
    print(f"\nfiles: {', '.join(str(p) for p in written)}")
    return 0
