"""Learning curves from run folders (``lot-rl plot``) and the picture of a comparison (``lot-rl compare --plot``).

``lot-rl plot RUN_DIR ... --out curves.png`` reads each run's ``metrics.jsonl`` and draws, per game, the
episodic return against environment steps and, for LoT runs, the KL curves: the teacher's teachability
penalty ``lot/teacher_kl`` (solid) and the students' imitation loss ``lot/student_kl`` (dashed). Each curve
is smoothed by a moving average over ``--smooth`` logged points; runs with the same label (by default "PPO"
or "LoT (alpha, N)" from their ``config.yaml``, or their ``--exp-name``) are averaged on a common step grid,
with their spread across runs shaded.

Figures are drawn on Matplotlib's Agg canvas directly (no pyplot, no global backend switch), so plotting
works on headless machines and does not disturb a notebook's backend.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import yaml

from lot_rl import config as cfg_lib
from lot_rl.errors import LoTUserError, require
from lot_rl.runlog import check_writable_file, read_metrics
from lot_rl.stats import summarize

RETURN_TAG = "charts/episodic_return"
KL_TAGS = {"lot/teacher_kl": ("teacher KL (teachability)", "-"), "lot/student_kl": ("student KL (imitation)", "--")}
SPREADS = ("std", "sem", "minmax", "none")
GRID_POINTS = 200
DEFAULT_EXP_NAME = "ppo_lot"


@dataclass
class Run:
    """A run folder's logged scalars and what it was."""

    path: Path
    label: str
    game: str
    rows: list[dict[str, Any]]

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one tag, in step order."""
        pairs = sorted((row["step"], row[tag]) for row in self.rows if tag in row)
        if not pairs:
            return np.empty(0), np.empty(0)
        steps, values = zip(*pairs)
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``config.yaml`` (empty if it has none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def default_label(config: dict[str, Any], fallback: str) -> str:
    """A user-chosen ``exp_name``; else "PPO" (teacher only) or "LoT (alpha a, N n)"; else ``fallback``."""
    if not config:
        return fallback
    if config.get("exp_name") not in (None, DEFAULT_EXP_NAME):
        return str(config["exp_name"])
    if not config.get("alpha") or not config.get("num_students"):
        return "PPO"
    return f"LoT (alpha {config['alpha']:g}, N {config.get('student_steps_ratio')})"


def load_runs(run_dirs: Sequence[str | os.PathLike], labels: Sequence[str] | None = None) -> list[Run]:
    """Read the run folders (each must have a ``metrics.jsonl``)."""
    require(len(run_dirs) >= 1, "give at least one run folder")
    require(labels is None or len(labels) == len(run_dirs),
            f"--labels has {len(labels or [])} names for {len(run_dirs)} runs (give one per run; equal names "
            f"are averaged)")
    runs = []
    for k, run_dir in enumerate(run_dirs):
        path = Path(run_dir)
        require(path.is_dir(), f"run folder {path} does not exist")
        rows = read_metrics(path)
        config = read_config(path)
        game = str(config.get("env_id", "")).replace("ALE/", "").split("NoFrameskip")[0].split("-v")[0] or "?"
        runs.append(Run(path=path, label=labels[k] if labels else default_label(config, path.name), game=game,
                        rows=rows))
    return runs


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` points (fewer at the start); ``window`` 1 returns the input."""
    require(window >= 1, f"--smooth must be >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    if window == 1 or values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def aggregate(curves: Sequence[tuple[np.ndarray, np.ndarray]], spread: str = "std",
              points: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and spread band of several (steps, values) curves on the steps all of them cover.

    Returns (grid, mean, low, high), or None when no curve has two points.
    """
    require(spread in SPREADS, f"unknown --spread {spread!r}; choose one of {', '.join(SPREADS)}")
    curves = [(x, y) for x, y in curves if x.size >= 2]
    if not curves:
        return None
    start, end = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    if end <= start:  # the runs do not overlap: plot the longest alone
        curves = [max(curves, key=lambda c: c[0][-1] - c[0][0])]
        start, end = curves[0][0][0], curves[0][0][-1]
    grid = np.linspace(start, end, points)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    mean = ys.mean(axis=0)
    if spread == "none" or len(curves) == 1:
        return grid, mean, mean, mean
    if spread == "minmax":
        return grid, mean, ys.min(axis=0), ys.max(axis=0)
    width = ys.std(axis=0, ddof=1)
    if spread == "sem":
        width = width / np.sqrt(len(curves))
    return grid, mean, mean - width, mean + width


def _steps_formatter(value: float, _pos=None) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out: str | os.PathLike, option: str) -> Path:
    out = Path(out)
    try:
        figure.savefig(out, dpi=110)
    except OSError as exc:
        raise LoTUserError(f"{option}: cannot write {out}: {exc.strerror}") from exc
    except ValueError as exc:  # unknown extension
        raise LoTUserError(f"{option}: {exc}") from exc
    return out


def plot_learning_curves(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                         labels: Sequence[str] | None = None, smooth: int = 20, spread: str = "std",
                         kl: bool = True, metrics: Sequence[str] = (), title: str | None = None) -> Path:
    """Draw learning curves of run folders into ``out`` (PNG, PDF or SVG by its extension).

    One row per game; columns: episodic return, the LoT KL curves (if ``kl`` and any run logged them),
    then each extra tag in ``metrics``. Runs with the same label are averaged (mean line, spread band).
    """
    figure = learning_curves_figure(run_dirs, labels, smooth, spread, kl, metrics, title)
    return _save(figure, out, "--out")


def learning_curves_figure(run_dirs: Sequence[str | os.PathLike], labels: Sequence[str] | None = None,
                           smooth: int = 20, spread: str = "std", kl: bool = True, metrics: Sequence[str] = (),
                           title: str | None = None):
    """The Matplotlib ``Figure`` that :func:`plot_learning_curves` saves."""
    from matplotlib.ticker import FuncFormatter

    require(spread in SPREADS, f"unknown --spread {spread!r}; choose one of {', '.join(SPREADS)}")
    moving_average(np.zeros(1), smooth)  # validates --smooth
    runs = load_runs(run_dirs, labels)
    require(any(run.series(RETURN_TAG)[0].size for run in runs),
            f"no {RETURN_TAG} in {', '.join(str(r.path) for r in runs)}: no episode has finished yet")
    for tag in metrics:
        require(any(run.series(tag)[0].size for run in runs),
                f"--metric {tag!r} is not logged by any of the runs")
    has_kl = kl and any(run.series(tag)[0].size for run in runs for tag in KL_TAGS)
    panels = [RETURN_TAG] + (["kl"] if has_kl else []) + list(metrics)
    games = list(OrderedDict.fromkeys(run.game for run in runs))
    group_labels = list(OrderedDict.fromkeys(run.label for run in runs))
    colors = {label: f"C{k % 10}" for k, label in enumerate(group_labels)}

    figure = _new_figure(5.0 * len(panels), 3.6 * len(games))
    axes = np.atleast_2d(figure.subplots(len(games), len(panels), squeeze=False))
    for row, game in enumerate(games):
        game_runs = [run for run in runs if run.game == game]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            tags = list(KL_TAGS) if panel == "kl" else [panel]
            for label in group_labels:
                members = [run for run in game_runs if run.label == label]
                if not members:
                    continue
                for tag in tags:
                    curves = [run.series(tag) for run in members]
                    curves = [(x, moving_average(y, smooth)) for x, y in curves]
                    agg = aggregate(curves, spread)
                    if agg is None:
                        continue
                    grid, mean, low, high = agg
                    style = KL_TAGS[tag][1] if panel == "kl" else "-"
                    n = sum(x.size >= 2 for x, _ in curves)
                    name = f"{label} (n={n})" + (f", {KL_TAGS[tag][0].split(' (')[0]}" if panel == "kl" else "")
                    ax.plot(grid, mean, style, color=colors[label], label=name, linewidth=1.6)
                    if n > 1 and spread != "none":
                        ax.fill_between(grid, low, high, color=colors[label], alpha=0.2, linewidth=0)
            ax.set_title(f"{game}: " + ("episodic return" if panel == RETURN_TAG else
                                        "LoT KL" if panel == "kl" else panel))
            ax.set_xlabel("environment steps")
            ax.set_ylabel({RETURN_TAG: "return (full game)", "kl": "KL"}.get(panel, panel))
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    spread_text = {"std": "mean +- std across runs", "sem": "mean +- standard error", "minmax": "mean, min-max",
                   "none": "mean across runs"}[spread]
    figure.suptitle(title or f"smoothed over {smooth} logged points; {spread_text}", fontsize=10)
    return figure


def _horizontal() -> dict[str, Any]:
    """Horizontal boxplots across Matplotlib versions (``vert`` is deprecated from 3.10 on)."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


class ComparedResult(Protocol):
    """The games of one compared run that :func:`plot_comparison` draws (``lot_rl.evaluation.EvalResult``)."""

    @property
    def policy(self) -> str: ...

    @property
    def returns(self) -> Sequence[float]: ...


class ComparedRun(Protocol):
    """One run of a comparison as :func:`plot_comparison` reads it (``lot_rl.evaluation.CompareEntry``)."""

    @property
    def label(self) -> str: ...

    @property
    def game(self) -> str: ...

    @property
    def result(self) -> ComparedResult: ...


def plot_comparison(entries: Sequence[ComparedRun], out: str | os.PathLike) -> Path:
    """The picture of ``lot-rl compare``: IQM with its 95% interval per run, and every game's return."""
    figure = _new_figure(10.0, 1.2 + 0.55 * len(entries))
    left, right = figure.subplots(1, 2, sharey=True)
    labels = [e.label for e in entries]
    positions = np.arange(len(entries))[::-1]
    rng = np.random.default_rng(0)
    for k, (entry, y) in enumerate(zip(entries, positions)):
        s = summarize(entry.result.returns)
        color = f"C{k % 10}"
        left.errorbar([s.iqm], [y], xerr=[[s.iqm - s.iqm_low], [s.iqm_high - s.iqm]], fmt="o", color=color,
                      capsize=4, label="IQM, 95% CI" if k == 0 else None)
        left.plot([s.mean], [y], "x", color="black", label="mean" if k == 0 else None)
        returns = np.asarray(entry.result.returns)
        right.boxplot([returns], positions=[y], widths=0.5, showfliers=False, medianprops={"color": color},
                      **_horizontal())
        right.plot(returns, y + rng.uniform(-0.18, 0.18, returns.size), ".", color=color, alpha=0.6)
    left.set_yticks(positions, labels)
    left.set_xlabel("return")
    left.set_title("IQM with 95% bootstrap interval")
    left.legend(fontsize=8)
    right.set_xlabel("return per game")
    right.set_title("every game")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    first = entries[0].result
    figure.suptitle(f"{entries[0].game}, {first.policy}, {len(first.returns)} games each", fontsize=10)
    return _save(figure, out, "--plot")


# ----------------------------------------------------------------------------------------------------
# Command line: `lot-rl plot`


@dataclass
class PlotArgs:
    """``lot-rl plot``'s options (the run folders are its positional arguments)."""

    out: str = cfg_lib.option("curves.png", "output image: .png, .pdf or .svg")
    labels: list[str] | None = cfg_lib.option(None, "a label per run; equal labels are averaged",
                                              default_text="PPO / LoT (alpha, N) from config.yaml, or the run's "
                                                           "--exp-name")
    smooth: int = cfg_lib.option(20, "moving average over this many logged points (episodes or updates; 1: none)")
    spread: str = cfg_lib.option("std", "band across runs of a label: std, sem, minmax or none", choices=SPREADS)
    kl: bool = cfg_lib.option(True, "draw the LoT KL panel (--no-kl leaves it out)")
    metrics: list[str] = cfg_lib.option([], "also plot this logged tag (e.g. losses/entropy); repeatable",
                                        flags=("--metric",), metavar="TAG", repeat=True, default_text="")
    title: str | None = cfg_lib.option(None, "figure title", default_text="")


def configure_parser(parser: argparse.ArgumentParser, command: str = "plot") -> None:
    parser.description = ("Plot learning curves (episodic return vs environment steps, and LoT's KL curves) from "
                          "run folders; runs with the same label are averaged with their spread shaded.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (with metrics.jsonl)")
    cfg_lib.add_options(parser, PlotArgs)


def run_command(ns: argparse.Namespace, command: str = "plot") -> int:
    args = cfg_lib.from_namespace(PlotArgs, ns)
    check_writable_file(args.out, "--out")
    path = plot_learning_curves(ns.runs, args.out, labels=args.labels, smooth=args.smooth, spread=args.spread,
                                kl=args.kl, metrics=args.metrics, title=args.title)
    print(f"plot: {path}")
    return 0


# ----------------------------------------------------------------------------------------------------
# Figures of `lot-rl report` (drawn from the report's numbers; see lot_rl.report)


def _variant_colors(report: dict[str, Any]) -> dict[str, str]:
    return {variant: f"C{k % 10}" for k, variant in enumerate(report["variants"])}


def _interval_note(report: dict[str, Any]) -> str:
    boot = report["bootstrap"]
    return f"{boot['confidence']:.0%} stratified bootstrap intervals, {boot['resamples']:,} resamples"


def plot_score_intervals(report: dict[str, Any], out: str | os.PathLike) -> Path | None:
    """Normalized IQM and mean per variant, and the probability of improvement over the baseline, with their
    intervals (rliable's interval plots). None when the report has neither (no normalizable game, no baseline)."""
    panels = ([("iqm", "IQM of normalized scores"), ("mean", "mean of normalized scores")]
              if report["aggregate"] else [])
    if report["improvement"]:
        panels.append(("probability", f"P(X > {report['baseline']})"))
    if not panels:
        return None
    colors = _variant_colors(report)
    figure = _new_figure(3.6 * len(panels), 1.0 + 0.45 * len(report["variants"]))
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for ax, (key, title) in zip(axes, panels):
        rows = report["improvement"] if key == "probability" else report["aggregate"]
        labels = [row["variant"] for row in rows]
        positions = np.arange(len(rows))[::-1]
        for row, y in zip(rows, positions):
            low, high = row.get(f"{key}_low", row.get("low")), row.get(f"{key}_high", row.get("high"))
            ax.barh(y, high - low, left=low, height=0.6, color=colors[row["variant"]], alpha=0.75)
            ax.plot([row[key], row[key]], [y - 0.3, y + 0.3], color="black", linewidth=1.5)
        if key == "probability":
            ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
        ax.set_yticks(positions, labels)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle(_interval_note(report), fontsize=9)
    return _save(figure, out, "--out")


def _line_with_band(ax, x: Sequence[float], data: dict[str, Any], key: str, color: str, label: str) -> None:
    ax.plot(x, data[key], color=color, label=label, linewidth=1.6)
    ax.fill_between(x, data["low"], data["high"], color=color, alpha=0.2, linewidth=0)


def _label_axes(ax, xlabel: str, ylabel: str, title: str, title_size: int = 9) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlabel == "environment steps":
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=title_size)
    if ax.lines:
        ax.legend(fontsize=8)


