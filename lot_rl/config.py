"""Typed options for every command: one dataclass per command, turned into argparse, presets and config files.

Each option is a dataclass field made with :func:`option`, whose help text becomes the ``--help`` line
(with its default). Values are resolved in this order, later wins: dataclass default < ``--preset`` <
``--config FILE`` (YAML or TOML) < the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from lot_rl.errors import LoTUserError


def option(default: Any, help: str, choices: typing.Sequence[Any] | None = None, *,
           flags: typing.Sequence[str] = (), metavar: str | None = None, default_text: str | None = None,
           negative: tuple[str, str] | None = None, repeat: bool = False, **kwargs) -> Any:
    """A dataclass field carrying its command-line help (and optional choices).

    Args:
        flags: the command-line spellings (default: ``--field-name``); the first is the one ``--help`` shows
            first, the others are accepted as the same option (e.g. ``("--sticky", "--repeat-action-probability")``).
        metavar: the value's name in ``--help`` (default: the field name in capitals).
        default_text: how ``--help`` states the default, for a default whose meaning its value does not
            show (``None`` meaning "as trained"); ``""`` states none.
        negative: for a bool: ``(flag, help)`` of the switch that sets it False (e.g. ``("--sample", ...)``),
            mutually exclusive with the flag that sets it True, instead of ``--no-field-name``.
        repeat: for a list: the flag takes one value and is repeated (``--metric a --metric b``), instead
            of taking several values at once.
    """
    metadata = {"help": help, "choices": choices, "flags": tuple(flags), "metavar": metavar,
                "default_text": default_text, "negative": negative, "repeat": repeat}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is_list) for int, float, str, bool, X | None, list[X]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_options(parser: argparse.ArgumentParser, cls, group_of: dict[str, str] | None = None) -> None:
    """Add one ``--kebab-case`` option per field of dataclass ``cls`` (see :func:`option` for the variants).

    Defaults are ``argparse.SUPPRESS`` so that :func:`resolve` can tell what the user typed; the help
    line still shows the dataclass default. ``group_of`` maps field names to ``--help`` section titles.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("help"):
            continue
        title = (group_of or {}).get(f.name)
        target = parser
        if title:
            target = groups.setdefault(title, parser.add_argument_group(title))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        typ, is_list = _base_type(hints[f.name])
        flags = meta.get("flags") or (_flag(f.name),)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        shown = meta.get("default_text")
        shown = repr(default) if shown is None else shown
        help_text = f"{meta['help']} (default: {shown})" if shown else meta["help"]
        if typ is bool and meta.get("negative"):
            negative_flag, negative_help = meta["negative"]
            pair = target.add_mutually_exclusive_group()
            pair.add_argument(*flags, action="store_true", help=meta["help"] + (" (default)" if default else ""),
                              **kwargs)
            pair.add_argument(negative_flag, action="store_false",
                              help=negative_help + ("" if default else " (default)"), **kwargs)
            continue
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = typ
            kwargs["metavar"] = meta.get("metavar") or (f.name.upper() if not meta.get("choices") else None)
            if is_list and meta.get("repeat"):
                kwargs["action"] = "append"
            elif is_list:
                kwargs["nargs"] = "*"
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        target.add_argument(*flags, help=help_text.replace("%", "%%"), **kwargs)


def add_run_options(parser: argparse.ArgumentParser, cls, presets: dict[str, dict[str, Any]], preset_help: str,
                    group_of: dict[str, str] | None = None) -> None:
    """A training command's options: ``--preset``, ``--config``, ``--resume`` and one per field of ``cls``."""
    parser.add_argument("--preset", choices=list(presets), default=None, help=preset_help)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or TOML file of options (the command line wins)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run saved in RUN_DIR (or a checkpoint file); options given here override")
    add_options(parser, cls, group_of)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML (.yaml/.yml) or TOML (.toml) file; keys in snake_case or kebab-case."""
    path = Path(path)
    if not path.is_file():
        raise LoTUserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise LoTUserError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise LoTUserError(f"config file {path} is not valid {path.suffix[1:].upper()}: "
                           f"{str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise LoTUserError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_known(cls, values: dict[str, Any], source: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {_flag(close[0])}?" if close else ""
            raise LoTUserError(f"unknown option {key!r} in {source}{hint}")


def _coerce(cls, values: dict[str, Any], source: str) -> dict[str, Any]:
    hints = _field_types(cls)
    out = {}
    for key, value in values.items():
        typ, is_list = _base_type(hints[key])
        try:
            if value is None:
                out[key] = None
            elif is_list:
                items = value if isinstance(value, (list, tuple)) else [value]
                out[key] = [typ(v) for v in items]
            elif typ is bool and not isinstance(value, bool):
                raise ValueError
            else:
                out[key] = typ(value)
        except (TypeError, ValueError):
            raise LoTUserError(f"option {_flag(key)} in {source} must be {getattr(typ, '__name__', typ)}, "
                               f"got {value!r}") from None
        choices = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("choices")
        if choices and out[key] is not None and out[key] not in choices:
            raise LoTUserError(f"option {_flag(key)} in {source} must be one of {list(choices)}, got {value!r}")
    return out


def check_values(cls, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Options written by hand (a file, a grid, ``KEY=VALUE``) checked against ``cls``: known names, types, choices.

    Returns them coerced to the fields' types; a problem raises one line that names ``source``.
    """
    _check_known(cls, values, source)
    return _coerce(cls, values, source)


