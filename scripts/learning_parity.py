"""Does our PPO learn as fast as CleanRL's ppo_atari.py? Runs the arms and prints the side-by-side table (issue 18).

Our arms are the variants of a sweep grid (default ``scripts/grids/breakout-parity.yaml``), trained with
``lot-rl sweep`` (resumable: finished runs are skipped). CleanRL's own script runs beside them when you point
``--cleanrl-dir`` at a CleanRL checkout and ``--cleanrl-python`` at an interpreter that has its dependencies
(gymnasium 0.29, ale-py 0.9, tyro; it is never copied into this project, see docs/learning_parity.md). Runs made
elsewhere can be added as text files of ``global_step return`` lines (``--text-run ARM:SEED:PATH``).

The score of a run is the mean true game return (all lives, unclipped) of the games that end inside the window
(default: the last 50k of 300k env steps); the table gives each arm's per-seed scores, mean, sample standard
deviation and range over seeds, the number of games finished in the window, and for each arm the two-sided
exact permutation p-value of its mean against the reference arm's (``--reference``, default ``ppo-gymnasium``,
our default env): the share of all ways to split the two arms' seed scores into groups of their sizes whose means
differ at least as much as the arms' do. With 3 seeds against 5 its smallest value is 2/56 (0.036).

    python scripts/learning_parity.py --out sweeps/breakout-parity \\
        --cleanrl-dir ../cleanrl --cleanrl-python ../venv-cleanrl/bin/python --seeds 1 2 3
    python scripts/learning_parity.py --out sweeps/breakout-parity --no-train      # the table only
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GRID = REPO / "scripts" / "grids" / "breakout-parity.yaml"
CLEANRL_ARM = "cleanrl-script"
# CleanRL's script registers no ALE ids under gymnasium 0.29 + ale-py >= 0.9 unless ale_py is imported first;
# this launcher does that and runs the script unchanged.
_CLEANRL_LAUNCHER = ("import runpy, sys, ale_py; sys.argv = ['ppo_atari.py'] + sys.argv[1:]; "
                     "runpy.run_path('cleanrl/ppo_atari.py', run_name='__main__')")


@dataclass
class Run:
    arm: str
    seed: int
    episodes: list[tuple[int, float]]  # (env step at which the game ended, its return)


@dataclass
class Window:
    start: int
    end: int

    def score(self, run: Run) -> tuple[float | None, int]:
        returns = [r for step, r in run.episodes if self.start < step <= self.end]
        return (statistics.fmean(returns) if returns else None), len(returns)


@dataclass
class ArmRow:
    arm: str
    scores: dict[int, float | None] = field(default_factory=dict)
    games: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        values = [v for v in self.scores.values() if v is not None]
        if not values:
            return {"mean": None, "std": None, "min": None, "max": None, "games": None}
        games = [self.games[seed] for seed, v in self.scores.items() if v is not None]
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "games": statistics.fmean(games)}


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation p-value for the difference of the means of ``a`` and ``b``."""
    pooled, total = a + b, sum(a) + sum(b)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    extreme = splits = 0
    for group in itertools.combinations(range(len(pooled)), len(a)):
        first = sum(pooled[i] for i in group)
        splits += 1
        extreme += abs(first / len(a) - (total - first) / len(b)) >= observed - 1e-9
    return extreme / splits


# --------------------------------------------------------------------------------------------------------
# Reading runs

def read_our_run(run_dir: Path) -> list[tuple[int, float]]:
    """(step, return) of every finished game in a lot_rl run folder's metrics.jsonl."""
    episodes = []
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if "charts/episodic_return" in row:
                episodes.append((int(row["step"]), float(row["charts/episodic_return"])))
    return episodes


