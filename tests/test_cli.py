"""The shape of the ``hpo`` command line: every module imports alone, start-up stays light."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import hpo
import hpo.watch
from conftest import REPO

COMMANDS = {"worker", "run", "submit", "cancel", "config", "enqueue", "refine", "retrain", "doctor", "repair", "reap",
            "status", "logs", "best", "studies", "export", "plot", "report", "dashboard"}
HEAVY = ("torch", "optuna", "submitit", "pandas", "matplotlib", "optuna_dashboard")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, so nothing imported by this test session hides an import."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def _modules(package: ModuleType, prefix: str) -> list[str]:
    """Every module under ``package``; walk_packages skips a package that fails to import
    (reported through ``onerror``), so those are kept too, to fail the import below."""
    broken: list[str] = []
    names = [m.name for m in pkgutil.walk_packages(package.__path__, prefix, onerror=broken.append)]
    return names + [name for name in broken if name not in names]


def test_every_module_imports_alone() -> None:
    """An import cycle or a hidden import-order dependency fails some module imported first."""
    names = _modules(hpo, "hpo.")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(names, pool.map(lambda name: _python(f"import {name}"), names)))
    failed = {name: r.stderr.strip().splitlines()[-1:] for name, r in results.items() if r.returncode}
    assert failed == {}
    assert {"hpo.cli", "hpo.cli.workers", "hpo.cli.study", "hpo.cli.journal", "hpo.cli.watch",
            "hpo.launch.progress", "hpo.watch.status"} <= set(names)


def test_help_lists_every_command_and_imports_nothing_heavy() -> None:
    proc = _python(
        "import sys\n"
        "from hpo.cli import main\n"
        "try:\n    main(['--help'])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "0 []"
    listed = {line.split()[0] for line in proc.stdout.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == COMMANDS


def test_watch_package_holds_no_click_code() -> None:
    """hpo.watch is plain functions; its commands live in hpo.cli.watch."""
    modules = _modules(hpo.watch, "hpo.watch.")
    assert "hpo.watch.status" in modules
    proc = _python("import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('click' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_a_command_lists_its_own_options_before_the_settings() -> None:
    """``hpo export --help`` shows --out and --top first, then the ~30 settings every command takes."""
    import re
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "hpo", "export", "--help"], capture_output=True, text=True).stdout
    options = re.findall(r"^  (--[a-z-]+)", shown, re.M)
    assert options[:2] == ["--out", "--top"] and options.index("--max-trials") > 2, options
