"""The setup's key and inputs (``setup_inputs``), and the look that does not wait, in-process.

Fast: configs are loaded as the CLI loads them, no worker runs. The same through real
workers (``hpo run``) is in test_workflows.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config.study import load_launch, parse_config
from hpo.errors import UsageError
from hpo.system.lock import make_lock
from hpo.worker.setup import (CACHE_DIR, SetupBusy, check_setup_inputs, ensure_setup, options_of, setup_key,
                              setup_options)

GRID = """\
study_name: grid_{problem}_{method}
objective: objectives:uses_reference
setup: objectives:counted_setup
matrix:
  problem: [p1, p2]
  method: [a, b, c]
objective_args: {offset: 1}
space:
  x: {type: float, low: -2, high: 2}
"""


def keys(tmp_path: Path, inputs: str | None = "[problem]", offset: int = 1, **env: str) -> dict[str, str]:
    """Each study's setup key, by name, for the grid with ``setup_inputs: inputs`` (None: none)."""
    text = GRID.replace("offset: 1", f"offset: {offset}")
    if inputs is not None:
        text += f"setup_inputs: {inputs}\n"
    (tmp_path / "grid.yaml").write_text(text)
    launch = load_launch({}, {"HPO_CONFIG": str(tmp_path / "grid.yaml"), **env})
    return {s.study_name: setup_key(str(c.setup), setup_options(s, c), s.data_seed) for s, c in launch.studies}


def test_the_key_covers_the_declared_inputs_and_nothing_else(tmp_path: Path) -> None:
    got = keys(tmp_path)
    assert len({got[f"grid_p1_{m}"] for m in "abc"}) == 1 and len({got[f"grid_p2_{m}"] for m in "abc"}) == 1
    assert got["grid_p1_a"] != got["grid_p2_a"]  # a declared input changes it
    assert keys(tmp_path, offset=2) == got  # an undeclared option does not
    assert keys(tmp_path, DATA_SEED="7")["grid_p1_a"] != got["grid_p1_a"]  # DATA_SEED does
    both = keys(tmp_path, inputs="[problem, offset]")
    assert both["grid_p1_a"] == both["grid_p1_b"] != got["grid_p1_a"]
    assert keys(tmp_path, inputs="[problem, offset]", offset=2)["grid_p1_a"] != both["grid_p1_a"]


def test_without_declared_inputs_every_option_is_an_input_as_before(tmp_path: Path) -> None:
    got = keys(tmp_path, inputs=None)
    assert len(set(got.values())) == 6  # the method counts too
    launch = load_launch({}, {"HPO_CONFIG": str(tmp_path / "grid.yaml")})
    settings, config = launch.studies[0]
    assert keys(tmp_path, inputs=None, offset=2)["grid_p1_a"] != got["grid_p1_a"]
    # The key of a config without setup_inputs is the one it had before they existed: caches stay valid.
    assert got["grid_p1_a"] == setup_key("objectives:counted_setup", options_of(settings, config), settings.data_seed)
    assert setup_options(settings, config) == {"offset": 1, "problem": "p1", "method": "a"}


def test_the_setup_gets_only_its_declared_inputs(tmp_path: Path) -> None:
    keys(tmp_path, inputs="[problem]")
    launch = load_launch({}, {"HPO_CONFIG": str(tmp_path / "grid.yaml")})
    assert [setup_options(s, c) for s, c in launch.studies] == [{"problem": p} for p in ("p1",) * 3 + ("p2",) * 3]


def test_an_input_that_is_not_an_option_is_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID + "setup_inputs: [problem, n_sample]\n")
    launch = load_launch({}, {"HPO_CONFIG": str(tmp_path / "grid.yaml")})
    with pytest.raises(UsageError, match=r"grid.yaml: setup_inputs: 'n_sample' is not an option of the objective; "
                                         r"valid: method, offset, problem$"):
        check_setup_inputs(launch.settings, launch.config)  # the whole sweep, as a launch checks it
    settings, config = launch.studies[0]
    with pytest.raises(UsageError, match="'n_sample' is not an option"):
        setup_options(settings, config)  # one cell, as a worker computes it
    assert not (tmp_path / "optuna_journal").exists()


@pytest.mark.parametrize(("extra", "message"), [
    ("setup_inputs: problem\n", "setup_inputs: 'problem' is not valid; valid: a list of distinct names"),
    ("setup_inputs: [problem, problem]\n", "setup_inputs: ['problem', 'problem'] is not valid"),
    ("setup_inputs: [problem, 3]\n", "setup_inputs: ['problem', 3] is not valid"),
])
def test_setup_inputs_of_the_wrong_shape_are_refused(extra: str, message: str) -> None:
    import yaml

    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(Path("grid.yaml"), yaml.safe_load(GRID + extra))


def test_setup_inputs_without_a_setup_are_refused() -> None:
    import yaml

    raw = yaml.safe_load(GRID.replace("setup: objectives:counted_setup\n", "") + "setup_inputs: [problem]\n")
    with pytest.raises(UsageError, match="setup_inputs: \\['problem'\\] given without setup:"):
        parse_config(Path("grid.yaml"), raw)


def test_not_waiting_says_busy_while_another_holds_the_lock_then_computes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    counter = tmp_path / "runs.txt"
    monkeypatch.setenv("SETUP_COUNTER", str(counter))
    monkeypatch.setenv("SETUP_SECONDS", "0")
    keys(tmp_path)
    launch = load_launch({}, {"HPO_CONFIG": str(tmp_path / "grid.yaml")})
    settings, config = launch.studies[0]
    key = setup_key(str(config.setup), setup_options(settings, config), settings.data_seed)
    (settings.journal_dir / CACHE_DIR).mkdir(parents=True)
    with make_lock(settings.journal_dir / CACHE_DIR / key):  # another worker computing it
        with pytest.raises(SetupBusy, match=f"key {key}"):
            ensure_setup(settings, config, wait=False)
    assert not counter.exists()  # not computed while busy
    result = ensure_setup(settings, config, wait=False)
    assert result is not None and result.computed_here and result.key == key
    assert result.value == {"value": 42} and counter.read_text().count("\n") == 1  # offset is not its input
    again = ensure_setup(*launch.studies[2], wait=False)  # grid_p1_c: the same problem, read from the cache
    assert again is not None and not again.computed_here and again.key == key
