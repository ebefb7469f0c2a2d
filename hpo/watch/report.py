"""``hpo report``: one self-contained HTML page about a study, readable offline.

Figures are embedded as base64 PNG (``<img src="data:image/png;base64,...">``),
tables are inline, the style sheet is inline: no external asset, no script.
:func:`render_html` is pure; :func:`study_page` gathers its inputs from the study.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hpo.watch.status import human_seconds

if TYPE_CHECKING:
    from hpo.config.settings import Settings
    from hpo.config.study import Launch
    from hpo.journal.reader import StudyJournal

_logger = logging.getLogger(__name__)

FIGURE_TITLES = {
    "optimization_history": "Optimisation history",
    "param_importances": "Parameter importances",
    "parallel_coordinate": "Parallel coordinates",
    "slice_plot": "Objective against each parameter",
    "contour": "Contour of the two most important parameters",
    "intermediate_values": "Learning curves",
    "timeline": "Trials per worker over time",
    "pareto_front": "Pareto front",
    "user_metrics": "Metrics set by the objective",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777} .bad{color:#b00;font-weight:bold} code{background:#f4f4f4;padding:.1em .3em}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
"""


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="muted">-</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.6g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; cells escaped, numbers right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def png_img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _status_section(status: Mapping[str, Any]) -> str:
    s = status["states"]
    rows = [
        ("storage", status["storage"]),
        ("directions", ", ".join(status["directions"])),
        ("finished (COMPLETE + PRUNED) / MAX_TRIALS", f"{status['finished']} / {status['max_trials']}"),
        ("trials by state", ", ".join(f"{k} {v}" for k, v in s.items())),
        ("throughput", "-" if status["throughput_per_hour"] is None else
         f"{status['throughput_per_hour']:.3g} trials/h over the last {human_seconds(status['throughput_window_s'])}"),
        ("ETA", human_seconds(status["eta_seconds"]) if status["eta_seconds"] is not None else "unknown"),
    ]
    parts = ["<h2>Status</h2>", table([], rows)]
    if status["zombies"]:
        parts.append(f'<p class="bad">zombies (RUNNING with a heartbeat older than {status["stale_seconds"]:g}s): '
                     f'{", ".join(map(str, status["zombies"]))}</p>')
    if status["running"]:
        parts.append("<h3>Running trials</h3>")
        parts.append(table(["trial", "worker", "host", "GPU", "stage", "epoch", "step", "elapsed", "last metric",
                            "heartbeat age"],
                           [(r["number"], r["worker"], r["host"], r["gpu"], r["stage"], r["epoch"], r["step"],
                             human_seconds(r["elapsed_s"]), r["last_metric"], human_seconds(r["heartbeat_age_s"]))
                            for r in status["running"]]))
    if status["workers"]:
        parts.append("<h3>Workers</h3>")
        parts.append(table(["worker", "host", "trials", "complete", "pruned", "fail", "running", "last active (UTC)"],
                           [(w["worker"], w["host"], w["trials"], w["complete"], w["pruned"], w["fail"],
                             ", ".join(map(str, w["running"])) or None, w["last_active"]) for w in status["workers"]]))
    jobs = status["slurm"]["jobs"]
    parts.append("<h3>SLURM</h3>")
    if jobs:
        parts.append(table(["job", "state", "name", "elapsed", "nodes", "nodelist (reason)"],
                           [(j["job_id"], j["state"], j["name"], j["elapsed"], j["nodes"], j["reason"]) for j in jobs]))
    else:
        parts.append(f'<p class="muted">{html.escape(status["slurm"]["note"])}</p>')
    return "\n".join(parts)


def _best_section(best: Mapping[str, Any]) -> str:
    if best.get("best_trial_number") is None:
        return f'<h2>Best trial</h2><p class="muted">{html.escape(best.get("note", "none yet"))}</p>'
    title = "Knee of the Pareto set" if "pareto" in best else "Best trial"
    value = best["best_value"]
    shown = ", ".join(f"{v:.6g}" for v in value) if isinstance(value, list) else f"{value:.6g}"
    parts = [f"<h2>{title}</h2>", f"<p>trial <b>{best['best_trial_number']}</b>, value <b>{html.escape(shown)}</b></p>",
             table(["parameter", "value"], list(best["best_params"].items()))]
    if best.get("metrics"):
        parts.append(table(["metric", "value"], list(best["metrics"].items())))
    if best.get("env_line"):
        parts.append(f"<p>budgets ({html.escape(best['env_source'])}): "
                     f"<code>{html.escape(best['env_line'])}</code></p>")
    if "pareto" in best:
        parts.append(f"<p>{len(best['pareto'])} trials on the Pareto front; the knee is "
                     f"{html.escape(best['knee'])}.</p>")
    return "\n".join(parts)


def _page(title: str, body: Sequence[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
                      f"<h1>{html.escape(title)}</h1>", *body, "</body></html>"])


