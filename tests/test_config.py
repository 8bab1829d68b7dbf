import argparse
from dataclasses import dataclass

import pytest

from lot_rl import config as cfg_lib
from lot_rl.errors import LoTUserError


@dataclass
class Opts:
    alpha: float = cfg_lib.option(0.5, "weight")
    num_students: int = cfg_lib.option(1, "students")
    weights: list[float] = cfg_lib.option([], "lambdas")
    mode: str = cfg_lib.option("a", "mode", choices=("a", "b"))
    flag: bool = cfg_lib.option(True, "flag")
    lr: float | None = cfg_lib.option(None, "learning rate")


PRESETS = {"off": {"alpha": 0.0, "num_students": 0}}


def parse(argv):
    parser = argparse.ArgumentParser()
    cfg_lib.add_options(parser, Opts)
    return vars(parser.parse_args(argv))


def test_precedence_default_preset_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("num-students: 3\nalpha: 0.25\nweights: [1, 2, 3]\n")
    cfg = cfg_lib.resolve(Opts, parse(["--alpha", "0.75", "--no-flag"]), PRESETS, "off", f)
    assert (cfg.alpha, cfg.num_students, cfg.weights, cfg.flag) == (0.75, 3, [1.0, 2.0, 3.0], False)
    assert cfg_lib.resolve(Opts, {}, PRESETS, "off").num_students == 0
    assert cfg_lib.resolve(Opts, {}).alpha == 0.5


def test_toml_config_and_help_lists_defaults(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('mode = "b"\nlr = 0.1\n')
    assert cfg_lib.resolve(Opts, {}, config_file=f).mode == "b"
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = capsys.readouterr().out
    assert "--num-students" in out and "(default: 1)" in out and "--no-flag" in out


@pytest.mark.parametrize("text, message", [
    ("alhpa: 1\n", "did you mean --alpha"),
    ("alpha: fast\n", "--alpha in config file .* must be float"),
    ("mode: c\n", "must be one of"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("alpha: [1\n", "not valid YAML"),
])
def test_config_file_errors(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(LoTUserError, match=message):
        cfg_lib.resolve(Opts, {}, config_file=f)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(LoTUserError, match="unknown preset 'fast'; choose one of off"):
        cfg_lib.resolve(Opts, {}, PRESETS, "fast")
    with pytest.raises(LoTUserError, match="does not exist"):
        cfg_lib.resolve(Opts, {}, config_file=tmp_path / "none.yaml")


def test_save_config_reads_back(tmp_path):
    cfg = Opts(alpha=0.1, weights=[0.5])
    cfg_lib.save_config(cfg, tmp_path / "config.yaml")
    assert cfg_lib.resolve(Opts, {}, config_file=tmp_path / "config.yaml") == cfg


@dataclass
class Spellings:
    sticky: float | None = cfg_lib.option(None, "sticky actions", flags=("--sticky", "--repeat-action-probability"),
                                          metavar="P", default_text="as trained")
    greedy: bool = cfg_lib.option(True, "argmax", negative=("--sample", "sample"))
    metrics: list[str] = cfg_lib.option([], "a tag", flags=("--metric",), repeat=True, default_text="")
    title: str | None = cfg_lib.option(None, "figure title", default_text="")


def test_other_spellings_negative_switch_and_repeated_flag(capsys):
    parser = argparse.ArgumentParser()
    cfg_lib.add_options(parser, Spellings)
    parser.add_argument("run")
    parsed = lambda argv: cfg_lib.from_namespace(Spellings, parser.parse_args(argv))
    assert parsed(["r"]) == Spellings()  # defaults; the positional is not a field
    assert parsed(["r", "--repeat-action-probability", "0.25"]).sticky == 0.25
    assert parsed(["r", "--repeat-action-probability", "0.25"]) == parsed(["r", "--sticky", "0.25"])
    assert parsed(["r", "--sample"]).greedy is False and parsed(["r", "--greedy"]).greedy is True
    assert parsed(["r", "--metric", "a", "--metric", "b"]).metrics == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["r", "--greedy", "--sample"])  # one or the other
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--sticky P, --repeat-action-probability P sticky actions (default: as trained)" in out
    assert "--greedy argmax (default) --sample sample" in out
    assert "--title TITLE figure title" in out and "(default: None)" not in out
