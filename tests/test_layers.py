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


def imported(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (its ``source``) imports anywhere."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
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
    return {name: imported(name, path.read_text(), path.name == "__init__.py", set(found))
            for name, path in found.items()}


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


def foreign_private(path: Path) -> list[str]:
    """Private names of other code this module touches: imports from a private module of a
    package (``from optuna.storages.journal._file import ...``), and ``x._name`` on anything
    but ``self``/``cls`` where ``_name`` is not defined in this very module (hpo's own
    objects reaching into each other within a module are fine; ``os._exit`` and Enum's
    ``_value_`` are public API)."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own |= {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Attribute)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] not in ("hpo", "__future__") \
                and any(part.startswith("_") for part in node.module.split(".")):
            found.append(f"from {node.module} import ...")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value.id if isinstance(node.value, ast.Name) else ""
            if base not in ("self", "cls", "os") and node.attr not in own and node.attr != "_value_":
                found.append(f"{base or '<expr>'}.{node.attr}")
    return found


def environment_reads(path: Path) -> list[str]:
    """Where a module reads the process environment (``os.environ``, ``os.getenv`` or their imports)."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "environb", "getenv", "getenvb"):
            reads.append(f"os.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "os" \
                and {a.name for a in node.names} & {"environ", "environb", "getenv", "getenvb"}:
            reads.append("from os import environ")
    return reads


def test_every_private_optuna_access_is_in_one_module() -> None:
    found = {name: foreign_private(path) for name, path in modules().items()}
    assert {name for name, names in found.items() if names} == {"hpo._optuna"}, found


def test_the_environment_is_read_in_one_module() -> None:
    found = {name: environment_reads(path) for name, path in modules().items()}
    assert {name for name, reads in found.items() if reads} == {"hpo.config.environment"}, found


def test_the_checks_find_what_they_forbid(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom os import environ\nfrom optuna.storages.journal._file import Lock\n"
                      "def f(study, trial):\n    os._exit(0)\n    return study._storage, trial._cached_frozen_trial, "
                      "os.getenv('X')\n")
    assert foreign_private(sample) == ["from optuna.storages.journal._file import ...", "study._storage",
                                       "trial._cached_frozen_trial"]
    assert sorted(environment_reads(sample)) == ["from os import environ", "os.getenv"]
