"""``lot-rl``: the command line, a thin layer over functions that can be called from Python.

Verbs follow rl-zoo3's habits: ``train``, ``eval``, ``compare``, ``plot``, ``sweep`` and ``report``, plus the
supervised entry points ``cv`` and ``lm``. Each verb lives in its own module, imported only when that verb runs
(so ``lot-rl eval`` does not pay for importing the supervised code). A module provides::

    configure_parser(parser: argparse.ArgumentParser, command: str) -> None
    run_command(args: argparse.Namespace, command: str) -> int | None

A :class:`~lot_rl.errors.LoTUserError` anywhere becomes one line on stderr and exit code 2. The training verbs
(``train``, ``cv``, ``lm``) also take ``--nproc K`` and ``--dist-backend`` (:mod:`lot_rl.distributed`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lot_rl import distributed
from lot_rl.errors import LoTUserError

# verb -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lot_rl.agents.ppo_lot_atari", "train a PPO teacher with LoT students on an Atari or MinAtar game"),
    "eval": ("lot_rl.evaluation", "evaluate saved policies on full games"),
    "compare": ("lot_rl.evaluation", "evaluate several runs and compare them side by side"),
    "plot": ("lot_rl.plotting", "plot learning curves from run folders"),
    "sweep": ("lot_rl.sweep", "train a grid of games x seeds x variants, resumable (local pool or Slurm)"),
    "report": ("lot_rl.report", "seed-level statistics and figures of a sweep's results (rliable's definitions)"),
    "cv": ("lot_rl.supervised.cv", "image classification with LoT (PreResNet)"),
    "lm": ("lot_rl.supervised.lm", "language modeling with LoT (LSTM / Transformer)"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lot-rl", description="Learning from Teaching (LoT) for reinforcement and supervised learning.",
        epilog="Run 'lot-rl VERB --help' for the options of a verb. With no verb, 'lot-rl' runs 'train'.")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0
    if not argv or argv[0].startswith("-"):
        argv = ["train", *argv]  # the main job: LoT on Breakout with the paper's settings
    command = argv[0]
    if command not in COMMANDS:
        _top_parser().error(f"unknown verb {command!r}; choose one of {', '.join(COMMANDS)}")
    module_name, text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lot-rl {command}", description=text)
    module.configure_parser(parser, command)
    if command in distributed.VERBS:
        distributed.add_launcher_options(parser)  # --nproc, --dist-backend
    args = parser.parse_args(argv[1:])
    nproc, backend = distributed.take_launcher_options(args)
    try:
        if nproc != 1:  # lot-rl VERB --nproc K: the same command in K processes
            return distributed.launch(command, distributed.strip_launcher_option(argv[1:]), nproc,
                                      getattr(args, "device", None) or "auto", backend)
        code = module.run_command(args, command)
    except LoTUserError as exc:
        if distributed.is_main_process():  # every rank raises the same user error: say it once
            print(f"lot-rl {command}: error: {exc}", file=sys.stderr)
        return 2
    except distributed.PeerFailure as exc:
        print(f"lot-rl {command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