def plot_performance_profile(report: dict[str, Any], out: str | os.PathLike) -> Path:
    """Fraction of runs whose normalized score exceeds tau, per variant, with its interval band."""
    profile = report["performance_profile"]
    colors = _variant_colors(report)
    figure = _new_figure(5.5, 3.8)
    ax = figure.subplots()
    for variant, data in profile["variants"].items():
        _line_with_band(ax, profile["taus"], data, "fraction", colors[variant], variant)
    ax.set_ylim(-0.02, 1.02)
    _label_axes(ax, "normalized score tau", "fraction of runs with score > tau",
                f"performance profiles; {_interval_note(report)}")
    return _save(figure, out, "--out")


def plot_sample_efficiency(report: dict[str, Any], out: str | os.PathLike) -> Path:
    """IQM of normalized scores against env steps, per variant, with its interval band."""
    colors = _variant_colors(report)
    figure = _new_figure(5.5, 3.8)
    ax = figure.subplots()
    for variant, data in report["sample_efficiency"].items():
        _line_with_band(ax, data["steps"], data, "iqm", colors[variant], f"{variant} ({data['games']} games)")
    _label_axes(ax, "environment steps", "IQM of normalized score", f"sample efficiency; {_interval_note(report)}")
    return _save(figure, out, "--out")


def plot_game_curves(report: dict[str, Any], out: str | os.PathLike) -> Path:
    """Per game, each variant's learning curve: mean score over seeds with its bootstrap interval."""
    colors = _variant_colors(report)
    env_ids = report["env_ids"]
    columns = min(len(env_ids), 3)
    rows = -(-len(env_ids) // columns)
    figure = _new_figure(4.6 * columns, 3.3 * rows)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for ax, env_id in zip(axes, env_ids):
        for curve in (c for c in report["curves"] if c["env_id"] == env_id):
            _line_with_band(ax, curve["steps"], curve, "mean", colors[curve["variant"]], curve["variant"])
        _label_axes(ax, "environment steps", "score", env_id, title_size=10)
        if not ax.lines:
            ax.text(0.5, 0.5, "no run finished an episode", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(env_ids):]:
        ax.set_visible(False)
    title = (f"mean over seeds; {report['score']['protocol'].split(' (')[0]}; "
             f"{_interval_note(report).replace('stratified ', '')}")
    figure.suptitle(textwrap.fill(title, width=int(13 * 4.6 * columns)), fontsize=9)  # ~13 characters per inch
    return _save(figure, out, "--out")
