"""``lot-rl sweep GRID --out DIR``: games x seeds x variants, each an ordinary run folder, resumable.

A grid file (YAML or TOML) names the games, the seeds and the variants; a variant is a set of ``lot-rl train``
options, resolved exactly as ``lot-rl train`` resolves them (defaults < ``preset`` < ``common`` < the variant's
options < ``--set KEY=VALUE``)::

    env_ids: [MinAtar/Breakout-v1, MinAtar/Asterix-v1]
    seeds: [1, 2, 3, 4, 5]
    common: {total_timesteps: 1000000}
    variants:
      ppo: {preset: minatar-ppo}
      lot: {preset: minatar}

Every option of every variant is checked before the first run starts. The sweep folder holds:

- ``grid.yaml``: the resolved grid (every option of every variant). Rerunning with a grid that gives a variant of
  the folder other options is refused; one that adds games, seeds or variants extends it (their runs join the
  folder's), and narrowing with ``--env-ids/--seeds/--variants`` selects runs;
- ``runs/<env>__<variant>__<seed>/``: ordinary run folders (``checkpoint.pt``, ``metrics.jsonl``, TensorBoard,
  ``config.yaml``) plus ``train.log`` (the run's output) and ``sweep_attempts.jsonl`` (when each attempt began);
- ``results/<env>__<variant>__<seed>.json``: a run's compact result, written when it finishes
  (:mod:`lot_rl.results`); these files are all ``lot-rl report`` needs, so they can be copied and committed.

Finished runs (those with a result file) are skipped; interrupted ones resume from their checkpoint. Runs go to a
local pool of processes (one process per run, torch threads split so that the pool does not oversubscribe the
cores) or, through ``submitit``, to Slurm. Ctrl-C (or SIGTERM) asks every running run to finish its update and
save a checkpoint, as ``lot-rl train`` does on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from lot_rl import config as cfg_lib
from lot_rl.checkpoint import CHECKPOINT_NAME
from lot_rl.envs import parse_env_id
from lot_rl.errors import LoTUserError, require
from lot_rl.results import ATTEMPTS_NAME, RESULTS_DIR, build_result, evaluate_run, read_result, write_result
from lot_rl.runlog import METRICS_NAME, ensure_writable_dir, write_atomically
from lot_rl.tracking import TRACKING_FIELDS, TrackingOptions, add_to_summary, validate_tracking

GRID_NAME = "grid.yaml"
RUNS_DIR = "runs"
LOG_NAME = "train.log"
ERROR_NAME = "sweep_error.txt"
LOCK_NAME = ".sweep.lock"
GRID_KEYS = ("env_ids", "seeds", "common", "variants")
# Options the sweep sets for each run (from the grid's env_ids and seeds, the variant's name, the folder).
RUN_KEYS = ("env_id", "seed", "exp_name", "run_dir", "run_name")
# Options that say how a run is executed, not what it computes: they may change between invocations.
EXECUTION_KEYS = ("device", "env_threads", "save_every", "capture_video", "video_every", *TRACKING_FIELDS)

EXECUTORS = ("pool", "slurm", "submitit-local")
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------------------------------
# The grid


@dataclass
class RunSpec:
    """One run of a sweep: a game, a variant and a seed, with the variant's resolved train options."""

    env_id: str
    variant: str
    seed: int
    options: dict[str, Any]  # every train option except RUN_KEYS

    @property
    def name(self) -> str:
        return run_name(self.env_id, self.variant, self.seed)

    def train_options(self, out: str | Path, threads: int) -> dict[str, Any]:
        """The options ``train`` gets: the variant's, plus where the run lives and its game and seed."""
        options = {**self.options, "env_id": self.env_id, "seed": self.seed, "exp_name": self.variant,
                   "run_dir": str(Path(out) / RUNS_DIR), "run_name": self.name}
        if not options.get("env_threads") and parse_env_id(self.env_id).family == "atari":
            options["env_threads"] = threads  # the native Atari env's threads share the run's cores too
        return options


