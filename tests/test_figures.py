"""Figures as a person reads them (issue 22): checked on the figure objects, from literal
trials: integer ticks for an integer parameter, trial 0 visible, one time unit on the
timeline, a note on importances drawn from few trials."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from hpo.journal.reader import Distribution, TrialRecord  # noqa: E402
from hpo.watch import plots  # noqa: E402

LAYERS = Distribution("IntDistribution", 1, 2, step=1)
LR = Distribution("FloatDistribution", 1e-4, 1e-1, log=True)


def _trials(n: int) -> list[TrialRecord]:
    return [TrialRecord(i, i, "COMPLETE", [float((i % 4) + 1) * 0.1 + i * 0.01], {"layers": (i % 2) + 1,
                        "lr": 10 ** (-1 - (i % 3))}, {"layers": LAYERS, "lr": LR}, {"worker": f"w{i % 2}"},
                        start_iso=f"2026-01-01T00:00:{2 * i:02d}.000000+00:00",
                        complete_iso=f"2026-01-01T00:00:{2 * i + 1:02d}.500000+00:00", detailed=True)
            for i in range(n)]


CTX = plots.make_context("s", ["MINIMIZE"], None, None)


def test_slice_plot_has_whole_ticks_for_an_integer_parameter_and_shows_trial_0() -> None:
    fig = plots.slice_plot(_trials(8), CTX)
    fig.canvas.draw()
    layers = next(ax for ax in fig.axes if ax.get_xlabel() == "layers")
    ticks = [t for t in layers.get_xticks() if 1 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    points = layers.collections[0]
    rgba = points.to_rgba(points.get_array())[0]  # trial 0's colour: not (near) white on white
    assert min(rgba[:3]) < 0.6, rgba


def test_the_timeline_has_one_time_unit_since_the_first_start() -> None:
    fig = plots.timeline(_trials(6), CTX)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("s since the first trial started")
    lefts = sorted(bar.get_x() for bar in ax.patches)
    assert lefts[0] == 0.0 and max(lefts) == 10.0  # seconds from the first start, not day numbers


def test_importances_from_few_trials_say_so() -> None:
    few = plots.param_importances(_trials(6), CTX)
    assert "only 6: a rough guess" in few._suptitle.get_text()  # type: ignore[union-attr]
    many = plots.param_importances(_trials(24), CTX)
    assert "rough guess" not in many._suptitle.get_text()  # type: ignore[union-attr]
