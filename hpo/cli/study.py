"""``hpo config``, ``enqueue``, ``refine``: the study's settings, queue and search space."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpo.cli._options import load, load_sweep, settings_options
from hpo.config.settings import FIELDS, Settings

if TYPE_CHECKING:
    from hpo.journal.reader import StudyJournal


@click.command("config")
@settings_options
@click.option("--record-job", "record_job", default=None, metavar="JOB_ID",
              help="append JOB_ID to the study's jobs file (what the sbatch scripts call) and print nothing else")
def config_cmd(record_job: str | None, **flags: Any) -> None:
    """Print the effective settings and where each value came from."""
    settings, config, studies = load_sweep(flags)
    if record_job is not None:
        from hpo.system.slurm import record_jobs

        for cell_settings, _ in studies:  # a sweep's job works on each of its studies
            record_jobs(cell_settings.jobs_path, [record_job])
        return
    click.echo(f"# study config: {config.path} ({settings.sources['config']})")
    if config.matrix:
        click.echo(f"# a sweep of {len(studies)} studies ({' x '.join(n for n, _ in config.matrix)}): "
                   f"{', '.join(s.study_name for s, _ in studies)}")
        click.echo("# every worker works on them in order, moving to the next study when one's MAX_TRIALS "
                   "are finished (or while all its remaining trials are running)")
        settings, config = studies[0]
        click.echo(f"# first study's settings below ({settings.study_name}); cells differ by name, "
                   "objective_args and matrix_space")
    click.echo(f"# storage: {settings.storage_label}")
    click.echo(f"# from the environment: {settings.env_line() or 'nothing'}")
    width = max(len(f.env) for f in settings.fields())
    module = tuple(f for f in settings.objective_fields if f not in config.declared)
    for heading, table in (("", FIELDS),
                           (f"# the objective's own settings ({config.objective.partition(':')[0]}.SETTINGS; "
                            "flag: --arg NAME=VALUE)", module),
                           (f"# the study's own settings ({config.path}: objective_settings; flag: --arg NAME=VALUE)",
                            config.declared)):
        if heading and table:
            click.echo(heading)
        for f in table:
            value = settings.value(f)
            shown = "(unset)" if value is None else str(value)
            click.echo(f"{f.env:<{width}}  {shown:<24} {settings.sources[f.name]}")
    fixed = settings.fixed_params()
    click.echo(f"# fixed parameters: {fixed or 'none'}; sampled: "
               f"{', '.join(n for n in config.space if n not in fixed)}")


def _other_study(settings: Settings, name: str) -> "StudyJournal":
    """Another study in the same storage, every trial decoded (read-only)."""
    import dataclasses

    from hpo.errors import UsageError
    from hpo.study.storage import open_storage
    from hpo.watch.status import open_view

    other = dataclasses.replace(settings, study_name=name)
    names = [s.study_name for s in open_storage(other).get_all_studies()]
    if name not in names:
        raise UsageError(f"--from-study {name!r}: no such study in {settings.storage_label if settings.storage else settings.journal_dir}; "
                         f"existing: {', '.join(names) or 'none'}")
    return open_view(other).decode()


@click.command("enqueue")
@settings_options
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--from-study", default=None, help="take the best trials of this study (same storage)")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="how many, with --from-study")
def enqueue_cmd(file: str | None, from_study: str | None, top: int, **flags: Any) -> int:
    """Put parameter sets (a JSON/YAML FILE, or another study's top trials) first in line."""
    from hpo.errors import UsageError
    from hpo.study.shared import open_study
    from hpo.config.space import check_param_set
    from hpo.watch.export import top_trials
    from hpo.study.warmstart import read_param_sets

    settings, config = load(flags)
    if (file is None) == (from_study is None):
        raise UsageError("give a FILE of parameter sets or --from-study NAME (one of them)")
    if file is not None:
        sets, origin = read_param_sets(Path(file)), f"file {file}"
    elif from_study is not None:
        other = _other_study(settings, from_study)
        best = top_trials(other.trials, other.study.directions, top)  # several objectives: the knee first
        sets, origin = [dict(t.params) for t in best], f"study {from_study} (top {top})"
    checked = [check_param_set(config.space, params, f"{origin}[{i}]") for i, params in enumerate(sets)]
    # A study this creates gets no warm start from the config: the sets given here run first.
    shared = open_study(settings, config, warm_start=False)
    for params in checked:
        shared.study.enqueue_trial(params, user_attrs={"origin": f"enqueued from {origin}"})
    click.echo(f"enqueued {len(checked)} trial(s) from {origin} into study {settings.study_name!r}")
    return 0


@click.command("refine")
@settings_options
@click.option("--from", "source", required=True, help="the finished study to refine around")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="best trials the ranges cover")
@click.option("--factor", type=click.FloatRange(1.0, min_open=True), default=2.0, show_default=True,
              help="log-scale parameters: [min/factor, max*factor] of the best trials")
@click.option("--fraction", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True,
              help="other parameters: padded by this fraction of their range")
