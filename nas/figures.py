"""The report's plotly figures, each computed in Python from `StudyView`s. plotly renders hover
text as HTML, so genome strings are escaped for it here.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from optuna.trial import FrozenTrial
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from nas import reference
from nas.families import FAMILIES
from nas.spaces import Genome
from nas.study import failure_reason
from nas.study_view import COLORS, StudyView, budget_str, by_series, count_str, pct, trial_label

TOP_CURVES = 5  # learning curves drawn per budget
SERIES_COLORS = qualitative.Dark24  # one per best-per-budget curve


def genome_coords(genome_json: str) -> dict[str, int]:
    """A genome's genes as named integer coordinates (per-stage genes become name1..nameS),
    in its family's gene order, like `Space.coords`, so plots list stem, depth, width, ..."""
    g = Genome.from_json(genome_json)
    return FAMILIES[g.family].named_genes(g)


def pareto_front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points no other point beats with at most as many parameters."""
    front: list[tuple[int, float]] = []
    for params, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((params, acc))
    return front


def _percent_axis(title: str) -> dict[str, Any]:
    return {"title": title, "ticksuffix": "%", "rangemode": "tozero"}


def _integer_axis(fig: go.Figure, last: int, **kwargs: Any) -> None:
    """Trial numbers, epochs and steps are integers: no ticks at 1.5."""
    fig.update_xaxes(tick0=0, dtick=max(1, math.ceil(last / 10)), **kwargs)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        hoverlabel={"align": "left"},
    )
    return fig


def fig_accuracy_vs_params(studies: list[StudyView]) -> go.Figure:
    """All trials, the best per budget, the Pareto frontier, the final winners, the references."""
    fig = go.Figure()
    placed = _add_trial_traces(fig, studies)
    front = pareto_front(placed)
    if front:
        fig.add_trace(
            go.Scatter(
                x=[p for p, _ in front],
                y=[100 * a for _, a in front],
                mode="lines",
                line_shape="hv",
                name="Pareto frontier (all trials)",
                line={"color": "#444", "width": 1.5},
            )
        )
    for i, (series, members) in enumerate(by_series(studies).items()):
        _add_best_trace(fig, series, members, SERIES_COLORS[i % len(SERIES_COLORS)])
        _add_winner_traces(fig, series, members)
        _add_noise_trace(fig, series, members)
    _add_reference_traces(fig)
    top = 1.1 * max(y for t in fig.data for y in t.y if y is not None)
    _add_budget_guides(fig, sorted({s.budget for s in studies if s.budget}), top)
    fig.update_xaxes(type="log", title="parameters (log scale)")
    fig.update_yaxes(**_percent_axis("CIFAR-100 accuracy"), range=[0, top])
    return _layout(fig, "Accuracy vs parameters", 620)


def _add_trial_traces(fig: go.Figure, studies: list[StudyView]) -> list[tuple[int, float]]:
    """Every completed trial, one trace per study; returns their (params, score) points."""
    several = len({s.series for s in studies}) > 1  # then a budget alone does not say which study
    placed = []
    for s in studies:
        trials = [t for t in s.complete if t.user_attrs.get("params")]
        placed += [(t.user_attrs["params"], t.value) for t in trials]
        if trials:
            fig.add_trace(
                go.Scatter(
                    x=[t.user_attrs["params"] for t in trials],
                    y=[100 * t.value for t in trials],
                    mode="markers",
                    name=f"{budget_str(s.budget)} trials" + (f" ({s.series})" if several else ""),
                    legendgroup=s.name,
                    marker={"color": s.color, "size": 6, "opacity": 0.45},
                    hovertext=[trial_label(t) for t in trials],
                    hoverinfo="text",
                )
            )
    return placed


def _add_best_trace(fig: go.Figure, series: str, members: list[StudyView], color: str) -> None:
    """The best trial's search score per budget of one series, joined."""
    best = [(s, s.best) for s in members if s.best and s.best.user_attrs.get("params")]
    if best:
        fig.add_trace(
            go.Scatter(
                x=[b.user_attrs["params"] for _, b in best],
                y=[100 * b.value for _, b in best],
                mode="lines+markers",
                name=f"{series}: best per budget (search score)",
                marker={"size": 9, "color": [s.color for s, _ in best]},
                line={"color": color},
                hovertext=[f"{html.escape(s.name)}<br>{trial_label(b)}" for s, b in best],
                hoverinfo="text",
            )
        )


