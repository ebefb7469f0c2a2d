"""``hpo plot``: the study's figures as PNG files (matplotlib with the Agg backend: no display, no browser).

Figures, each a function ``trials, context -> matplotlib Figure`` that raises
:class:`Skip` with a reason when the study cannot show it yet:

- ``optimization_history``: objective per trial and the best so far;
- ``param_importances``: Optuna's default evaluator (``PedAnovaImportanceEvaluator``
  in Optuna 5, no scikit-learn needed) on the COMPLETE trials;
- ``parallel_coordinate``: every parameter scaled to its range (log ranges in log
  space), one line per COMPLETE trial coloured by objective;
- ``slice_plot``: objective against each parameter, log x-axis for log parameters;
- ``contour``: objective over the two most important numeric parameters;
- ``intermediate_values``: learning curves, pruned trials in their own colour;
- ``timeline``: trials per worker from start to end, coloured by state (gaps = idle GPUs);
- ``pareto_front``: with several objectives, the non-dominated trials and the knee.

A sweep (``matrix:``) gets each study's figures, plus one figure comparing its studies
(:func:`compare_cells`): each study's best value so far against its trial number, or with
several objectives each study's Pareto front.

Labels come from the study's metric names when it has them, PhysAE's metric for
the PhysAE objective, else "objective value".
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from hpo.journal.reader import Distribution, TrialRecord, knee_point, pareto_front

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hpo.config.settings import Settings
    from hpo.config.study import Launch
    from hpo.journal.reader import StudyJournal

_logger = logging.getLogger(__name__)

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#7f7f7f",
                "WAITING": "#bcbd22"}
PHYSAE_OBJECTIVE_PREFIX = "hpo.physae."
PHYSAE_LABEL = "validation parameter error (RMSE, normalised)"
PHYSAE_STEP_LABEL = "global epoch (stages A, B1, B2 in sequence)"
GENERIC_STEP_LABEL = "step reported by the objective"
MAX_PARALLEL_PARAMS = 12
THIN_IMPORTANCES = 20  # fewer COMPLETE trials than this: the importances figure says they are a rough guess
DPI = 110


class Skip(Exception):
    """This figure cannot be drawn for this study (the message says why)."""


@dataclass(frozen=True)
class PlotContext:
    study: str
    directions: tuple[str, ...]  # MINIMIZE / MAXIMIZE
    labels: tuple[str, ...]  # one axis label per objective
    step_label: str

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1


def make_context(study: str, directions: Sequence[str], metric_names: Sequence[str] | None,
                 objective: str | None) -> PlotContext:
    """Axis labels: the study's metric names, PhysAE's metric, else "objective value"."""
    physae = bool(objective and objective.startswith(PHYSAE_OBJECTIVE_PREFIX))
    if metric_names and len(metric_names) == len(directions):
        names = list(metric_names)
    elif physae and len(directions) == 1:
        names = [PHYSAE_LABEL]
    elif len(directions) == 1:
        names = ["objective value"]
    else:
        names = [f"objective {i}" for i in range(len(directions))]
    labels = tuple(f"{n} ({'higher' if d.upper() == 'MAXIMIZE' else 'lower'} is better)"
                   for n, d in zip(names, directions))
    return PlotContext(study, tuple(d.upper() for d in directions), labels,
                       PHYSAE_STEP_LABEL if physae else GENERIC_STEP_LABEL)


# -- helpers ---------------------------------------------------------------------------

def _figure(width: float = 9.0, height: float = 5.0) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _complete(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [t for t in trials if t.state == "COMPLETE" and t.values]


def _value(trial: TrialRecord, index: int = 0) -> float:
    return float(trial.values[index])  # type: ignore[index]


def _wide_positive(values: Sequence[float]) -> bool:
    """Worth a log axis: all positive and spanning more than two decades."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def _distribution(trials: Sequence[TrialRecord], name: str) -> Distribution | None:
    for t in trials:
        if name in t.distributions:
            return t.distributions[name]
    return None


def _numeric(dist: Distribution | None) -> bool:
    return dist is not None and dist.choices is None


