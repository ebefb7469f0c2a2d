"""``hpo config``: every setting of a launch, its value and where that value came from."""

from __future__ import annotations

from hpo.config.fields import Field
from hpo.config.settings import FIELDS, Settings
from hpo.config.study import Launch, StudyConfig


def describe(launch: Launch) -> list[str]:
    """The lines ``hpo config`` prints: the config, the storage, then one row per setting
    (hpo's, the objective module's, the config's own, those hpo's launchers set), the
    fixed and sampled parameters. For a sweep, its studies, then the first one's rows."""
    settings, config = launch.studies[0]
    lines = [f"# study config: {launch.config.path} ({settings.sources['config']})"]
    if launch.config.matrix:
        lines += [f"# a sweep of {len(launch.studies)} studies ({' x '.join(n for n, _ in launch.config.matrix)}): "
                  f"{', '.join(s.study_name for s, _ in launch.studies)}",
                  "# every worker works on them in order, moving to the next study when one's MAX_TRIALS "
                  "are finished (or while all its remaining trials are running)",
                  f"# first study's settings below ({settings.study_name}); cells differ by name, "
                  "objective_args and matrix_space"]
    lines += [f"# storage: {settings.storage_label}", f"# from the environment: {settings.env_line() or 'nothing'}"]
    for heading, table in _tables(settings, config):
        if heading and table:
            lines.append(heading)
        lines += [_row(settings, f) for f in table]
    fixed = settings.fixed_params()
    sampled = ", ".join(n for n in config.space if n not in fixed)
    lines.append(f"# fixed parameters: {fixed or 'none'}; sampled: {sampled}")
    return lines


def _tables(settings: Settings, config: StudyConfig) -> list[tuple[str, tuple[Field, ...]]]:
    module = tuple(f for f in settings.objective_fields if f not in config.declared)
    arg = "flag: --arg NAME=VALUE"
    return [("", tuple(f for f in FIELDS if not f.internal)),
            (f"# the objective's own settings ({config.objective.partition(':')[0]}.SETTINGS; {arg})", module),
            (f"# the study's own settings ({config.path}: objective_settings; {arg})", config.declared),
            ("# set by hpo's launchers for their workers (hpo run, hpo submit)",
             tuple(f for f in FIELDS if f.internal))]


def _row(settings: Settings, f: Field) -> str:
    width = max(len(f.env) for f in settings.fields())
    value = settings.value(f)
    shown = "(unset)" if value is None else str(value)
    return f"{f.env:<{width}}  {shown:<24} {settings.sources[f.name]}"