def _add_winner_traces(fig: go.Figure, series: str, members: list[StudyView]) -> None:
    """The final-trained winners' test accuracy per budget, and the power law fitted to them."""
    finals = [(s, s.final) for s in members if s.final and s.final.get("test_acc") is not None]
    if not finals:
        return
    fig.add_trace(
        go.Scatter(
            x=[f["params"] for _, f in finals],
            y=[100 * f["test_acc"] for _, f in finals],
            mode="lines+markers",
            name=f"{series}: winners, final test acc",
            marker={"symbol": "star", "size": 14, "color": "#d62728"},
            line={"color": "#d62728", "dash": "dot"},
            hovertext=[
                f"{html.escape(s.name)}<br>{html.escape(str(f.get('genome_str', '?')))}"
                f"<br>{count_str(f['params'])} params<br>test {pct(f['test_acc'])}"
                for s, f in finals
            ],
            hoverinfo="text",
        )
    )
    fit = scaling_fit([(f["params"], f["test_acc"]) for _, f in finals])
    if fit is not None:
        xs = [min(f["params"] for _, f in finals) * 10 ** (k / 20) for k in range(0, 201)]
        xs = [x for x in xs if x <= max(f["params"] for _, f in finals) * 1.5]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[100 * fit.accuracy(x) for x in xs],
                mode="lines",
                name=f"{series}: fit error = {fit.a:.3g}·N^-{fit.alpha:.3f}",
                line={"color": "#d62728", "width": 1},
                hoverinfo="skip",
            )
        )


def _add_noise_trace(fig: go.Figure, series: str, members: list[StudyView]) -> None:
    """±2σ of the search score around each budget's best: differences inside it may be seed luck."""
    sig = [
        (s.best.user_attrs["params"], 100 * s.best.value, 100 * s.sigma)
        for s in members
        if s.best and s.sigma is not None and s.best.user_attrs.get("params")
    ]
    if sig:
        fig.add_trace(
            go.Scatter(
                x=[p for p, _, _ in sig],
                y=[v for _, v, _ in sig],
                mode="markers",
                error_y={"type": "data", "array": [2 * e for _, _, e in sig], "visible": True},
                marker={"size": 1, "color": "#555"},
                name=f"{series}: ±2σ seed-to-seed (search score)",
                hoverinfo="skip",
            )
        )


def _add_budget_guides(fig: go.Figure, budgets: list[int], top: float) -> None:
    """The budgets as vertical guides: a point right of its line broke the budget."""
    if budgets:
        fig.add_trace(
            go.Scatter(
                x=[x for b in budgets for x in (b, b, None)],
                y=[y for _ in budgets for y in (0, top, None)],
                mode="lines",
                name="budgets",
                hoverinfo="skip",
                line={"color": "#bbb", "dash": "dot", "width": 1},
            )
        )


@dataclass(frozen=True)
class ScalingFit:
    """error(N) = a * N^-alpha, fitted to (params, test accuracy) points."""

    a: float
    alpha: float

    def accuracy(self, params: float) -> float:
        return 1 - self.a * params**-self.alpha


def scaling_fit(points: list[tuple[int, float]]) -> ScalingFit | None:
    """Least squares of error = a * N^-alpha (scipy), or None with fewer than 3 points or no fit."""
    import numpy as np
    from scipy.optimize import curve_fit

    pts = [(p, a) for p, a in points if p and a is not None and 0 < a < 1]
    if len({p for p, _ in pts}) < 3:
        return None
    n = np.array([p for p, _ in pts], dtype=float)
    err = np.array([1 - a for _, a in pts])
    try:
        # start from the log-log line, then fit the error itself (not its log) so each point counts
        slope, icept = np.polyfit(np.log(n), np.log(err), 1)
        (a, alpha), _ = curve_fit(
            lambda x, a, alpha: a * x**-alpha, n, err, p0=(math.exp(icept), -slope), maxfev=10_000
        )
    except (RuntimeError, ValueError, TypeError):
        return None
    return ScalingFit(float(a), float(alpha)) if math.isfinite(a) and math.isfinite(alpha) else None


def fig_search_added(studies: list[StudyView]) -> go.Figure | None:
    """Per budget, test accuracy of the winner, the hand design, the ResNet shape and the reference
    model, trained for the same epochs (each baseline with its own family's recipe): what the
    search added over a person's pick."""
    rows = [s for s in studies if s.final and s.final.get("test_acc") is not None]
    if not rows:
        return None
    fig = go.Figure()
    labels = [budget_str(s.budget) for s in rows]
    for key, name, color in (
        ("final", "search winner", "#d62728"),
        ("hand", "hand design", "#1f77b4"),
        ("resnet", "ResNet shape", "#2ca02c"),
        ("seed", "reference study's model", "#7f7f7f"),
    ):
        recs = [s.final if key == "final" else s.baselines.get(key) for s in rows]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[100 * r["test_acc"] if r and r.get("test_acc") is not None else None for r in recs],
                name=name,
                marker_color=color,
                hovertext=[html.escape(str(r.get("genome_str"))) if r else "" for r in recs],
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="budget")
    fig.update_yaxes(**_percent_axis("test accuracy (same epochs)"))
    return _layout(fig, "What search added", 420)