def tracked(spec: RunSpec, tracking: TrackingOptions, sweep_name: str) -> RunSpec:
    """The run with the sweep's ``--track`` options: W&B group ``--wandb-group`` or the sweep's name, and the variant
    and ``seed<N>`` added to the tags."""
    options = {**spec.options, **cfg_lib.to_dict(tracking), "wandb_group": tracking.wandb_group or sweep_name,
               "wandb_tags": [*tracking.wandb_tags, spec.variant, f"seed{spec.seed}"]}
    return replace(spec, options=options)


def run_name(env_id: str, variant: str, seed: int) -> str:
    """The run folder's name: ``MinAtar-Breakout-v1__lot__3``."""
    return f"{env_id.replace('/', '-')}__{variant}__{seed}"


@dataclass
class Grid:
    """Games x seeds x variants, each variant's train options resolved and checked."""

    env_ids: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    source: str = ""

    def runs(self, env_ids: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
             variants: Sequence[str] | None = None) -> list[RunSpec]:
        """The runs, seed-major (all games and variants of a seed before the next seed, so that a sweep stopped
        early leaves balanced results), narrowed to the given subsets of the grid."""
        env_ids = _subset(env_ids, self.env_ids, "--env-ids", "env id")
        seeds = _subset(seeds, self.seeds, "--seeds", "seed")
        variants = _subset(variants, list(self.variants), "--variants", "variant")
        return [RunSpec(env_id, variant, seed, self.variants[variant])
                for seed in seeds for env_id in env_ids for variant in variants]

    def to_dict(self) -> dict[str, Any]:
        return {"env_ids": list(self.env_ids), "seeds": list(self.seeds), "variants": self.variants}


def _subset(chosen: Sequence[Any] | None, available: list[Any], option: str, what: str) -> list[Any]:
    if chosen is None:
        return list(available)
    for item in chosen:
        require(item in available, f"{option}: {what} {item!r} is not in the grid; it has "
                                   f"{', '.join(map(str, available))}")
    return [item for item in available if item in chosen]


def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """``["total_timesteps=200000", "precision=bf16"]`` -> ``{"total_timesteps": 200000, "precision": "bf16"}``.

    Values are read as YAML scalars (``true``, ``null``, ``[0.5, 0.5]``); the train options' types check them.
    """
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        require(bool(sep) and bool(key.strip()), f"--set {item!r}: give KEY=VALUE, e.g. --set total_timesteps=200000")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        values[key.strip().replace("-", "_")] = value
    return values


def resolve_variant(name: str, common: dict[str, Any], options: dict[str, Any], set_values: dict[str, Any],
                    source: str) -> dict[str, Any]:
    """A variant's train options, resolved as ``lot-rl train`` resolves them, checked; ``RUN_KEYS`` left out.

    Order, later wins: defaults < ``preset`` (the last layer naming one) < ``common`` < the variant's options <
    ``set_values``. A bad name or value raises one line naming the variant and the option.
    """
    from lot_rl.agents.ppo_lot_atari import PRESETS, Args, validate_args

    where = f"{source}, variant {name!r}"
    require(isinstance(options, dict), f"{where}: give a mapping of train options (e.g. {{preset: ppo}}), "
                                       f"got {options!r}")
    preset, values = None, {}
    for layer_source, layer in ((f"{source}, common", common), (where, options), ("--set", set_values)):
        layer = {str(k).replace("-", "_"): v for k, v in layer.items()}
        if "preset" in layer:
            preset = layer.pop("preset")
            require(preset in PRESETS, f"{layer_source}: unknown preset {preset!r}; choose one of "
                                       f"{', '.join(PRESETS)}")
        for key in RUN_KEYS:
            require(key not in layer, f"{layer_source}: {key} is set by the sweep for each run (from env_ids, "
                                      f"seeds and the variant's name); leave it out")
        values.update(cfg_lib.check_values(Args, layer, layer_source))
    args = cfg_lib.resolve(Args, values, PRESETS, preset)
    try:
        validate_args(args)
    except LoTUserError as exc:
        raise LoTUserError(f"{where}: {exc}") from None
    return {k: v for k, v in cfg_lib.to_dict(args).items() if k not in RUN_KEYS}


