"""What every ``hpo`` command shares: the settings flags and how flags become settings."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import click

from hpo.config.environment import environment
from hpo.config.study import StudyConfig, expand, load_all, study_names
from hpo.config.settings import FIELDS, Settings

Command = Callable[..., Any]


def settings_options(func: Command) -> Command:
    """One ``--flag`` per setting, from the same table as the environment variables."""
    for f in reversed(FIELDS):
        func = click.option(
            f.flag, f.name, default=None, metavar=f.env,
            help=f"{f.help} [env {f.env}; default {f.default}]",
        )(func)
    func = click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
                        help="a setting of the objective (see `hpo config`), e.g. --arg n_train=2000")(func)
    return click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
                        help="study config YAML [env HPO_CONFIG; default configs/physae.yaml]")(func)


def load(flags: dict[str, Any]) -> tuple[Settings, StudyConfig]:
    """Resolve settings and the study config from flags, environment and file: one study
    (of a sweep, the one ``STUDY_NAME`` names; else exit 2 naming them)."""
    from hpo.errors import UsageError

    settings, config = load_all(flags, environment())
    studies = expand(settings, config)
    if len(studies) > 1:
        raise UsageError(f"{config.path} is a sweep of {len(studies)} studies; this command takes one: give "
                         f"--study-name (STUDY_NAME); valid: {', '.join(study_names(config))}")
    return studies[0]


def load_sweep(flags: dict[str, Any]) -> tuple[Settings, StudyConfig, list[tuple[Settings, StudyConfig]]]:
    """Settings and config as resolved, and each study they select (several for a sweep)."""
    settings, config = load_all(flags, environment())
    return settings, config, expand(settings, config)
