from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import optuna
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

TOY_CONFIG = """\
study_name: toy
objective: objectives:{objective}
space:
  x: {{type: float, low: -5, high: 5}}
"""


# Exports and figures at the end of a study (HPO_EXPORT_AT_END, on by default) are tested
# in test_workflows.py; elsewhere they would only add seconds to every finished study.
os.environ.setdefault("HPO_EXPORT_AT_END", "0")


SETUP = "bash scripts/setup.sh --test-services"


def missing(what: str, install: str) -> NoReturn:
    """Fail a test whose service or program is missing, saying what to install. Never a
    skip: the README's set-up (``scripts/setup.sh --test-services``) installs all of them,
    and a skip would pass silently on a machine that lacks one."""
    pytest.fail(f"{what}; install it: {install} (the README's set-up does all: {SETUP})", pytrace=False)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user would have: no hpo or SLURM variables, tests importable
    (and HPO_EXPORT_AT_END=0 unless given, see above)."""
    from hpo.config.environment import without_settings
    from hpo.physae.settings import SETTINGS as PHYSAE_SETTINGS

    env = without_settings(os.environ, PHYSAE_SETTINGS)
    env["HPO_EXPORT_AT_END"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_hpo(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def tree(root: Path) -> list[str]:
    """Every file and folder below ``root``, relative: what a refused command must leave as it found it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def load_study(journal: Path, name: str) -> optuna.Study:
    """Plain Optuna, as a user or optuna-dashboard would read the journal."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture
def toy(tmp_path: Path) -> Any:
    """A folder with a toy study config; returns a factory for (cwd, env)."""

    def make(objective: str = "quadratic", **env: str) -> tuple[Path, dict[str, str]]:
        (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective=objective))
        return tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), **env)

    return make
