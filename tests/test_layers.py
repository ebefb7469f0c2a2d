"""The layers of hpo/ point one way, as docs/architecture.md draws them.

The import graph is built from every import statement of every module, those inside
functions and under ``TYPE_CHECKING`` included (an import placed in a function to dodge
a cycle hides the cycle; it does not remove it). The layer table is read from
docs/architecture.md, so the picture and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hpo"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


@functools.cache
def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The hpo modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def layers() -> list[tuple[str, list[str]]]:
    """``(layer, [path prefixes])`` from the fenced block after ``<!-- layers -->`` in
    docs/architecture.md, highest first."""
    text = ARCHITECTURE.read_text()
    block = re.search(r"<!-- layers -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no layer table (<!-- layers --> then a ```text block)"
    rows = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith(" "):
            continue
        layer, *paths = line.split("#")[0].split()
        rows.append((layer, paths))
    return rows


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int:
    """The rank in ``table`` (0: highest) of the layer holding ``module``'s file."""
    path = modules()[module].relative_to(ROOT).as_posix()
    for rank, (_, prefixes) in enumerate(table):
        if any(path == prefix or (prefix.endswith("/") and path.startswith(prefix)) for prefix in prefixes):
            return rank
    raise AssertionError(f"{module} ({path}) is in no layer of docs/architecture.md")


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def violations(g: dict[str, set[str]], table: list[tuple[str, list[str]]]) -> list[str]:
    """Imports that point up the table (highest layer first), or into an objective, or
    from an objective to anything but ``hpo.api`` and its own package."""
    names = [name for name, _ in table]
    objectives = names.index("objectives")
    wrong = []
    for module, targets in g.items():
        mine = layer_of(module, table)
        for target in targets:
            theirs = layer_of(target, table)
            if mine == objectives:
                if target != "hpo.api" and theirs != objectives:
                    wrong.append(f"{module} -> {target} (objectives import hpo.api only)")
            elif theirs < mine or theirs == objectives:
                wrong.append(f"{module} ({names[mine]}) -> {target} ({names[theirs]})")
    return wrong


def test_every_module_imports_only_its_own_layer_or_lower_ones() -> None:
    assert violations(graph(), layers()) == []


def test_an_import_up_the_layers_is_caught() -> None:
    table = layers()
    assert violations({"hpo.system.lock": {"hpo.worker.loop"}, "hpo.worker.loop": set()}, table) == [
        "hpo.system.lock (system) -> hpo.worker.loop (worker)"]
    assert violations({"hpo.physae.train": {"hpo.worker.context"}, "hpo.worker.context": set()}, table) == [
        "hpo.physae.train -> hpo.worker.context (objectives import hpo.api only)"]
    assert violations({"hpo.watch.status": {"hpo.physae.settings"}, "hpo.physae.settings": set()}, table) == [
        "hpo.watch.status (watch) -> hpo.physae.settings (objectives)"]


# Optuna's private modules, and the private attributes of its objects that hpo needs
# (``self._x`` is an object's own attribute, never Optuna's).
PRIVATE_OPTUNA = re.compile(r"from optuna[\w.]*\._\w+ import|optuna\.[\w.]*\._\w+|(?<!self)\._(?:study_id|trial_id|"
                            r"storage|backend|thread_lock|sync_with_backend|replay_result|thread_local|"
                            r"pop_waiting_trial_id|get_stale_trial_ids|log_number_offset)\b")


@pytest.mark.parametrize("rule", ["optuna", "environ"])
def test_one_module_each_for_optuna_internals_and_the_environment(rule: str) -> None:
    """Every private Optuna access is in hpo/_optuna.py; os.environ is read in config/environment.py."""
    pattern, home = {"optuna": (PRIVATE_OPTUNA, "hpo._optuna"),
                     "environ": (re.compile(r"os\.environ|os\.getenv|getenv\("), "hpo.config.environment")}[rule]
    found = sorted(name for name, path in modules().items() if pattern.search(path.read_text()))
    assert found == [home]


def test_the_greps_match_what_they_forbid() -> None:
    assert PRIVATE_OPTUNA.search("from optuna.storages.journal._file import X")
    assert PRIVATE_OPTUNA.search("study._storage.get_all_trials()")
    assert PRIVATE_OPTUNA.search("return trial._trial_id")
    assert not PRIVATE_OPTUNA.search("self._trial_id = None")
    assert not PRIVATE_OPTUNA.search("from optuna.storages import JournalStorage")
