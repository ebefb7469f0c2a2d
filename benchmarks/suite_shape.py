"""The shape of the test suite, as a table: tests collected, and how many of them start
processes (their code, a helper they call or a fixture they use calls ``subprocess``,
``run_hpo``, ``Popen``, ``multiprocessing`` or ``os.fork``), with and without the
``cluster`` marker.

    python benchmarks/suite_shape.py            # this checkout
    python benchmarks/suite_shape.py --rev REV  # a commit of this repository (git archive)

A test counts once per collected item (each parameter set is one test). The analysis is
static (names, not types): a helper counts as spawning when its body, or a helper or
fixture it reaches by name in the same module, ``conftest.py`` or a module it imports
from, spawns. Results are in docs/testing.md ("Measures").
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPAWNING_MODULES = {"subprocess", "multiprocessing"}
SPAWNING_NAMES = {"run_hpo", "Popen", "fork"}


def _direct(node: ast.AST) -> bool:
    """Whether ``node`` contains a call that starts a process by itself."""
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        if isinstance(func, ast.Attribute):
            base = func.value
            if isinstance(base, ast.Name) and base.id in SPAWNING_MODULES:
                return True
            if isinstance(base, ast.Name) and base.id == "os" and func.attr == "fork":
                return True
            if func.attr == "Popen":
                return True
        elif isinstance(func, ast.Name) and func.id in SPAWNING_NAMES:
            return True
    return False


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _is_fixture(func: ast.FunctionDef) -> bool:
    for deco in func.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if ast.unparse(target).endswith("fixture"):
            return True
    return False


class Suite:
    """The functions of tests/ and which of them start processes."""

    def __init__(self, tests: Path) -> None:
        self.modules = {p.stem: ast.parse(p.read_text()) for p in sorted(tests.glob("*.py"))}
        self.defs: dict[tuple[str, str], ast.FunctionDef] = {}
        self.fixtures: dict[str, tuple[str, str]] = {}
        self.imports: dict[str, dict[str, str]] = {}  # module -> local name -> defining module
        for mod, tree in self.modules.items():
            self.imports[mod] = {}
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    self.defs[(mod, node.name)] = node
                    if _is_fixture(node) and (mod == "conftest" or node.name not in self.fixtures):
                        self.fixtures.setdefault(node.name, (mod, node.name))
                elif isinstance(node, ast.ImportFrom) and node.module in self.modules:
                    for alias in node.names:
                        self.imports[mod][alias.asname or alias.name] = node.module
        self._memo: dict[tuple[str, str], bool] = {}

    def _resolve(self, mod: str, name: str) -> tuple[str, str] | None:
        if (mod, name) in self.defs:
            return (mod, name)
        origin = self.imports[mod].get(name)
        return (origin, name) if origin and (origin, name) in self.defs else None

    def spawns(self, key: tuple[str, str]) -> bool:
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = False  # a cycle adds nothing
        mod, _ = key
        func = self.defs[key]
        result = _direct(func)
        if not result:
            reached = [self._resolve(mod, n) for n in _names_used(func)]
            fixtures = [self._fixture(mod, a.arg) for a in func.args.args]
            result = any(self.spawns(k) for k in [*reached, *fixtures] if k is not None)
        self._memo[key] = result
        return result

    def _fixture(self, mod: str, name: str) -> tuple[str, str] | None:
        own = (mod, name)
        if own in self.defs and _is_fixture(self.defs[own]):
            return own
        return self.fixtures.get(name)


def collect(root: Path) -> list[tuple[str, str, bool]]:
    """(module, test function, marked cluster) of every test pytest collects in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = {}
    for marker in ("cluster", "not cluster"):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "-m", marker], cwd=root, env=env, capture_output=True, text=True)
        out[marker] = [line for line in proc.stdout.splitlines() if "::" in line]
    items = []
    for marker, lines in out.items():
        for nodeid in lines:
            path, _, rest = nodeid.partition("::")
            items.append((Path(path).stem, rest.split("[")[0], marker == "cluster"))
    return items


def measure(root: Path) -> dict[str, Counter[str]]:
    suite = Suite(root / "tests")
    table: dict[str, Counter[str]] = {}
    for mod, name, cluster in collect(root):
        row = table.setdefault(mod, Counter())
        kind = "cluster" if cluster else "normal"
        row[kind] += 1
        if suite.spawns((mod, name)):
            row[f"{kind} spawning"] += 1
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", help="a commit of this repository instead of the work tree")
    parser.add_argument("--by-file", action="store_true", help="one row per test file too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = REPO
        if args.rev:
            root = Path(tmp)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        table = measure(root)
    total: Counter[str] = sum(table.values(), Counter())
    print(f"test suite of {args.rev or 'the work tree'}")
    print(f"{'file':<24} {'tests (not cluster)':>20} {'spawning':>9} {'tests (cluster)':>16} {'spawning':>9}")
    rows = sorted(table.items()) if args.by_file else []
    for name, row in [*rows, ("all", total)]:
        print(f"{name:<24} {row['normal']:>20} {row['normal spawning']:>9} {row['cluster']:>16} "
              f"{row['cluster spawning']:>9}")


if __name__ == "__main__":
    main()
