"""Settings resolution (hpo/config/settings.py) and its parsers (hpo/config/fields.py), in
process: every bound, every precedence step and every message a user reads when a value is
refused (the variable, the value, what is valid). A wrong bound or source here silently
runs a study with settings nobody asked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hpo.config import fields as F
from hpo.config import settings as S
from hpo.config.fields import Field, declared_field
from hpo.config.settings import FIELDS, Settings, StudySpec, resolve
from hpo.errors import UsageError

CONFIG = Path("configs/physae.yaml")
COUNT = Field("count", "COUNT", F.int_in(1, 9), 3, "a count")
LABEL = Field("label", "LABEL", F.text, None, "a label", fixes="A.label")


def refused(call: Any, *args: Any) -> str:
    """The message of the UsageError that ``call(*args)`` raises."""
    with pytest.raises(UsageError) as err:
        call(*args)
    return str(err.value)


def settings(env: dict[str, str] | None = None, flags: dict[str, Any] | None = None,
             config: dict[str, Any] | None = None, objective: tuple[Field, ...] = (),
             args: dict[str, Any] | None = None, source: str = "default") -> Settings:
    return resolve(flags or {}, env or {}, config or {}, CONFIG, source, objective, args)


def test_a_missing_default_config_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "default_config_path", lambda: tmp_path / "physae.yaml")
    assert refused(S.config_path, {}, {}) == (f"default config={str(tmp_path / 'physae.yaml')!r}: no such config "
                                              "file; valid: a YAML study config, e.g. configs/physae.yaml")