def read_grid(path: str | os.PathLike, set_options: Sequence[str] = ()) -> Grid:
    """Read and check a grid file; ``set_options`` (``KEY=VALUE``) override every variant's train options."""
    data = cfg_lib.read_config_file(path)
    source = f"grid file {path}"
    for key in data:
        require(key in GRID_KEYS, f"{source}: unknown key {key!r}; a grid has {', '.join(GRID_KEYS)}")
    env_ids = _as_list(data.get("env_ids"), str, "env_ids", source)
    seeds = _as_list(data.get("seeds"), int, "seeds", source)
    for seed in seeds:
        require(seed >= 0, f"{source}: seeds must be >= 0, got {seed}")
    common = data.get("common") or {}
    require(isinstance(common, dict), f"{source}: common must be a mapping of train options, got {common!r}")
    raw_variants = data.get("variants") or {}
    require(isinstance(raw_variants, dict), f"{source}: variants must map names to train options, e.g. "
                                            f"variants: {{ppo: {{preset: ppo}}}}")
    require(bool(env_ids) and bool(seeds) and bool(raw_variants),
            f"{source}: the grid is empty; it needs at least one of each of env_ids, seeds and variants")
    for name in raw_variants:
        require(isinstance(name, str) and name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
                f"{source}: variant name {name!r} must be letters, digits, '-', '_' or '.' (it names folders)")
    for env_id in env_ids:
        try:
            parse_env_id(env_id)
        except LoTUserError as exc:
            raise LoTUserError(f"{source}, env_ids: {exc}") from None
    set_values = parse_set_options(set_options)
    variants = {name: resolve_variant(name, common, options or {}, set_values, source)
                for name, options in raw_variants.items()}
    return Grid(env_ids=env_ids, seeds=seeds, variants=variants, source=str(path))


def _as_list(value: Any, kind: type, key: str, source: str) -> list[Any]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for item in items:
        require(isinstance(item, kind) and not isinstance(item, bool),
                f"{source}: {key} must be a list of {kind.__name__}, got {item!r}")
    require(len(set(items)) == len(items), f"{source}: {key} lists a value twice: {items}")
    return list(items)


# ----------------------------------------------------------------------------------------------------
# The sweep folder


def grid_difference(stored: dict[str, Any], grid: dict[str, Any]) -> str | None:
    """The first option of a variant both grids name that differs in a way that changes what its runs compute, or
    None.

    Games, seeds and variants only one of them has are no difference: a run folder is named by its game, variant
    and seed, so a grid that adds some only adds runs. Options that only say how a run executes
    (``EXECUTION_KEYS``) may differ; so may options one of the two lot_rl versions does not have.
    """
    for name, options in grid["variants"].items():
        old = stored["variants"].get(name) or {}
        for key in options:
            if key in old and key not in EXECUTION_KEYS and old[key] != options[key]:
                return f"variant {name!r}: {key} {old[key]!r} there, {options[key]!r} here"
    return None