def _param_names(trials: Sequence[TrialRecord]) -> list[str]:
    return sorted({n for t in trials for n in t.params})


def _to_unit(dist: Distribution | None, value: Any, observed: Sequence[Any]) -> float:
    """A parameter value scaled to [0, 1] over its range (log space for log ranges)."""
    if dist is not None and dist.choices is not None:
        index = dist.choices.index(value) if value in dist.choices else 0
        return index / max(1, len(dist.choices) - 1)
    low = dist.low if dist is not None and dist.low is not None else min(observed)
    high = dist.high if dist is not None and dist.high is not None else max(observed)
    if dist is not None and dist.log and low > 0:
        low, high, value = math.log10(low), math.log10(high), math.log10(value)
    return 0.5 if high == low else (float(value) - low) / (high - low)


def _set_param_axis(ax: "Axes", dist: Distribution | None, axis: str = "x") -> None:
    if dist is not None and dist.log:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _param_label(name: str, dist: Distribution | None) -> str:
    return f"{name} (log scale)" if dist is not None and dist.log else name


# -- figures -----------------------------------------------------------------------------

def optimization_history(trials: Sequence[TrialRecord], ctx: PlotContext) -> "Figure":
    complete = _complete(trials)
    if not complete:
        raise Skip("no COMPLETE trial yet")
    fig = _figure(9, 4.2 * len(ctx.directions))
    for i, (direction, label) in enumerate(zip(ctx.directions, ctx.labels)):
        ax = fig.add_subplot(len(ctx.directions), 1, i + 1)
        xs, ys = [t.number for t in complete], [_value(t, i) for t in complete]
        ax.scatter(xs, ys, s=18, color=STATE_COLORS["COMPLETE"], label="COMPLETE trial", zorder=3)
        if not ctx.multi:
            pruned = [t for t in trials if t.state == "PRUNED" and t.intermediate]
            if pruned:
                ax.scatter([t.number for t in pruned], [t.intermediate[max(t.intermediate)] for t in pruned], s=18,
                           facecolors="none", edgecolors=STATE_COLORS["PRUNED"], label="PRUNED (last reported value)")
            pick = max if direction == "MAXIMIZE" else min
            best, running = [], None
            for y in ys:
                running = y if running is None else pick(running, y)
                best.append(running)
            ax.step(xs, best, where="post", color="#2ca02c", linewidth=2, label="best so far", zorder=4)
        if _wide_positive(ys):
            ax.set_yscale("log")
        ax.set_xlabel("trial number")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{ctx.study}: optimisation history ({len(complete)} COMPLETE of {len(trials)} trials)")
    return fig


