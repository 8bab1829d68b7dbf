"""DEVELOPERS.md's layout table names every module of lot_rl, and every file it names exists."""

from __future__ import annotations

import re

from test_imports import ROOT, lot_rl_modules


def layout_section() -> str:
    text = (ROOT / "DEVELOPERS.md").read_text()
    return text[text.index("## Layout"):text.index("## Conventions")]


def test_every_module_is_in_the_layout_and_every_named_file_exists():
    layout = layout_section()
    named = set(re.findall(r"`([\w/]+\.py)", layout))  # `lot_rl/runlog.py`, `data.py`, ...
    for path in (p for p in named if "/" in p):
        assert (ROOT / path).is_file(), f"DEVELOPERS.md names {path}, which does not exist"
    for module, path in lot_rl_modules().items():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = str(path.relative_to(ROOT))
        assert relative in named or path.name in named, f"DEVELOPERS.md's layout does not name {relative} ({module})"