def merged_grid(stored: dict[str, Any], grid: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The stored grid extended by what only ``grid`` has (games, seeds, variants, in its order), and those
    additions named; a variant both have keeps its stored options."""
    merged, added = {}, []
    for key, what in (("env_ids", "game"), ("seeds", "seed"), ("variants", "variant")):
        old = stored.get(key) or ({} if key == "variants" else [])
        new = [item for item in grid[key] if item not in old]
        added += [f"{what} {item}" for item in new]
        merged[key] = {**old, **{name: grid[key][name] for name in new}} if key == "variants" else [*old, *new]
    return merged, added


def prepare_folder(out: str | os.PathLike, grid: Grid, write: bool = True) -> tuple[Path, list[str]]:
    """Check that ``out`` is new, empty or a sweep folder whose grid ``grid`` agrees with; write ``grid.yaml`` (the
    grid, or the folder's grid extended by what ``grid`` adds). Returns the folder and the additions, named."""
    out = Path(out)
    stored_path = out / GRID_NAME
    resolved, added = grid.to_dict(), []
    if stored_path.is_file():
        try:
            stored = yaml.safe_load(stored_path.read_text())
        except yaml.YAMLError:
            stored = None
        require(isinstance(stored, dict) and isinstance(stored.get("variants"), dict),
                f"{stored_path} is not a sweep's grid (unreadable YAML, or no variants); give another --out")
        difference = grid_difference(stored, resolved)
        require(difference is None, f"sweep folder {out} was made from another grid ({difference}); give another "
                                    f"--out, or rename the variant whose options changed")
        resolved, added = merged_grid(stored, resolved)
        if not added or not write:
            return out, added
        header = (f"# lot-rl sweep: the resolved grid of {grid.source} (every train option of every variant), "
                  f"with what the folder's earlier grids had\n")
    else:
        require(not out.exists() or (out.is_dir() and not any(out.iterdir())),
                f"--out {out} is not a sweep folder (it has no {GRID_NAME}) and is not empty; choose a new folder")
        if not write:
            return out, added
        ensure_writable_dir(out, "--out")
        header = f"# lot-rl sweep: the resolved grid of {grid.source} (every train option of every variant)\n"
    write_atomically(stored_path, header + yaml.safe_dump(resolved, sort_keys=False))  # it makes the folder a sweep's
    return out, added


def run_path(out: str | os.PathLike, spec: RunSpec) -> Path:
    return Path(out) / RUNS_DIR / spec.name


def result_path(out: str | os.PathLike, spec: RunSpec) -> Path:
    return Path(out) / RESULTS_DIR / f"{spec.name}.json"


def run_state(out: str | os.PathLike, spec: RunSpec, eval_episodes: int = 0) -> str:
    """``done``, ``evaluate`` (trained, evaluation asked for and missing), ``resume`` or ``new``."""
    path = result_path(out, spec)
    if path.is_file():
        return "evaluate" if eval_episodes and not _has_evaluation(read_result(path), eval_episodes) else "done"
    return "resume" if (run_path(out, spec) / CHECKPOINT_NAME).is_file() else "new"


def _has_evaluation(result: dict[str, Any], episodes: int) -> bool:
    return (result.get("evaluation") or {}).get("episodes") == episodes


# ----------------------------------------------------------------------------------------------------
# One run


@contextlib.contextmanager
def _run_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Hold the run's lock file so that two sweeps never train the same run at once (released on any exit)."""
    import fcntl

    with open(run_dir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoTUserError(f"run {name} is being trained by another process right now (lock "
                               f"{run_dir / LOCK_NAME}); wait for it to finish") from None
        yield


def _clear_unsaved(run_dir: Path) -> None:
    """Remove what an attempt killed before its first checkpoint logged, so a fresh start logs nothing twice."""
    for path in [run_dir / METRICS_NAME, *run_dir.glob("events.out.tfevents.*")]:
        path.unlink(missing_ok=True)


def execute_run(spec: RunSpec, out: str | os.PathLike, threads: int = 1, eval_episodes: int = 0) -> dict[str, Any]:
    """Train (or resume) one run of a sweep, evaluate it if asked, write its result file; return the result.

    ``threads`` is the run's share of the cores (torch intra-op threads and the native env's threads).
    """
    import torch

    from lot_rl.agents.ppo_lot_atari import Args, train

    torch.set_num_threads(max(1, threads))
    out = Path(out)
    run_dir = ensure_writable_dir(run_path(out, spec), "run folder")
    path = result_path(out, spec)
    with _run_lock(run_dir, spec.name):
        result = read_result(path) if path.is_file() else None
        if result is None:
            resume = run_dir if (run_dir / CHECKPOINT_NAME).is_file() else None
            if resume is None:
                _clear_unsaved(run_dir)
            with open(run_dir / ATTEMPTS_NAME, "a") as attempts:
                attempts.write(json.dumps({"start": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
                                           "resume": resume is not None}) + "\n")
            train(cfg_lib.from_dict(Args, spec.train_options(out, threads)), resume=resume)
            result = build_result(run_dir, spec.env_id, spec.variant, spec.seed)
        if eval_episodes and not _has_evaluation(result, eval_episodes):
            result["evaluation"] = evaluate_run(run_dir, eval_episodes, seed=spec.seed,
                                                device=spec.options.get("device", "auto"))
            summary = {f"eval/{k}": v for k, v in result["evaluation"].items() if k not in ("protocol", "returns")}
            add_to_summary(cfg_lib.from_dict(TrackingOptions, spec.options), run_dir, summary)
        write_result(path, result)
    return result


# ----------------------------------------------------------------------------------------------------
# Executors


@dataclass
class Outcome:
    """How one run ended: ``done``, ``interrupted`` or ``failed`` (with a one-line reason)."""

    status: str
    message: str = ""
    result: dict[str, Any] | None = None


def _outcome(out: Path, spec: RunSpec, exitcode: int | None, stopping: bool = False) -> Outcome:
    """``stopping``: the sweep asked the run to stop, so a run that ended without a result or an error of its own
    was interrupted (one stopped while its process was still starting ends as Python ends on a Ctrl-C)."""
    path = result_path(out, spec)
    if exitcode == 0 and path.is_file():
        return Outcome("done", result=read_result(path))
    if exitcode == EXIT_INTERRUPTED or (stopping and not (run_path(out, spec) / ERROR_NAME).is_file()):
        saved = (run_path(out, spec) / CHECKPOINT_NAME).is_file()
        return Outcome("interrupted", "checkpoint saved; rerun the sweep to resume it" if saved else
                       "stopped before its first checkpoint; a rerun of the sweep starts it again")
    error = run_path(out, spec) / ERROR_NAME
    if error.is_file():
        return Outcome("failed", error.read_text().strip())
    if exitcode is not None and exitcode < 0:
        return Outcome("failed", f"killed by signal {-exitcode}")
    return Outcome("failed", f"exit code {exitcode}")


def _pool_child(spec: RunSpec, out: str, threads: int, eval_episodes: int) -> None:
    """A pool worker: one run in its own process, its output in the run's ``train.log``."""
    # Own process group: the terminal's Ctrl-C reaches the sweep alone, which sends each run one SIGINT.
    os.setpgrp()
    run_dir = ensure_writable_dir(run_path(out, spec), "run folder")
    (run_dir / ERROR_NAME).unlink(missing_ok=True)
    log = open(run_dir / LOG_NAME, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        execute_run(spec, out, threads, eval_episodes)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except LoTUserError as exc:
        print(f"lot-rl sweep: error: {exc}", file=sys.stderr)
        (run_dir / ERROR_NAME).write_text(f"{exc}\n")
        sys.exit(2)
    except Exception as exc:  # the sweep goes on with the other runs; the traceback is in train.log
        traceback.print_exc()
        (run_dir / ERROR_NAME).write_text(f"{type(exc).__name__}: {exc}".splitlines()[0] + "\n")
        sys.exit(1)


def _stop(processes: Sequence[multiprocessing.Process]) -> None:
    """Ask each run to checkpoint and stop (SIGINT, as Ctrl-C in ``lot-rl train``); a second Ctrl-C aborts them."""
    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
    print(f"\nCtrl-C: {len(processes)} running run(s) finish their update and save a checkpoint "
          f"(Ctrl-C again to abort them at once)", file=sys.stderr, flush=True)
    while True:
        try:
            for proc in processes:
                proc.join()
            return
        except KeyboardInterrupt:
            for proc in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)


@contextlib.contextmanager
def _stops_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block ends (then they arrive), so that a stop never finds a run's
    process started but not yet on the list of those to stop.

    Held in Python, not with a signal mask: the mask is the calling thread's, and the sweep has other threads (a
    process-directed signal may reach any of them). Python runs every signal handler in the main thread, so a
    handler that only takes note holds the signal back wherever it lands."""
    held: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum)) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])  # to its own handler now (the sweep's: KeyboardInterrupt)


def run_pool(specs: Sequence[RunSpec], out: Path, workers: int, threads: int, eval_episodes: int,
             on_outcome: Callable[[RunSpec, Outcome], None]) -> None:
    """Run ``specs`` in at most ``workers`` processes at once (a fresh process per run).

    The sweep stops its runs with SIGINT, so it must not hand them an ignored SIGINT: a run's process is spawned
    while the sweep's own SIGINT has a handler (:func:`sweep` sees to it), and then starts with Python's
    Ctrl-C behaviour even where the sweep was started in the background with SIGINT ignored."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    waiting = list(specs)
    running: dict[Any, tuple[multiprocessing.Process, RunSpec]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                spec = waiting.pop(0)
                proc = context.Process(target=_pool_child, args=(spec, str(out), threads, eval_episodes),
                                       name=f"lot-rl sweep {spec.name}")
                with _stops_held():
                    proc.start()
                    running[proc.sentinel] = (proc, spec)
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc, spec = running.pop(sentinel)
                proc.join()
                on_outcome(spec, _outcome(out, spec, proc.exitcode))
    except KeyboardInterrupt:
        _stop([proc for proc, _ in running.values()])
        for proc, spec in running.values():
            on_outcome(spec, _outcome(out, spec, proc.exitcode, stopping=True))
        raise


class SweepJob:
    """What submitit runs on a node: one run of a sweep. On a timeout or preemption, submitit calls
    :meth:`checkpoint` and requeues the job, which resumes the run from its last checkpoint."""

    def __call__(self, spec: RunSpec, out: str, threads: int, eval_episodes: int) -> dict[str, Any]:
        return execute_run(spec, out, threads, eval_episodes)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SweepJob(), *args)


@dataclass
class SlurmOptions:
    """Resources of each Slurm job (one run per job)."""

    partition: str | None = None
    time_min: int = 24 * 60
    cpus: int = 2
    gpus: int = 0
    mem_gb: float | None = None
    parallelism: int | None = None  # at most this many jobs at once
    poll_s: float = 15.0


def run_submitit(specs: Sequence[RunSpec], out: Path, cluster: str, slurm: SlurmOptions, threads: int,
                 eval_episodes: int, on_outcome: Callable[[RunSpec, Outcome], None]) -> None:
    """Submit one job per run through submitit (``cluster``: ``slurm``, or ``local`` to test without a cluster)."""
    try:
        import submitit
    except ImportError:
        raise LoTUserError("--executor slurm needs submitit: pip install -e \".[slurm]\"") from None
    if cluster == "slurm":
        require(shutil.which("sbatch") is not None,
                "--executor slurm: no Slurm here (sbatch is not on PATH); use --executor pool")
    executor = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
    parameters: dict[str, Any] = {"name": "lot-rl-sweep", "timeout_min": slurm.time_min,
                                  "cpus_per_task": slurm.cpus, "gpus_per_node": slurm.gpus}
    optional = {"slurm_partition": slurm.partition, "mem_gb": slurm.mem_gb,
                "slurm_array_parallelism": slurm.parallelism}
    parameters.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**parameters)
    with executor.batch():
        jobs = [executor.submit(SweepJob(), spec, str(out), threads, eval_episodes) for spec in specs]
    pending = dict(zip(jobs, specs))
    print(f"submitted {len(jobs)} job(s) through submitit ({cluster}); logs in {out / 'slurm'}", flush=True)
    try:
        while pending:
            for job in [job for job in pending if job.done()]:
                spec = pending.pop(job)
                error = job.exception()
                if error is None:
                    on_outcome(spec, _outcome(out, spec, 0))
                else:
                    lines = [line for line in str(error).splitlines() if line.strip()]
                    on_outcome(spec, Outcome("failed", lines[-1] if lines else type(error).__name__))
            if pending:
                time.sleep(slurm.poll_s)
    except KeyboardInterrupt:
        ids = " ".join(str(job.job_id) for job in pending)
        print(f"\nstopped following {len(pending)} job(s); they keep running (scancel {ids} stops them, "
              f"and a later rerun of this command skips what they finish)", file=sys.stderr)
        raise


# ----------------------------------------------------------------------------------------------------
# The sweep


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _score_text(result: dict[str, Any]) -> str:
    final = result["final"]
    score = "no episode finished" if final["score"] is None else \
        f"score {final['score']:.2f} (last {final['episodes']} episodes)"
    evaluation = result.get("evaluation")
    if evaluation:
        score += f", eval {evaluation['mean']:.2f} ({evaluation['episodes']} games)"
    speed = f"{result['env_steps_per_s']:,.0f} steps/s" if result.get("env_steps_per_s") else "-"
    return f"{score}, {speed}, {_hms(result['wall_time_s'] or 0)}"


@dataclass
class SweepSummary:
    """What a sweep invocation did."""

    total: int
    skipped: int = 0
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())