def _figure(data: bytes, caption: str) -> str:
    return f"<figure>{png_img(data, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render_html(status: Mapping[str, Any], best: Mapping[str, Any], top_columns: Sequence[str],
                top_rows: Sequence[Mapping[str, Any]], figures: Mapping[str, bytes | str]) -> str:
    """The whole page. ``figures``: PNG bytes, or the reason a figure was skipped."""
    return _page(f"hpo report: {status['study']}", study_sections(status, best, top_columns, top_rows, figures))


def study_sections(status: Mapping[str, Any], best: Mapping[str, Any], top_columns: Sequence[str],
                   top_rows: Sequence[Mapping[str, Any]], figures: Mapping[str, bytes | str]) -> list[str]:
    """One study's part of a page: status, best trial, top trials, figures."""
    parts = [
        f'<p class="muted">generated {html.escape(status["generated_at"])} from {html.escape(status["storage"])}</p>',
        _status_section(status),
        _best_section(best),
        f"<h2>Top {len(top_rows)} trials</h2>",
        table(list(top_columns), [[row.get(c) for c in top_columns] for row in top_rows]),
        "<h2>Figures</h2>",
    ]
    skipped = []
    for name, result in figures.items():
        caption = FIGURE_TITLES.get(name, name)
        if isinstance(result, bytes):
            parts.append(_figure(result, caption))
        else:
            skipped.append((caption, result))
    if skipped:
        parts.append("<h3>Figures not drawn</h3>")
        parts.append(table(["figure", "why"], skipped))
    return parts


def write_report(settings: "Settings", objective: str | None, top: int, out: Path | None = None) -> Path:
    """``hpo report``: the study's page, written atomically to ``out`` (default
    ``results/<study>/report.html``); returns its path."""
    from hpo.system.files import write_bytes_atomic

    path = out or settings.results_dir / "report.html"
    write_bytes_atomic(path, study_page(settings, objective, top).encode("utf-8"))
    return path


def study_page(settings: "Settings", objective: str | None, top: int) -> str:
    """The page of the study ``settings`` select (reads its journal, logs and, for
    status, squeue); ``objective`` picks the axis labels, ``top`` the rows of the table."""
    from hpo.watch.plots import study_figures
    from hpo.watch.status import open_view

    journal = open_view(settings)
    state, parts = _study_parts(settings, journal, study_figures(journal, objective), top)
    return _page(f"hpo report: {state['study']}", parts)


def _study_parts(settings: "Settings", journal: "StudyJournal", figures: Mapping[str, bytes | str],
                 top: int) -> tuple[dict[str, Any], list[str]]:
    """A study's status (as ``hpo status --json``) and its sections, from its journal."""
    from hpo.watch import status
    from hpo.watch.export import best_report, columns, top_trials, trial_rows

    state = status.build(status.collect(settings, journal=journal))
    best = best_report(journal, settings.as_dict(), settings.objective_fields)
    n = len(journal.study.directions)
    rows = trial_rows(top_trials(journal.trials, journal.study.directions, top), n)
    return state, study_sections(state, best, columns(journal.trials, n), rows, figures)


def write_sweep_report(launch: "Launch", top: int, out: Path | None = None) -> Path:
    """``hpo report`` on a sweep: one page (default ``results/<config>_report.html``) with the
    combined table, the figure comparing the studies, then one section per study."""
    from hpo.config.settings import RESULTS_DIR
    from hpo.system.files import write_bytes_atomic
    from hpo.watch import status
    from hpo.watch.plots import cell_label, sweep_figures

    figures = sweep_figures(launch)
    states, sections = [], []
    for settings, config in launch.studies:
        name = settings.study_name
        heading = f'<h1 id="{html.escape(name)}">{html.escape(cell_label(config.cell) or name)} ({html.escape(name)})</h1>'
        if name not in figures.studies:
            states.append(status.not_started(settings))
            sections += [heading, '<p class="muted">not started yet</p>']
            continue
        state, parts = _study_parts(settings, status.open_view(settings), figures.studies[name], top)
        states.append(state)
        sections += [heading, *parts]
    rows = status.combined_rows(states, [dict(c.cell) for _, c in launch.studies])
    shown = [c for c in (rows[0] if rows else {}) if c != "best_params"]
    body = [f'<p class="muted">{len(launch.studies)} studies of {html.escape(str(launch.config.path))}</p>',
            "<h2>The studies</h2>", table(shown, [[r[c] for c in shown] for r in rows]),
            "<h2>The studies compared</h2>"]
    body.append(_figure(figures.compare, "each study's best value so far (several objectives: its Pareto front)")
                if isinstance(figures.compare, bytes) else f'<p class="muted">{html.escape(figures.compare)}</p>')
    path = out or RESULTS_DIR / f"{launch.config.path.stem}_report.html"
    write_bytes_atomic(path, _page(f"hpo report: sweep {launch.label}", body + sections).encode("utf-8"))
    return path