def importances(trials: Sequence[TrialRecord], ctx: PlotContext, objective: int = 0) -> dict[str, float]:
    """``optuna.importance.get_param_importances`` with Optuna's default evaluator,
    on an in-memory copy of the COMPLETE trials (the journal is not opened again)."""
    import optuna

    complete = [t for t in _complete(trials) if t.params]
    if len(complete) < 2:
        raise Skip(f"needs at least 2 COMPLETE trials with parameters (has {len(complete)})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[d.lower() for d in ctx.directions])  # type: ignore[misc]
    study.add_trials([
        optuna.trial.create_trial(params=t.params, values=t.values, state=optuna.trial.TrialState.COMPLETE,
                                  distributions={k: d.to_optuna() for k, d in t.distributions.items()})
        for t in complete
    ])
    target: Callable[[Any], float] | None = (lambda ft: ft.values[objective]) if ctx.multi else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(optuna.importance.get_param_importances(study, target=target))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            raise Skip(f"importance evaluation failed: {exc}") from None


def param_importances(trials: Sequence[TrialRecord], ctx: PlotContext,
                      first: dict[str, float] | None = None) -> "Figure":
    """``first``: the importances for objective 0 when already computed."""
    results = [first if i == 0 and first is not None else importances(trials, ctx, i)
               for i in range(len(ctx.directions))]
    names = list(results[0])
    if not names:
        raise Skip("no parameter to rank")
    fig = _figure(9, max(3.0, 0.45 * len(names) + 1.5))
    ax = fig.add_subplot()
    height = 0.8 / len(results)
    order = list(reversed(names))  # most important on top
    for i, (result, label) in enumerate(zip(results, ctx.labels)):
        ys = [k + i * height for k in range(len(order))]
        ax.barh(ys, [result.get(n, 0.0) for n in order], height=height, label=f"for {label}" if ctx.multi else None)
    ax.set_yticks([k + height * (len(results) - 1) / 2 for k in range(len(order))], order)
    ax.set_xlabel("importance (share of the objective's variation; PED-ANOVA, Optuna's default)")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    if ctx.multi:
        ax.legend(fontsize="small")
    n = len(_complete(trials))
    thin = f"; only {n}: a rough guess, trust it from ~{THIN_IMPORTANCES}" if n < THIN_IMPORTANCES else ""
    fig.suptitle(f"{ctx.study}: parameter importances ({n} COMPLETE trials{thin})")
    return fig


def parallel_coordinate(trials: Sequence[TrialRecord], ctx: PlotContext,
                        order: Sequence[str] | None = None) -> "Figure":
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    complete = [t for t in _complete(trials) if t.params]
    names = [n for n in (order or _param_names(complete)) if any(n in t.params for t in complete)]
    names = names[:MAX_PARALLEL_PARAMS]
    if not complete or not names:
        raise Skip("no COMPLETE trial with parameters yet")
    values = [_value(t) for t in complete]
    vmin, vmax = min(values), max(values)
    log_objective = _wide_positive(values)
    norm = LogNorm(vmin, vmax) if log_objective else Normalize(vmin, vmax if vmax > vmin else vmin + 1)
    # Best trials darkest, and drawn last so they lie on top.
    cmap = colormaps["viridis_r" if ctx.directions[0] == "MAXIMIZE" else "viridis"]
    fig = _figure(max(9.0, 1.4 * (len(names) + 1)), 5.5)
    ax = fig.add_subplot()
    dists = {n: _distribution(complete, n) for n in names}
    observed = {n: [t.params[n] for t in complete if n in t.params] for n in names}
    ranked = sorted(complete, key=_value, reverse=ctx.directions[0] != "MAXIMIZE")
    for t in ranked:
        ys = [_to_unit(dists[n], t.params[n], observed[n]) if n in t.params else math.nan for n in names]
        ys.append(float(norm(_value(t))))
        ax.plot(range(len(names) + 1), ys, color=cmap(norm(_value(t))), alpha=0.75, linewidth=1.3)
    for k, n in enumerate(names):
        ax.axvline(k, color="black", linewidth=0.8)
        for position, text in _axis_marks(dists[n], observed[n]):
            ax.text(k + 0.03, position, text, ha="left", va="center", fontsize="x-small",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    ax.axvline(len(names), color="black", linewidth=0.8)
    for position, value in ((0.0, vmin), (1.0, vmax)):
        ax.text(len(names) + 0.03, position, f"{value:.4g}", ha="left", va="center", fontsize="x-small")
    objective_name = "objective (log scale)" if log_objective else "objective"
    ax.set_xticks(range(len(names) + 1), [*(_param_label(n, dists[n]) for n in names), objective_name],
                  rotation=30, ha="right")
    ax.set_xlim(-0.2, len(names) + 0.5)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("each axis spans its range (log ranges in log space)")
    bar = fig.colorbar(cmap_mappable(cmap, norm), ax=ax)
    bar.set_label(ctx.labels[0])
    fig.suptitle(f"{ctx.study}: parallel coordinates ({len(complete)} COMPLETE trials)")
    return fig


def _axis_marks(dist: Distribution | None, observed: Sequence[Any]) -> list[tuple[float, str]]:
    """Where to write values on a parallel-coordinate axis: every choice, or both ends."""
    if dist is not None and dist.choices is not None and len(dist.choices) <= 12:
        last = max(1, len(dist.choices) - 1)
        return [(k / last, str(c)) for k, c in enumerate(dist.choices)]
    low, high = _range_text(dist, observed)
    return [(0.0, low), (1.0, high)]


def cmap_mappable(cmap: Any, norm: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def _range_text(dist: Distribution | None, observed: Sequence[Any]) -> tuple[str, str]:
    if dist is not None and dist.choices is not None:
        return str(dist.choices[0]), str(dist.choices[-1])
    low = dist.low if dist is not None and dist.low is not None else min(observed)
    high = dist.high if dist is not None and dist.high is not None else max(observed)
    return f"{low:.3g}", f"{high:.3g}"


def slice_plot(trials: Sequence[TrialRecord], ctx: PlotContext) -> "Figure":
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    complete = [t for t in _complete(trials) if t.params]
    names = _param_names(complete)
    if not complete or not names:
        raise Skip("no COMPLETE trial with parameters yet")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(4.0 * cols + 1.0, 3.4 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    norm = Normalize(0, max(t.number for t in complete) or 1)
    values = [_value(t) for t in complete]
    mappable = None
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        dist = _distribution(complete, name)
        have = [t for t in complete if name in t.params]
        xs: list[Any] = [t.params[name] for t in have]
        if dist is not None and dist.choices is not None:
            labels = [str(c) for c in dist.choices]
            xs = [dist.choices.index(x) for x in xs]
            ax.set_xticks(range(len(labels)), labels)
        # viridis: trial 0 is as visible as the last (Blues drew it white on white)
        mappable = ax.scatter(xs, [_value(t) for t in have], c=[t.number for t in have], cmap="viridis",
                              norm=norm, edgecolors="#333333", linewidths=0.3, s=22)
        _set_param_axis(ax, dist)
        if dist is not None and dist.integer and not dist.log:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no 1.5 layers
        if _wide_positive(values):
            ax.set_yscale("log")
        ax.set_xlabel(_param_label(name, dist))
        if k % cols == 0:
            ax.set_ylabel(ctx.labels[0])
        ax.grid(alpha=0.3)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, label="trial number", shrink=0.8, ticks=MaxNLocator(integer=True))
    fig.suptitle(f"{ctx.study}: objective against each parameter ({len(complete)} COMPLETE trials)")
    return fig


def contour(trials: Sequence[TrialRecord], ctx: PlotContext, order: Sequence[str] | None = None) -> "Figure":
    complete = [t for t in _complete(trials) if t.params]
    numeric = [n for n in (order or _param_names(complete)) if _numeric(_distribution(complete, n))]
    if len(numeric) < 2:
        raise Skip(f"needs two numeric parameters (the study has {len(numeric)})")
    xname, yname = numeric[:2]
    have = [t for t in complete if xname in t.params and yname in t.params]
    xs, ys = [float(t.params[xname]) for t in have], [float(t.params[yname]) for t in have]
    zs = [_value(t) for t in have]
    if len(set(zip(xs, ys))) < 4:
        raise Skip("needs at least 4 distinct COMPLETE points to draw contours")
    fig = _figure(8, 6.5)
    ax = fig.add_subplot()
    xdist, ydist = _distribution(have, xname), _distribution(have, yname)
    # Triangulate in the space the axes show (log10 for log parameters) so contours are not skewed.
    tx = [math.log10(x) for x in xs] if xdist is not None and xdist.log else xs
    ty = [math.log10(y) for y in ys] if ydist is not None and ydist.log else ys
    log_z = _wide_positive(zs)
    try:
        from matplotlib.tri import Triangulation

        tri = Triangulation(tx, ty)
        filled = ax.tricontourf(tri, [math.log10(z) for z in zs] if log_z else zs, levels=14,
                                cmap="viridis_r" if ctx.directions[0] == "MAXIMIZE" else "viridis")
    except (ValueError, RuntimeError) as exc:
        raise Skip(f"cannot triangulate the points: {exc}") from None
    ax.scatter(tx, ty, c="white", edgecolors="black", s=18, linewidths=0.6, label="COMPLETE trial", clip_on=False)
    ax.margins(0.03)
    ax.set_xlabel(f"log10 {xname}" if xdist is not None and xdist.log else xname)
    ax.set_ylabel(f"log10 {yname}" if ydist is not None and ydist.log else yname)
    fig.colorbar(filled, ax=ax, label=f"log10 of {ctx.labels[0]}" if log_z else ctx.labels[0])
    ax.legend(loc="upper right", fontsize="small")
    fig.suptitle(f"{ctx.study}: objective over {xname} and {yname} (the two most important parameters)")
    return fig


def intermediate_values(trials: Sequence[TrialRecord], ctx: PlotContext) -> "Figure":
    curves = [t for t in trials if t.intermediate]
    if not curves:
        raise Skip("no trial reported intermediate values")
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    seen: set[str] = set()
    every: list[float] = []
    for state in ("COMPLETE", "RUNNING", "FAIL", "PRUNED"):  # pruned last: on top
        group = [t for t in curves if t.state == state]
        for t in group:
            steps = sorted(t.intermediate)
            ys = [t.intermediate[s] for s in steps]
            every += ys
            label = f"{state} ({len(group)})" if state not in seen else None
            seen.add(state)
            ax.plot(steps, ys, color=STATE_COLORS[state], alpha=0.75, linewidth=1.2, label=label,
                    marker="o" if len(steps) < 12 else None, markersize=3)
    if _wide_positive(every):
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel(ctx.step_label)
    ax.set_ylabel(ctx.labels[0].rsplit(" (", 1)[0] + " (validation, as reported)")
    ax.grid(alpha=0.3)
    ax.legend(title="trial state", fontsize="small")
    fig.suptitle(f"{ctx.study}: learning curves of {len(curves)} trials")
    return fig


def timeline(trials: Sequence[TrialRecord], ctx: PlotContext, now: datetime | None = None) -> "Figure":
    starts = {t.number: t.datetime_start for t in trials if t.start_iso and t.datetime_start is not None}
    started = [t for t in trials if t.number in starts]
    if not started:
        raise Skip("no trial has started")
    now = now or datetime.now()
    # One unit on the axis: elapsed time since the first start, in s, min or h by the span
    # (dates with an offset read "27.24 ... 27.34" on a short study).
    first = min(d for d in starts.values() if d is not None)
    span = max(((t.datetime_complete or now) - first).total_seconds() for t in started)
    unit, per = ("s", 1.0) if span < 180 else ("min", 60.0) if span < 3 * 3600 else ("h", 3600.0)
    workers = sorted({str(t.user_attrs.get("worker", "unknown")) for t in started})
    row = {w: k for k, w in enumerate(workers)}
    fig = _figure(10, max(3.0, 0.45 * len(workers) + 1.8))
    ax = fig.add_subplot()
    seen: set[str] = set()
    for t in started:
        begin = t.datetime_start
        if begin is None:
            continue
        end = t.datetime_complete or now
        left = (begin - first).total_seconds() / per
        width = max((end - begin).total_seconds() / per, 1e-6)
        label = t.state if t.state not in seen else None
        seen.add(t.state)
        ax.barh(row[str(t.user_attrs.get("worker", "unknown"))], width, left=left, height=0.7,
                color=STATE_COLORS.get(t.state, "#999999"), edgecolor="white", linewidth=0.4, label=label)
    ax.set_yticks(range(len(workers)), workers)
    ax.set_xlabel(f"{unit} since the first trial started ({first:%Y-%m-%d %H:%M:%S} local); gaps between bars "
                  "are idle workers")
    ax.set_ylabel("worker")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="trial state", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{ctx.study}: trials per worker over time ({len(started)} trials, {len(workers)} workers)")
    return fig


def pareto_plot(trials: Sequence[TrialRecord], ctx: PlotContext) -> "Figure":
    if not ctx.multi:
        raise Skip("the study has one objective")
    complete = _complete(trials)
    front = pareto_front(complete, ctx.directions)
    if not front:
        raise Skip("no COMPLETE trial yet")
    knee = knee_point(front, ctx.directions)
    fig = _figure(8, 6.5)
    ax = fig.add_subplot()
    ax.scatter([_value(t, 0) for t in complete], [_value(t, 1) for t in complete], s=16, color="#bbbbbb",
               label="COMPLETE trial")
    ordered = sorted(front, key=lambda t: _value(t, 0))
    ax.plot([_value(t, 0) for t in ordered], [_value(t, 1) for t in ordered], "o-", color="#d62728", markersize=5,
            label=f"Pareto front ({len(front)})")
    if knee is not None:
        ax.scatter([_value(knee, 0)], [_value(knee, 1)], marker="*", s=260, color="gold", edgecolors="black",
                   zorder=5, label=f"knee: trial {knee.number}")
    ax.set_xlabel(ctx.labels[0])
    ax.set_ylabel(ctx.labels[1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    extra = f" (first two of {len(ctx.directions)} objectives)" if len(ctx.directions) > 2 else ""
    fig.suptitle(f"{ctx.study}: Pareto front{extra}")
    return fig


def user_metrics(trials: Sequence[TrialRecord], ctx: PlotContext) -> "Figure":
    """Each numeric metric an objective set (``ctx.set_user_attr``) against the first
    objective, one panel per metric, over COMPLETE trials."""
    from hpo.worker.context import objective_attrs

    complete = _complete(trials)
    keys = sorted({k for t in complete for k, v in objective_attrs(t.user_attrs).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    if not keys:
        raise Skip("no numeric metric set by the objective (ctx.set_user_attr)")
    keys = keys[:6]
    fig = _figure(4.0 * len(keys), 4.0)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        shown = [t for t in complete if isinstance(t.user_attrs.get(key), (int, float))]
        ax.scatter([t.user_attrs[key] for t in shown], [_value(t) for t in shown], s=14, color="#1f77b4")
        ax.set_xlabel(key)
        ax.set_ylabel(ctx.labels[0])
        ax.grid(alpha=0.3)
    fig.suptitle(f"{ctx.study}: metrics set by the objective")
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[..., "Figure"]] = {
    "optimization_history": optimization_history,
    "param_importances": param_importances,
    "parallel_coordinate": parallel_coordinate,
    "slice_plot": slice_plot,
    "contour": contour,
    "intermediate_values": intermediate_values,
    "timeline": timeline,
    "pareto_front": pareto_plot,
    "user_metrics": user_metrics,
}


def cell_label(cell: Mapping[str, Any]) -> str:
    """A sweep cell as a legend entry: ``problem=a method=sgld``."""
    return " ".join(f"{k}={v}" for k, v in cell.items())


def compare_cells(cells: Sequence[tuple[str, Sequence[TrialRecord]]], ctx: PlotContext) -> "Figure":
    """A sweep's studies side by side (``cells``: label, trials): one objective, each study's
    best value so far against its trial number (seed 003's convergence plot); several, each
    study's Pareto front over the first two objectives."""
    drawn = [(label, _complete(trials)) for label, trials in cells]
    drawn = [(label, done) for label, done in drawn if done]
    if not drawn:
        raise Skip("no study of the sweep has a COMPLETE trial yet")
    fig = _figure(9, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    pick = max if ctx.directions[0] == "MAXIMIZE" else min
    for label, done in drawn:
        if ctx.multi:
            front = sorted(pareto_front(done, ctx.directions), key=lambda t: _value(t, 0))
            ax.plot([_value(t, 0) for t in front], [_value(t, 1) for t in front], marker="o", label=label)
            continue
        best, running = [], None
        for t in done:
            running = _value(t) if running is None else pick(running, _value(t))
            best.append(running)
        ax.step([t.number for t in done], best, where="post", linewidth=2, label=label)
    ax.set_xlabel(ctx.labels[0] if ctx.multi else "trial number")
    ax.set_ylabel(ctx.labels[1] if ctx.multi else f"best so far: {ctx.labels[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    what = "Pareto fronts" if ctx.multi else "best value so far"
    fig.suptitle(f"{ctx.study}: {len(drawn)} studies compared ({what})")
    return fig


def png_bytes(fig: "Figure") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def make_figures(trials: Sequence[TrialRecord], ctx: PlotContext) -> dict[str, bytes | str]:
    """Every figure as PNG bytes, or the reason (a str) it was skipped."""
    import matplotlib

    matplotlib.use("Agg")  # no display: safe on login nodes and in jobs
    out: dict[str, bytes | str] = {}
    ranked: dict[str, float] | None = None
    try:
        ranked = importances(trials, ctx)
    except Skip:
        pass
    order = sorted(ranked, key=lambda n: -ranked[n]) if ranked else None
    extra: dict[str, tuple[Any, ...]] = {"parallel_coordinate": (order,), "contour": (order,),
                                         "param_importances": (ranked,)}
    for name, draw in FIGURES.items():
        try:
            out[name] = png_bytes(draw(trials, ctx, *extra.get(name, ())))
        except Skip as reason:
            out[name] = str(reason)
    return out


def study_figures(journal: "StudyJournal", objective: str | None) -> dict[str, bytes | str]:
    """Every figure of the study (see :func:`make_figures`); ``objective`` picks the axis labels."""
    journal.decode()
    ctx = make_context(journal.study.name, journal.study.directions, journal.study.metric_names, objective)
    return make_figures(journal.trials, ctx)


def plot_study(settings: "Settings", objective: str | None, out: Path | None = None
               ) -> tuple[list[Path], dict[str, str]]:
    """``hpo plot``: every figure of the study as a PNG in ``out`` (default
    ``results/<study>/figures``); the files, and the figures skipped with why."""
    from hpo.watch.status import open_view

    return write_figures(study_figures(open_view(settings), objective), out or settings.results_dir / "figures")


@dataclass(frozen=True)
class SweepFigures:
    """A sweep's figures: each started study's, and the comparison of all of them."""

    studies: dict[str, dict[str, bytes | str]]  # study name -> its figures (bytes, or why skipped)
    not_started: tuple[str, ...]
    compare: bytes | str  # compare_cells's PNG, or why it was skipped


def sweep_figures(launch: "Launch") -> SweepFigures:
    """Every study's figures (:func:`study_figures`) and the one comparing them."""
    import matplotlib

    from hpo.watch.status import open_view, started

    matplotlib.use("Agg")
    per_study: dict[str, dict[str, bytes | str]] = {}
    cells: list[tuple[str, Sequence[TrialRecord]]] = []
    waiting: list[str] = []
    ctx: PlotContext | None = None
    for settings, config in launch.studies:
        if not started(settings):
            waiting.append(settings.study_name)
            continue
        journal = open_view(settings)
        per_study[settings.study_name] = study_figures(journal, config.objective)  # decodes every trial
        cells.append((cell_label(config.cell) or settings.study_name, journal.trials))
        ctx = ctx or make_context(launch.label, journal.study.directions, journal.study.metric_names,
                                  config.objective)
    compare: bytes | str = "no study of the sweep has started yet"
    if ctx is not None:
        try:
            compare = png_bytes(compare_cells(cells, ctx))
        except Skip as reason:
            compare = str(reason)
    return SweepFigures(per_study, tuple(waiting), compare)


def plot_sweep(launch: "Launch", out: Path | None = None) -> tuple[list[Path], dict[str, str]]:
    """``hpo plot`` on a sweep: each study's figures into ``results/<study>/figures`` (with
    ``out``: ``out/<study>/``), and ``<config>_compare.png`` beside them (``results/``, or ``out``)."""
    from hpo.config.settings import RESULTS_DIR

    figures = sweep_figures(launch)
    written: list[Path] = []
    skipped = {name: "not started yet" for name in figures.not_started}
    for settings, _ in launch.studies:
        name = settings.study_name
        if name in figures.studies:
            done, why = write_figures(figures.studies[name], out / name if out else settings.results_dir / "figures")
            written += done
            skipped.update({f"{name}: {figure}": reason for figure, reason in why.items()})
    stem = f"{launch.config.path.stem}_compare"
    done, why = write_figures({stem: figures.compare}, out or RESULTS_DIR)
    skipped.update(why)
    return written + done, skipped


def write_figures(figures: dict[str, bytes | str], out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Write the PNGs into ``out_dir``; returns the files and the skipped figures with reasons."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name, result in figures.items():
        if isinstance(result, bytes):
            path = out_dir / f"{name}.png"
            path.write_bytes(result)
            written.append(path)
        else:
            skipped[name] = result
    return written, skipped