def read_tensorboard_run(run_dir: Path) -> list[tuple[int, float]]:
    """(step, return) of every ``charts/episodic_return`` event of a TensorBoard log (CleanRL's runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags().get("scalars", []):
        return []
    return [(int(e.step), float(e.value)) for e in acc.Scalars("charts/episodic_return")]


def read_text_run(path: Path) -> list[tuple[int, float]]:
    """(step, return) pairs from a text file of ``global_step return`` lines."""
    episodes = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            step, ret = line.split()[:2]
            episodes.append((int(step), float(ret)))
    return episodes


def collect_runs(out: Path, text_runs: list[str]) -> list[Run]:
    runs = []
    for run_dir in sorted((out / "runs").glob("*__*__*")):
        if (run_dir / "metrics.jsonl").exists():
            _env, arm, seed = run_dir.name.rsplit("__", 2)
            runs.append(Run(arm, int(seed), read_our_run(run_dir)))
    for seed_dir in sorted((out / CLEANRL_ARM).glob("seed*")):
        if (seed_dir / "finished").exists():
            runs.append(Run(CLEANRL_ARM, int(seed_dir.name[4:]), read_tensorboard_run(seed_dir)))
    for spec in text_runs:
        arm, seed, path = spec.split(":", 2)
        runs.append(Run(arm, int(seed), read_text_run(Path(path))))
    return runs


# --------------------------------------------------------------------------------------------------------
# Running the arms

def run_ours(grid: Path, out: Path, workers: int, seeds: list[int] | None) -> None:
    cmd = [sys.executable, "-m", "lot_rl", "sweep", str(grid), "--out", str(out), "--workers", str(workers)]
    if seeds:
        cmd += ["--seeds", *map(str, seeds)]
    subprocess.run(cmd, check=True)


def run_cleanrl(cleanrl_dir: Path, python: str, out: Path, seed: int, total_timesteps: int,
                env_id: str) -> None:
    """CleanRL's ppo_atari.py, unchanged, for one seed; skipped when finished, restarted when interrupted
    (the script has no resume)."""
    seed_dir = out / CLEANRL_ARM / f"seed{seed}"
    if (seed_dir / "finished").exists():
        return
    seed_dir.mkdir(parents=True, exist_ok=True)
    for old in seed_dir.glob("events.out.tfevents.*"):
        old.unlink()
    work = seed_dir / "work"
    work.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(cleanrl_dir.resolve()), OMP_NUM_THREADS="1")
    cmd = [python, "-c", _CLEANRL_LAUNCHER, "--seed", str(seed), "--total-timesteps", str(total_timesteps),
           "--env-id", env_id]
    with open(seed_dir / "train.log", "w") as log:
        subprocess.run(cmd, cwd=cleanrl_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    # CleanRL writes runs/<run_name>/ under its working directory: move the newest event file here.
    events = sorted((cleanrl_dir / "runs").glob(f"{env_id}__ppo_atari__{seed}__*/events.out.tfevents.*"),
                    key=lambda p: p.stat().st_mtime)
    events[-1].rename(seed_dir / events[-1].name)
    (seed_dir / "finished").write_text("done\n")


# --------------------------------------------------------------------------------------------------------
# The table

def parity_table(runs: list[Run], window: Window, baseline: str = CLEANRL_ARM,
                 reference: str = "ppo-gymnasium") -> tuple[str, list[ArmRow]]:
    rows: dict[str, ArmRow] = {}
    for run in sorted(runs, key=lambda r: (r.arm != baseline, r.arm, r.seed)):
        row = rows.setdefault(run.arm, ArmRow(run.arm))
        row.scores[run.seed], row.games[run.seed] = window.score(run)
    seeds = sorted({s for row in rows.values() for s in row.scores})
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    head = (f"| arm | {' | '.join(f'seed {s}' for s in seeds)} | mean | std | range | games in window | "
            f"p vs {reference} |\n| --- |{' --- |' * len(seeds)} --- | --- | --- | --- | --- |")
    lines = [head]
    ref = rows.get(reference)
    ref_scores = [v for v in ref.scores.values() if v is not None] if ref else []
    for row in rows.values():
        s = row.summary()
        cells = [fmt(row.scores.get(seed)) for seed in seeds]
        spread = "-" if s["min"] is None else f"{s['min']:.2f}-{s['max']:.2f}"
        games = "-" if s["games"] is None else f"{s['games']:.0f}"
        scores = [v for v in row.scores.values() if v is not None]
        p = "-" if row.arm == reference or not scores or not ref_scores else f"{permutation_p(scores, ref_scores):.3f}"
        lines.append(f"| {row.arm} | {' | '.join(cells)} | {fmt(s['mean'])} | {fmt(s['std'])} | {spread} | {games} "
                     f"| {p} |")
    title = (f"Mean return of the games ending in env steps ({window.start:,}, {window.end:,}], per seed; "
             f"mean, sample std and range over seeds")
    return title + "\n\n" + "\n".join(lines), list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweeps/breakout-parity"), help="the sweep folder")
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="our arms (a lot-rl sweep grid)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to run (default: the grid's)")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs of ours")
    parser.add_argument("--cleanrl-dir", type=Path, default=None,
                        help="a CleanRL checkout (cleanrl/ppo_atari.py, cleanrl_utils/); omit to skip its arm")
    parser.add_argument("--cleanrl-python", default=sys.executable,
                        help="an interpreter with CleanRL's dependencies (gymnasium 0.29, ale-py >= 0.9, tyro)")
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--total-timesteps", type=int, default=300_000)
    parser.add_argument("--window", type=int, default=50_000, help="score the games of the last N env steps")
    parser.add_argument("--text-run", action="append", default=[], metavar="ARM:SEED:PATH",
                        help="add a run from a file of 'global_step return' lines (repeatable)")
    parser.add_argument("--no-train", action="store_true", help="only print the table of what has finished")
    parser.add_argument("--json", type=Path, default=None, help="also write the table's numbers here")
    parser.add_argument("--reference", default="ppo-gymnasium",
                        help="the arm each arm's mean is tested against (exact permutation test over seeds)")
    args = parser.parse_args(argv)
    for spec in args.text_run:
        if spec.count(":") < 2 or not spec.split(":", 2)[1].isdigit():
            parser.error(f"--text-run must be ARM:SEED:PATH with an integer seed, got {spec!r}")
    if args.window <= 0 or args.window > args.total_timesteps:
        parser.error(f"--window must be in [1, --total-timesteps], got {args.window}")

    if not args.no_train:
        if args.cleanrl_dir is not None:
            if not (args.cleanrl_dir / "cleanrl" / "ppo_atari.py").exists():
                parser.error(f"--cleanrl-dir {args.cleanrl_dir} has no cleanrl/ppo_atari.py")
            for seed in args.seeds or [1, 2, 3]:
                run_cleanrl(args.cleanrl_dir, args.cleanrl_python, args.out, seed, args.total_timesteps,
                            args.env_id)
        run_ours(args.grid, args.out, args.workers, args.seeds)

    window = Window(args.total_timesteps - args.window, args.total_timesteps)
    table, rows = parity_table(collect_runs(args.out, args.text_run), window, reference=args.reference)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"window": [window.start, window.end], "arms": {
            r.arm: {"scores": r.scores, "games": r.games, **r.summary()} for r in rows}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
