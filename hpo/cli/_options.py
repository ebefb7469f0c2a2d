"""What every ``hpo`` command shares: the settings flags and how flags become a launch."""

from __future__ import annotations

from typing import Any, Callable

import click

from hpo.config.environment import environment
from hpo.config.fields import boolean
from hpo.config.settings import FIELDS, near_misses
from hpo.config.study import Launch, Study, load_launch

Command = Callable[..., Any]


def settings_options(func: Command) -> Command:
    """One ``--flag`` per setting, from the same table as the environment variables (not
    for the settings hpo's launchers give their workers)."""
    for f in reversed(FIELDS):
        if f.internal:
            continue
        if f.parse is boolean:  # a switch: --mix-budgets / --no-mix-budgets (unset: None, the other layers)
            func = click.option(f"{f.flag}/--no-{f.flag[2:]}", f.name, default=None,
                                help=f"{f.help} [env {f.env}; default {f.default}]")(func)
            continue
        func = click.option(
            f.flag, f.name, default=None, metavar=f.env,
            help=f"{f.help} [env {f.env}; default {f.default}]",
        )(func)
    func = click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
                        help="a setting of the objective (see `hpo config`), e.g. --arg n_train=2000")(func)
    return click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
                        help="study config YAML [env HPO_CONFIG; default configs/physae.yaml]")(func)


def load_sweep(flags: dict[str, Any]) -> Launch:
    """The launch the flags, the environment and the config file select: one study, or a sweep's.
    A variable that looks like a misspelt setting is named on stderr (it would be ignored)."""
    env = environment()
    launch = load_launch(flags, env)
    for name, meant in near_misses(env, launch.settings.fields()):
        click.echo(f"hpo: warning: {name} is not a setting and is ignored; did you mean {meant}?", err=True)
    return launch


def load(flags: dict[str, Any]) -> Study:
    """The one study the flags select (of a sweep, the one ``STUDY_NAME`` names; else exit 2 naming them)."""
    return load_sweep(flags).one()
