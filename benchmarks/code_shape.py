"""The shape of the hpo package, as a table: modules, the five biggest, import cycles
(imports inside functions and under TYPE_CHECKING included) and functions over 40 lines.

    python benchmarks/code_shape.py            # this checkout
    python benchmarks/code_shape.py --rev REV  # a commit of this repository (git show)

Results before and after the restructure are in docs/architecture.md ("The shape, measured").
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_layers import cycles, imported  # noqa: E402  (the layer test's import graph and cycle finder)


def sources(rev: str | None) -> dict[str, str]:
    """Module name -> source of every module of hpo/, in the work tree or at ``rev``."""
    if rev is None:
        paths = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "hpo").rglob("*.py"))
        read = lambda p: (REPO / p).read_text()  # noqa: E731
    else:
        listing = subprocess.run(["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", rev, "hpo"],
                                 capture_output=True, text=True, check=True).stdout.split()
        paths = [p for p in listing if p.endswith(".py")]
        read = lambda p: subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{p}"],  # noqa: E731
                                        capture_output=True, text=True, check=True).stdout
    return {p.removesuffix(".py").replace("/", "."): read(p) for p in paths}


def module_name(key: str) -> str:
    return key.removesuffix(".__init__")


def graph(files: dict[str, str]) -> dict[str, set[str]]:
    known = {module_name(k) for k in files}
    return {module_name(k): imported(module_name(k), text, k.endswith(".__init__"), known) for k, text in files.items()}


def long_functions(src: dict[str, str], limit: int = 40) -> list[tuple[int, str]]:
    found = []
    for name, text in src.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found.append((length, f"{name}.{node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=None, help="a commit (default: the work tree)")
    files = sources(parser.parse_args().rev)
    src = {module_name(k): t for k, t in files.items()}
    sizes = sorted(((len(t.splitlines()), n) for n, t in src.items()), reverse=True)
    top_level = sum(1 for k in files if k.count(".") == 1 and k not in ("hpo.__init__", "hpo.__main__"))
    found = cycles(graph(files))
    long = long_functions(src)
    print("| measure | value |\n|---|---|")
    print(f"| modules (top-level modules of hpo/) | {len(src)} ({top_level}) |")
    print(f"| lines | {sum(s for s, _ in sizes)} |")
    print(f"| five biggest modules | {', '.join(f'`{n}` {s}' for s, n in sizes[:5])} |")
    print(f"| import cycles | {len(found)}{': ' if found else ''}{'; '.join(' <-> '.join(c) for c in found)} |")
    print(f"| functions over 40 lines | {len(long)}: {', '.join(f'`{n}` {l}' for l, n in long)} |")


if __name__ == "__main__":
    main()