def sweep(grid: Grid, out: str | os.PathLike, *, env_ids: Sequence[str] | None = None,
          seeds: Sequence[int] | None = None, variants: Sequence[str] | None = None, workers: int | None = None,
          threads: int | None = None, executor: str = "pool", eval_episodes: int = 0,
          slurm: SlurmOptions | None = None, tracking: TrackingOptions | None = None,
          log: Callable[[str], None] = print) -> SweepSummary:
    """Run the grid's runs (narrowed to ``env_ids``/``seeds``/``variants``) that are not finished yet.

    ``workers`` runs at once (default: the cores), each with ``threads`` torch threads (default: cores / workers;
    with Slurm, the job's CPUs). ``tracking`` with ``track`` set logs every run to W&B (see :func:`tracked`).

    Prints a line per finished run and a summary. Raises ``KeyboardInterrupt`` after a Ctrl-C (or SIGTERM) has
    stopped the running runs at a checkpoint.
    """
    require(executor in EXECUTORS, f"unknown --executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    require(eval_episodes >= 0, f"--eval-episodes must be >= 0, got {eval_episodes}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = cores if workers is None else workers
    require(workers >= 1, f"--workers must be >= 1, got {workers}")
    require(threads is None or threads >= 1, f"--threads must be >= 1, got {threads}")
    slurm = slurm or SlurmOptions()
    specs = grid.runs(env_ids, seeds, variants)
    out, added = prepare_folder(out, grid)
    if added:
        log(f"sweep {out}: its grid now also has {', '.join(added)}")
    if tracking is not None and tracking.track:
        specs = [tracked(spec, tracking, Path(out).resolve().name) for spec in specs]
    states = {spec.name: run_state(out, spec, eval_episodes) for spec in specs}
    todo = [spec for spec in specs if states[spec.name] != "done"]
    summary = SweepSummary(total=len(specs), skipped=len(specs) - len(todo))
    if threads is None:
        threads = slurm.cpus if executor != "pool" else max(1, cores // min(workers, max(len(todo), 1)))
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "resume", "evaluate", "new")}
    where = ("nothing to run" if not todo else f"{min(workers, len(todo))} worker(s) x {threads} thread(s)"
             if executor == "pool" else f"submitit ({executor}), {threads} thread(s) per job")
    log(f"sweep {out}: {len(specs)} run(s) ({len({s.env_id for s in specs})} game(s) x "
        f"{len({s.seed for s in specs})} seed(s) x {len({s.variant for s in specs})} variant(s)); "
        f"{counts['done']} finished, {counts['resume']} to resume, {counts['evaluate']} to evaluate, "
        f"{counts['new']} new; {where}")
    started = time.time()

    def on_outcome(spec: RunSpec, outcome: Outcome) -> None:
        summary.outcomes[spec.name] = outcome
        position = f"[{summary.skipped + len(summary.outcomes)}/{summary.total}]"
        if outcome.status == "done":
            log(f"{position} {spec.name}: {_score_text(outcome.result)}")
        elif outcome.status == "interrupted":
            log(f"{position} {spec.name}: interrupted, {outcome.message}")
        else:
            log(f"{position} {spec.name}: FAILED: {outcome.message} (log: {run_path(out, spec) / LOG_NAME})")

    # SIGTERM (a batch system stopping the sweep) stops the pool as Ctrl-C does: every run saves a checkpoint.
    # Ctrl-C gets its handler back too where the sweep was started with it ignored (in the background): the runs'
    # processes would inherit the ignored SIGINT, with which the sweep stops them (run_pool).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if executor == "pool" and in_main_thread else {}
    try:
        if todo and executor == "pool":
            run_pool(todo, out, workers, threads, eval_episodes, on_outcome)
        elif todo:
            run_submitit(todo, out, "slurm" if executor == "slurm" else "local", slurm, threads, eval_episodes,
                         on_outcome)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [name for name, o in summary.outcomes.items() if o.status == "failed"]
    log(f"sweep {out}: {summary.count('done')} run(s) finished now, {summary.skipped} already finished, "
        f"{len(failed)} failed, {summary.count('interrupted')} interrupted, "
        f"{summary.total - summary.skipped - len(summary.outcomes)} not started; {_hms(time.time() - started)}")
    if failed:
        log(f"failed: {', '.join(failed)} (their train.log says why; rerun the sweep to retry them)")
    if summary.interrupted:
        raise KeyboardInterrupt
    if not failed:
        log(f"report: lot-rl report {out} --baseline {next(iter(grid.variants))}")
    return summary