def resolve(cls, cli_values: dict[str, Any], presets: dict[str, dict[str, Any]] | None = None,
            preset: str | None = None, config_file: str | Path | None = None,
            resumed: dict[str, Any] | None = None):
    """Build ``cls`` from defaults < preset < config file < command line.

    ``resumed`` (the saved options of a resumed run) takes the place of the defaults and the preset.
    """
    values: dict[str, Any] = dict(resumed or {})
    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise LoTUserError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
        values.update(presets[preset])
    if config_file is not None:
        values.update(check_values(cls, read_config_file(config_file), f"config file {config_file}"))
    values.update(cli_values)
    _check_known(cls, values, "the options")
    return cls(**values)


def from_namespace(cls, ns: argparse.Namespace):
    """``cls`` from the options of ``cls`` that the command line gave (see :func:`add_options`), defaults
    for the rest; other names in ``ns`` (positionals, other dataclasses' options) are left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    return resolve(cls, {k: v for k, v in vars(ns).items() if k in names})


def to_dict(cfg) -> dict[str, Any]:
    """The dataclass as plain JSON/YAML-safe values."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls, values: dict[str, Any]):
    """Rebuild ``cls`` from :func:`to_dict` output, ignoring keys this version no longer has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def save_config(cfg, path: str | Path, comments: Sequence[str] = ()) -> None:
    """Write the resolved options as YAML (readable back with ``--config``), after ``comments`` (``# `` lines:
    what the options resolved to on this machine, e.g. ``--precision auto``)."""
    header = "".join(f"# {line}\n" for line in comments)
    Path(path).write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def args_from_namespace(ns: argparse.Namespace, cls: type, presets: dict[str, dict[str, Any]], kind: str):
    """Resolve a command's options from parsed arguments; return ``(args, resume_path_or_None)``.

    A new run resolves defaults < ``--preset`` < ``--config`` < command line. ``--resume RUN`` starts from
    that run's saved options (checkpoint ``kind`` must match), then ``--config`` and the command line
    override them; ``--preset`` is refused with it.
    """
    from lot_rl.checkpoint import load_checkpoint  # checkpoint imports torch; keep config light

    cli_values = {k: v for k, v in vars(ns).items() if k not in ("preset", "config", "resume")}
    if getattr(ns, "resume", None):
        if ns.preset is not None:
            raise LoTUserError(f"--preset cannot be combined with --resume: the run continues with its saved "
                               f"options; give the ones to change on the command line or in --config")
        saved = load_checkpoint(ns.resume, kind=kind)["config"]
        return resolve(cls, cli_values, config_file=ns.config, resumed=to_dict(from_dict(cls, saved))), ns.resume
    return resolve(cls, cli_values, presets, ns.preset, ns.config), None


# Options a resumed run cannot take new values for, and why.
FIXED_ON_RESUME = {"seed": "a resumed run continues the random state saved in its checkpoint",
                   "run_dir": "a resumed run stays in its folder", "run_name": "a resumed run stays in its folder"}


def require_unchanged_on_resume(args, saved: dict[str, Any], reasons: dict[str, str] = FIXED_ON_RESUME) -> None:
    """Refuse, in one line, an option of ``args`` that differs from the resumed run's saved value but
    cannot be applied (``reasons``: option name -> why), instead of ignoring what the user typed."""
    for name, reason in reasons.items():
        if name in saved and getattr(args, name) != saved[name]:
            raise LoTUserError(f"{_flag(name)} {getattr(args, name)!r} differs from the resumed run's "
                               f"{saved[name]!r}: {reason}")
