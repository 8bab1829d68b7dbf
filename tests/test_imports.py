"""No import circle inside lot_rl.

The graph holds every import from one lot_rl module of another, at the top of a file or inside a function
(a function-level import closes a circle as surely as a top-level one; it only hides it until the call).
Modules are found where setup.cfg's ``package_dir`` puts them (``agents/`` is ``lot_rl.agents``).
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_folders() -> dict[str, Path]:
    """``{"lot_rl": <repo>/lot_rl, "lot_rl.agents": <repo>/agents, ...}`` from setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pairs = (line.split("=") for line in config["options"]["package_dir"].strip().splitlines())
    return {name.strip(): ROOT / folder.strip() for name, folder in pairs}


def lot_rl_modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name, with its source file."""
    modules = {}
    for package, folder in package_folders().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . / .. import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from lot_rl import config` imports the module lot_rl.config, `from lot_rl.errors import x` lot_rl.errors
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = lot_rl_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_circles_and_only_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_is_read_from_the_sources():
    graph = import_graph()
    assert {"lot_rl.cli", "lot_rl.agents.ppo_lot_atari", "lot_rl.envs.atari", "lot_rl.supervised.cv"} <= set(graph)
    assert {"lot_rl.stats", "lot_rl.runlog"} <= graph["lot_rl.evaluation"]  # `from lot_rl import stats` too
    assert "lot_rl.envs.atari" in graph["lot_rl.agents.ppo_lot_atari"]
    assert "lot_rl.supervised.data" in graph["lot_rl.supervised.cv"]  # `from lot_rl.supervised import data`


def test_no_import_circle_inside_lot_rl():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)