def stage_shape(genome_json: str) -> tuple[list[int], list[int]]:
    """(widths, depths) per stage of a genome, for comparing shapes across budgets."""
    g = Genome.from_json(genome_json)
    return FAMILIES[g.family].stage_shape(g)


def fig_winner_shapes(studies: list[StudyView]) -> go.Figure | None:
    """The winners' stage widths (line) and depths (text) across budgets, widths relative to the
    first stage, so a reader sees how the best shape changes with scale."""
    rows = [
        (s, (s.final or {}).get("genome") or (s.winner.user_attrs.get("genome") if s.winner else None)) for s in studies
    ]
    rows = [(s, g) for s, g in rows if g]
    if not rows:
        return None
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("stage widths (channels, log scale)", "stage widths relative to stage 1")
    )
    for i, (s, g) in enumerate(rows):
        widths, depths = stage_shape(g)
        stages = [f"stage {k + 1}" for k in range(len(widths))]
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        label = budget_str(s.budget)
        text = [f"×{d}" for d in depths]
        fig.add_trace(
            go.Scatter(
                x=stages,
                y=widths,
                mode="lines+markers+text",
                text=text,
                textposition="top center",
                name=label,
                legendgroup=label,
                line={"color": color},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=stages,
                y=[w / widths[0] for w in widths],
                mode="lines+markers",
                name=label,
                legendgroup=label,
                showlegend=False,
                line={"color": color},
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(type="log", row=1, col=1)
    return _layout(fig, "Winners' shapes across budgets (×k: blocks in the stage)", 440)


def public_points_by_source() -> list[tuple[str, list[reference.RefPoint]]]:
    return [
        (source, [p for p in reference.PUBLIC_POINTS if p.source == source]) for source in reference.public_sources()
    ]


def _add_reference_traces(fig: go.Figure) -> None:
    ref = reference.REFERENCE_STUDY
    fig.add_trace(
        go.Scatter(
            x=[p.params for p in ref],
            y=[100 * p.test_acc for p in ref],
            mode="lines+markers",
            name=reference.REFERENCE_STUDY_SOURCE,
            line={"color": "#7f7f7f", "dash": "dash"},
            marker={"symbol": "square", "size": 7, "color": "#7f7f7f"},
            hovertext=[f"{p.model}: {count_str(p.params)} params, test {pct(p.test_acc)}<br>{p.source}" for p in ref],
            hoverinfo="text",
        )
    )
    symbols = ["diamond", "triangle-up", "cross", "x"]
    for i, (source, pts) in enumerate(public_points_by_source()):
        fig.add_trace(
            go.Scatter(
                x=[p.params for p in pts],
                y=[100 * p.test_acc for p in pts],
                mode="markers+text",
                name=f"public: {source}",
                text=[p.model for p in pts],
                textposition="top center",
                textfont={"size": 9, "color": "#666"},
                marker={"symbol": symbols[i % len(symbols)], "size": 8, "color": "#9467bd"},
                hovertext=[
                    f"{p.model}: ~{count_str(p.params)} params, test {pct(p.test_acc)}"
                    + (f", {p.recipe}" if p.recipe else "")
                    + f"<br>{source}"
                    for p in pts
                ],
                hoverinfo="text",
            )
        )


def fig_search_progress(s: StudyView) -> go.Figure:
    """Score by trial number, coloured by role, with the best-so-far line and failures at 0."""
    fig = go.Figure()
    by_role: dict[str, list[FrozenTrial]] = {}
    for t in s.complete:
        by_role.setdefault(str(t.user_attrs.get("role", "trial")), []).append(t)
    for i, (role, trials) in enumerate(sorted(by_role.items())):
        fig.add_trace(
            go.Scatter(
                x=[t.number for t in trials],
                y=[100 * t.value for t in trials],
                mode="markers",
                name=role,
                marker={"color": COLORS[i % len(COLORS)]},
                hovertext=[trial_label(t) for t in trials],
                hoverinfo="text",
            )
        )
    best_x, best_y, best = [], [], -math.inf
    for t in sorted(s.complete, key=lambda t: t.number):
        best = max(best, t.value)
        best_x.append(t.number)
        best_y.append(100 * best)
    fig.add_trace(
        go.Scatter(x=best_x, y=best_y, mode="lines", line_shape="hv", name="best so far", line={"color": "#222"})
    )
    if s.failed:
        fig.add_trace(
            go.Scatter(
                x=[t.number for t in s.failed],
                y=[0] * len(s.failed),
                mode="markers",
                name="failed",
                marker={"symbol": "x", "color": "#d62728"},
                hoverinfo="text",
                hovertext=[f"#{t.number} failed: {html.escape(str(failure_reason(t) or '?'))}" for t in s.failed],
            )
        )
    _integer_axis(fig, max(t.number for t in s.trials), title="trial number")
    fig.update_yaxes(**_percent_axis("score (val accuracy)"))
    return _layout(fig, f"Search progress — {s.name}", 380)


def learning_curve(t: FrozenTrial) -> tuple[list[int], list[float]]:
    """(epochs, val accuracies) from the `curve` attr, else from the intermediate values."""
    curve = t.user_attrs.get("curve") or []
    points = [(c["epoch"], c["val_acc"]) for c in curve if c.get("val_acc") is not None]
    if not points:
        points = sorted(t.intermediate_values.items())
    return [e for e, _ in points], [a for _, a in points]


def fig_learning_curves(s: StudyView) -> go.Figure:
    fig = go.Figure()
    top = sorted(s.complete, key=lambda t: t.value, reverse=True)[:TOP_CURVES]
    last_epoch = 1
    for i, t in enumerate(top):
        epochs, accs = learning_curve(t)
        last_epoch = max([last_epoch, *epochs])
        genome = html.escape(str(t.user_attrs.get("genome_str", "?")))
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[100 * a for a in accs],
                mode="lines+markers",
                name=f"#{t.number} ({pct(t.value, 1)})",
                marker={"size": 4},
                line={"color": COLORS[i % len(COLORS)]},
                hovertemplate=f"#{t.number} {genome}<br>epoch %{{x}}: %{{y:.2f}}%<extra></extra>",
            )
        )
    _integer_axis(fig, last_epoch, title="epoch")
    fig.update_yaxes(**_percent_axis("val accuracy"))
    return _layout(fig, f"Learning curves of the top {len(top)} — {s.name}", 380)