# ----------------------------------------------------------------------------------------------------
# Command line: `lot-rl sweep`


def configure_parser(parser: argparse.ArgumentParser, command: str = "sweep") -> None:
    parser.description = ("Train a grid of games x seeds x variants (each variant a set of 'lot-rl train' options) "
                          "as ordinary run folders; finished runs are skipped and interrupted ones resumed.")
    parser.add_argument("grid", metavar="GRID", help="YAML or TOML grid file: env_ids, seeds, common, variants")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="sweep folder (default: sweeps/<grid file name without extension>)")
    parser.add_argument("--env-ids", nargs="+", default=None, metavar="ENV_ID", help="run only these games of the grid")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="run only these seeds of the grid")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME", help="run only these variants")
    parser.add_argument("--set", dest="set_options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="a train option for every run, over the grid's (e.g. --set total_timesteps=200000); "
                             "part of the grid: a sweep folder keeps the values it was made with")
    parser.add_argument("--eval-episodes", type=int, default=0, metavar="N",
                        help="also play N full games with each finished run's teacher (greedy, as lot-rl eval) and "
                             "store the summary in its result (default: 0, none)")
    parser.add_argument("--executor", choices=EXECUTORS, default="pool",
                        help="pool: local processes (default); slurm: one Slurm job per run through submitit; "
                             "submitit-local: submitit's local executor (the Slurm path, tested without a cluster)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs at once in the pool (default: the number of cores; each run gets cores/workers "
                             "torch threads)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: cores / workers; with Slurm: --slurm-cpus); on a busy "
                             "machine 1 can be several times faster than 2")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    group = parser.add_argument_group("slurm (with --executor slurm; pip install -e \".[slurm]\")")
    group.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's)")
    group.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MINUTES",
                       help="time limit per job; a job that reaches it is requeued and resumes (default: 1440)")
    group.add_argument("--slurm-cpus", type=int, default=2, help="CPUs per job, also its torch threads (default: 2)")
    group.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job (default: 0)")
    group.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per job (default: the cluster's)")
    group.add_argument("--slurm-parallelism", type=int, default=None, metavar="N",
                       help="at most N jobs at once (default: no limit)")
    cfg_lib.add_options(parser, TrackingOptions, group_of={name: "tracking (each run as lot-rl train --track)"
                                                           for name in TRACKING_FIELDS})


def run_command(ns: argparse.Namespace, command: str = "sweep") -> int:
    grid = read_grid(ns.grid, ns.set_options)
    tracking = cfg_lib.from_namespace(TrackingOptions, ns)
    validate_tracking(tracking)
    out = Path(ns.out) if ns.out else Path("sweeps") / Path(ns.grid).stem
    if ns.dry_run:
        specs = grid.runs(ns.env_ids, ns.seeds, ns.variants)
        added = prepare_folder(out, grid, write=False)[1]
        if added:
            print(f"sweep {out}: would add {', '.join(added)} to its grid")
        for spec in specs:
            print(f"{run_state(out, spec, ns.eval_episodes):8}  {spec.name}")
        print(f"{len(specs)} run(s); nothing was run (--dry-run)")
        return 0
    require(ns.slurm_cpus >= 1, f"--slurm-cpus must be >= 1, got {ns.slurm_cpus}")
    slurm = SlurmOptions(partition=ns.slurm_partition, time_min=ns.slurm_time, cpus=ns.slurm_cpus,
                         gpus=ns.slurm_gpus, mem_gb=ns.slurm_mem_gb, parallelism=ns.slurm_parallelism,
                         poll_s=1.0 if ns.executor == "submitit-local" else 15.0)
    try:
        summary = sweep(grid, out, env_ids=ns.env_ids, seeds=ns.seeds, variants=ns.variants, workers=ns.workers,
                        threads=ns.threads, executor=ns.executor, eval_episodes=ns.eval_episodes, slurm=slurm,
                        tracking=tracking)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 1 if summary.count("failed") else 0