def refine_cmd(source: str, top: int, factor: float, fraction: float, **flags: Any) -> int:
    """Create a study narrowed around the best trials of another (CODES's fine stage)."""
    import dataclasses

    import yaml

    from hpo.config.study import cells, load_config, parse_config, single_study_text
    from hpo.errors import UsageError
    from hpo.study.provenance import stored_config_path
    from hpo.study.shared import open_study
    from hpo.system.files import write_bytes_atomic
    from hpo.watch.export import top_trials
    from hpo.study.warmstart import dumps_summary, refine_space, refined_config

    settings, config = load(flags)
    new_name = settings.study_name if settings.sources["study_name"] == "flag" or \
        settings.sources["study_name"].startswith("env:") else f"{source}_fine"
    if new_name == source:
        raise UsageError(f"STUDY_NAME={new_name!r} is the study refined from; give the new study another name")
    source_settings = dataclasses.replace(settings, study_name=source)
    stored = stored_config_path(source_settings)
    source_config = load_config(stored) if stored.is_file() else config
    if source_config.matrix:  # a sweep's study: refine from that study's own config
        source_config = next((c for c in cells(source_config) if c.settings["study_name"] == source), source_config)
        source_config = dataclasses.replace(source_config, text=single_study_text(source_config))
    other = _other_study(settings, source)
    # Several objectives: the knee of the Pareto set, the rest of the set, then the others.
    best = top_trials(other.trials, other.study.directions, top)
    if not best:
        raise UsageError(f"--from {source!r}: the study has no COMPLETE trial to refine around")
    new_space, summary, budget = refine_space(source_config.space, [t.params for t in best], factor, fraction)
    new_settings = dataclasses.replace(settings, study_name=new_name, max_trials=budget)
    path = stored_config_path(new_settings)
    if path.exists():
        raise UsageError(f"study {new_name!r} already has a config ({path}); choose another STUDY_NAME")
    text = refined_config(source_config.text, new_name, new_space, budget, best[0].params)
    new_config = dataclasses.replace(parse_config(path, yaml.safe_load(text)), text=text)
    write_bytes_atomic(path, text.encode())
    write_bytes_atomic(path.with_name("fine_summary.yaml"), dumps_summary(source, summary, budget, best[0].params).encode())
    open_study(dataclasses.replace(new_settings, config=path), new_config)  # creates it, best trial enqueued first
    click.echo(f"study {new_name!r}: {len(summary)} parameter(s) narrowed around the top {len(best)} trial(s) of "
               f"{source!r}; budget {budget} trials; ranges in {path.with_name('fine_summary.yaml')}")
    click.echo(f"run it: hpo run --config {path}")
    return 0




@click.command("retrain")
@settings_options
@click.option("--to", "to", default=None, metavar="NAME", help="the new study [default: <study>-retrain]")
@click.option("--trial", "number", type=click.IntRange(0), default=None,
              help="retrain this trial [default: the best one; with several objectives the knee]")
def retrain_cmd(to: str | None, number: int | None, **flags: Any) -> int:
    """Train the best trial's parameters once more, with its own budgets, as trial 0 of a new study."""
    import dataclasses

    from hpo.errors import UsageError
    from hpo.launch.local import run_local
    from hpo.config.settings import parse_study_name
    from hpo.study.storage import open_storage
    from hpo.study.shared import open_study
    from hpo.watch.export import choose_best, run_settings
    from hpo.watch.status import open_view

    from hpo.config.environment import environment
    from hpo.cli.workers import check_runnable

    settings, config = load(flags)
    journal = open_view(settings)
    if number is None:
        trial = choose_best(journal).trial
        if trial is None:
            raise UsageError(f"study {settings.study_name!r} has no COMPLETE trial to retrain")
    else:
        if number >= len(journal.trials):
            raise UsageError(f"--trial {number}: study {settings.study_name!r} has trials 0-{len(journal.trials) - 1}")
        journal.decode([number])
        trial = journal.trials[number]
    name = parse_study_name("--to", to or f"{settings.study_name}-retrain")
    storage = open_storage(dataclasses.replace(settings, study_name=name))
    if name in [s.study_name for s in storage.get_all_studies()]:
        raise UsageError(f"--to {name!r}: that study exists already; valid: a new study name")
    # The trial's own budgets (N_TRAIN, stage epochs ...): its settings.json, else today's settings.
    ran_with = run_settings(trial) or {}
    objective = {f.name: ran_with.get(f.name, settings.objective.get(f.name)) for f in settings.objective_fields}
    new = dataclasses.replace(settings, study_name=name, max_trials=1, trials_per_worker=None, objective=objective)
    if config.cell:  # one study of a sweep: the new study gets that study's own config
        from hpo.config.study import load_config, single_study_text
        from hpo.study.provenance import stored_config_path
        from hpo.system.files import write_bytes_atomic

        path = stored_config_path(new)
        write_bytes_atomic(path, single_study_text(config, name).encode())
        config = load_config(path)
        new = dataclasses.replace(new, config=path)
    check_runnable(new, config)
    shared = open_study(new, config, warm_start=False)  # no warm start: trial 0 is this one
    shared.study.enqueue_trial(dict(trial.params), user_attrs={
        "origin": f"retrain of study {settings.study_name!r} trial {trial.number}"})
    click.echo(f"retraining trial {trial.number} of {settings.study_name!r} (values {trial.values}) as trial 0 of "
               f"{name!r}, budgets from {'its settings.json' if ran_with else 'the current settings'}")
    code = run_local(new, config, 1, environment())
    again = open_view(new)
    if again.trials:
        again.decode([0])
        result = again.trials[0]
        click.echo(f"{name!r} trial 0: {result.state} values {result.values}; run directory "
                   f"{result.user_attrs.get('run_dir')}")
    return code


COMMANDS = (config_cmd, enqueue_cmd, refine_cmd, retrain_cmd)