def fig_fdpg_path(s: StudyView) -> go.Figure:
    """The walk: centre score per step (neighbours faint) above the centre's coordinates per step."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("score by step", "centre genome coordinates by step"),
    )
    steps = [
        t for t in s.complete if t.user_attrs.get("searcher", "fdpg") == "fdpg" and t.user_attrs.get("step") is not None
    ]
    centres = sorted(
        (t for t in steps if t.user_attrs.get("role") == "centre"), key=lambda t: (t.user_attrs["step"], t.number)
    )
    others = [t for t in steps if t.user_attrs.get("role") != "centre"]
    fig.add_trace(
        go.Scatter(
            x=[t.user_attrs["step"] for t in others],
            y=[100 * t.value for t in others],
            mode="markers",
            name="neighbours",
            marker={"color": "#aaa", "size": 5},
            hovertext=[trial_label(t) for t in others],
            hoverinfo="text",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[t.user_attrs["step"] for t in centres],
            y=[100 * t.value for t in centres],
            mode="lines+markers",
            name="centre",
            line={"color": "#1f3b73"},
            hovertext=[trial_label(t) for t in centres],
            hoverinfo="text",
        ),
        row=1,
        col=1,
    )
    coords = [
        (t.user_attrs["step"], genome_coords(t.user_attrs["genome"])) for t in centres if t.user_attrs.get("genome")
    ]
    names = list(dict.fromkeys(n for _, c in coords for n in c))
    for i, name in enumerate(names):
        fig.add_trace(
            go.Scatter(
                x=[step for step, _ in coords],
                y=[c.get(name) for _, c in coords],
                mode="lines+markers",
                name=name,
                legendgroup="coords",
                line={"color": COLORS[i % len(COLORS)]},
                marker={"size": 4},
            ),
            row=2,
            col=1,
        )
    _integer_axis(fig, max((t.user_attrs["step"] for t in steps), default=1))
    fig.update_xaxes(title="fdpg step", row=2, col=1)
    fig.update_yaxes(title="score", ticksuffix="%", row=1, col=1)
    fig.update_yaxes(title="value (log)", type="log", row=2, col=1)
    return _layout(fig, f"Path of the fdpg search — {s.name}", 640)
