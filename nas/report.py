"""The HTML report: one self-contained page over every study in an Optuna storage.

The page reads only what docs/design.md ("Study and trial records") promises is in a study,
through Optuna's public API, and inlines plotly.js once so it opens offline. Accuracies are
stored in [0, 1] and shown in %. This module computes the figures, tables' records and
summaries; templates/report.html.j2 lays them out (autoescaped, so no value reaches the page
unescaped; plotly's hover text is HTML too, so genome strings are escaped for it here).
"""

from __future__ import annotations

import datetime
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import optuna
import plotly.graph_objects as go
from markupsafe import Markup
from optuna.trial import FrozenTrial, TrialState
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from nas import reference
from nas.families import FAMILIES
from nas.files import check_file_target, write_text_atomic
from nas.finalists import Finalist, recorded
from nas.finalists import winner as finalist_winner
from nas.spaces import Genome
from nas.storage import open_storage, storage_database
from nas.study import failure_reason, search_seconds
from nas.text import plural

TOP_CURVES = 5  # learning curves drawn per budget
COLORS = qualitative.Plotly  # one per study
SERIES_COLORS = qualitative.Dark24  # one per best-per-budget curve
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# ---------------------------------------------------------------- reading the storage


@dataclass
class StudyView:
    """One study's records, as the report needs them."""

    name: str
    attrs: dict[str, Any]
    trials: list[FrozenTrial]
    color: str = COLORS[0]

    @property
    def budget(self) -> int | None:
        b = self.attrs.get("budget")
        return int(b) if isinstance(b, (int, float)) else None

    @property
    def series(self) -> str:
        """The studies that differ only in budget form one curve: the name without '-b<budget>'."""
        return re.sub(r"-b\d+(?=-|$)", "", self.name, count=1)

    @property
    def complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None]

    @property
    def failed(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.FAIL]

    @property
    def best(self) -> FrozenTrial | None:
        return max(self.complete, key=lambda t: t.value, default=None)

    @property
    def finalists(self) -> list[Finalist]:
        """The best genomes retrained to choose the winner (nas.finalists), best first."""
        return recorded(self.attrs)

    @property
    def winner(self) -> FrozenTrial | None:
        """The search's winner: the best finalist's trial, else the best trial."""
        return finalist_winner(sorted(self.complete, key=lambda t: (-t.value, t.number)), self.finalists)

    @property
    def final(self) -> dict[str, Any] | None:
        f = self.attrs.get("final")
        return f if isinstance(f, dict) else None

    @property
    def baselines(self) -> dict[str, dict[str, Any]]:
        """The sweep's baselines trained beside the winner: "hand" (the space's hand design),
        "resnet" (the CIFAR ResNet shape) and "seed" (the reference study's model), from user attrs
        `baseline:<kind>`."""
        return {
            k.split(":", 1)[1]: v for k, v in self.attrs.items() if k.startswith("baseline:") and isinstance(v, dict)
        }

    @property
    def sigma(self) -> float | None:
        """Seed-to-seed standard deviation of one genome's search score (user attr `score_noise`)."""
        noise = self.attrs.get("score_noise")
        return float(noise["sigma"]) if isinstance(noise, dict) and noise.get("sigma") is not None else None

    @property
    def search_seconds(self) -> float:
        return search_seconds(self.trials, self.attrs)

    @property
    def is_fdpg(self) -> bool:
        # several searchers may share a study: its attr lists them all, e.g. "tpe,fdpg"
        return "fdpg" in str(self.attrs.get("searcher", "")).split(",")

    def failure_reasons(self) -> list[str]:
        return sorted({str(failure_reason(t) or "no reason recorded") for t in self.failed})

    def status(self) -> str | None:
        """Why the study has nothing to plot, or None when it has completed trials."""
        if self.complete:
            return None
        if not self.trials:
            return "no trials yet"
        if len(self.failed) == len(self.trials):
            return "its only trial failed" if len(self.trials) == 1 else f"all {len(self.trials)} trials failed"
        return f"no completed trials yet ({state_counts(self.trials)})"


def state_counts(trials: list[FrozenTrial]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def load_studies(storage: str | optuna.storages.BaseStorage) -> list[StudyView]:
    """Every study in `storage`, ordered by space, budget and name, each with its own colour."""
    if isinstance(storage, str):
        # one connection for all studies; a mistyped path is an error, not a new empty storage
        storage = open_storage(storage, create=False)
    views = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        views.append(StudyView(summary.study_name, dict(study.user_attrs), study.get_trials(deepcopy=False)))
    views.sort(key=lambda v: (str(v.attrs.get("space", "")), v.budget or 0, v.name))
    for i, v in enumerate(views):
        v.color = COLORS[i % len(COLORS)]
    return views


def default_report_path(storage: str) -> Path:
    """reports/<storage stem>.html, e.g. sqlite:///studies/nas.db -> reports/nas.html."""
    return Path("reports") / f"{Path(storage_database(storage) or '').stem or 'report'}.html"


# ---------------------------------------------------------------- formatting


def pct(acc: float | None, digits: int = 2) -> str:
    return "—" if acc is None else f"{100 * acc:.{digits}f}%"


def count_str(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def budget_str(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1000 else str(n)


def duration_str(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{seconds:.1f} s"


def trial_label(t: FrozenTrial) -> str:
    """Hover text for a trial; plotly renders hover text as HTML, so escape the genome."""
    genome = html.escape(str(t.user_attrs.get("genome_str", "?")))
    return f"#{t.number} {genome}<br>{count_str(t.user_attrs.get('params'))} params<br>score {pct(t.value)}"


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


# ---------------------------------------------------------------- figures


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
    for i, (series, members) in enumerate(_by_series(studies).items()):
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


def sweep_summary(studies: list[StudyView]) -> list[dict[str, Any]]:
    """Per study with a final training: what `reports/<name>.json` holds (issue: the curve)."""
    out = []
    for s in studies:
        if not s.final:
            continue
        f = s.final
        out.append(
            {
                "study": s.name,
                "budget": s.budget,
                "space": s.attrs.get("space"),
                "winner": {
                    "genome": json.loads(f["genome"]),
                    "genome_str": f.get("genome_str"),
                    "params": f.get("params"),
                    "flops": f.get("flops"),
                    "trial": f.get("trial"),
                    "search_score": f.get("search_val_acc"),
                    "val_acc": f.get("search_val_acc"),
                    "test_acc": f.get("test_acc"),
                },
                "final_epochs": f.get("epochs"),
                "final_train_images": f.get("train_size"),
                "search_minutes": round(s.search_seconds / 60, 2),
                "search_trials": len(s.trials),
                "final_training_minutes": round((f.get("wall_time_s") or 0) / 60, 2),
                "score_sigma": s.sigma,
                "finalists": [
                    {
                        "trial": x.trial,
                        "genome_str": x.genome_str,
                        "search_score": x.search_score,
                        "score": x.score,
                        "train_images": x.train_images,
                        **x.fidelity,
                    }
                    for x in s.finalists
                ],
                "baselines": {
                    k: {
                        "genome_str": b.get("genome_str"),
                        "params": b.get("params"),
                        "test_acc": b.get("test_acc"),
                        "preset": b.get("preset"),
                        "failure": b.get("failure"),
                    }
                    for k, b in s.baselines.items()
                },
                "final_recipe": f.get("recipe"),
                "device": f.get("device"),
            }
        )
    return out


def write_summary_json(
    storage: str, out: str | Path, *, previous: str | None = None, readme: str | Path | None = None
) -> Path:
    """Write `sweep_summary` of every study in `storage` (with the scaling fit) as JSON, and beside
    it the curve as a Markdown table (`curve_markdown`, .md) and a picture (.svg). `previous`: a
    storage holding an earlier run, whose winners the JSON and the picture keep as "previous".
    `readme`: a README whose curve block (nas.curve_image markers) gets the picture and table."""
    from nas.curve_image import update_readme, write_curve_image

    rows = sweep_summary(load_studies(storage))
    fit = scaling_fit([(r["winner"]["params"], r["winner"]["test_acc"]) for r in rows])
    doc: dict[str, Any] = {
        "storage": storage,
        "budgets": rows,
        "scaling_fit": None
        if fit is None
        else {"form": "test error = a * params^-alpha", "a": fit.a, "alpha": fit.alpha},
    }
    if previous:
        doc["previous_storage"] = previous
        doc["previous"] = [
            {
                "budget": r["budget"],
                "params": r["winner"]["params"],
                "test_acc": r["winner"]["test_acc"],
                "final_epochs": r["final_epochs"],
                "genome_str": r["winner"]["genome_str"],
            }
            for r in sweep_summary(load_studies(previous))
        ]
    table = curve_markdown(doc)
    write_text_atomic(Path(out).with_suffix(".md"), table, "summary table")
    image = write_curve_image(doc, Path(out).with_suffix(".svg"))
    if readme is not None:
        update_readme(readme, image, table)
    return write_text_atomic(out, json.dumps(doc, indent=2) + "\n", "summary file")


# What the curve aims at per budget (the curve issue's aims, set from the public points beside them).
AIMS = {1_000: 0.16, 5_000: 0.32, 10_000: 0.40, 50_000: 0.57, 100_000: 0.62, 500_000: 0.70, 1_000_000: 0.73}


def collect_models(storage: str, folder: str | Path) -> list[Path]:
    """Copy each study's exported winner (its ONNX file and model card, `final.onnx`) into
    `folder` as `<budget>.onnx` and `<budget>.card.json`, so a reader can use the best model at any
    budget without training it. Winners whose export is not on this machine are skipped."""
    import shutil

    from nas.files import card_path_for

    out, copied = Path(folder), []
    for s in load_studies(storage):
        onnx = Path((s.final or {}).get("onnx") or "")
        if not s.budget or not onnx.is_file() or not card_path_for(onnx).is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{s.budget}.onnx"
        shutil.copyfile(onnx, target)
        shutil.copyfile(card_path_for(onnx), card_path_for(target))
        copied.append(target)
    return copied


def nearest_reference_model(budget: int) -> reference.RefPoint:
    """The reference study's model whose parameter count is nearest the budget (by ratio)."""
    return min(reference.REFERENCE_STUDY, key=lambda p: abs(math.log(p.params / budget)))


def best_public_point(budget: int) -> reference.RefPoint | None:
    """The most accurate public point with between half the budget and the budget parameters."""
    near = [p for p in reference.PUBLIC_POINTS if budget / 2 <= p.params <= budget]
    return max(near, key=lambda p: p.test_acc, default=None)


def curve_markdown(doc: dict[str, Any]) -> str:
    """The summary (`write_summary_json`'s document) as a Markdown table: per budget the winner,
    its test accuracy beside the baselines trained for the same epochs, the reference study's
    published number and the best public point at or under the budget."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def baseline(b: dict[str, Any] | None) -> str:
        if not b:
            return "—"
        acc = pct(b["test_acc"]) if b.get("test_acc") is not None else f"failed: {cell(b.get('failure', '?'))}"
        return f"{acc} (`{cell(b['genome_str'])}`)" if not b.get("preset") else f"{acc} ({b['preset']})"

    lines = [
        "| budget | winner (short form) | params | test acc | aim | hand design | ResNet shape | "
        "reference model | reference study (published, 200 ep Adam) | "
        "best public point at or under the budget | final epochs | search min | final-training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    previous_acc = None
    for r in sorted(doc["budgets"], key=lambda r: r["budget"]):
        w, ref, pub = r["winner"], nearest_reference_model(r["budget"]), best_public_point(r["budget"])
        public = f"{pct(pub.test_acc)} ({pub.model}, ~{count_str(pub.params)})" if pub else "—"
        aim = AIMS.get(r["budget"])
        met = "—" if aim is None else f"{pct(aim, 0)} ({'met' if (w['test_acc'] or 0) >= aim else 'not met'})"
        drop = " ⚠ below the budget before" if previous_acc is not None and (w["test_acc"] or 0) < previous_acc else ""
        previous_acc = w["test_acc"]
        base = " | ".join(baseline(r["baselines"].get(k)) for k in ("hand", "resnet", "seed"))
        lines.append(
            f"| {count_str(r['budget'])} | `{cell(w['genome_str'])}` | {count_str(w['params'])} | "
            f"**{pct(w['test_acc'])}**{drop} | {met} | {base} | {pct(ref.test_acc)} ({ref.model}, "
            f"{count_str(ref.params)}) | {public} | {r['final_epochs']} | {r['search_minutes']:.1f} | "
            f"{r['final_training_minutes']:.1f} |"
        )
    fit = doc.get("scaling_fit")
    if fit:
        lines += ["", f"Scaling fit of the winners: test error = {fit['a']:.3f} × params^−{fit['alpha']:.3f}."]
    return "\n".join(lines) + "\n"


def _by_series(studies: list[StudyView]) -> dict[str, list[StudyView]]:
    out: dict[str, list[StudyView]] = {}
    for s in sorted(studies, key=lambda s: s.budget or 0):
        out.setdefault(s.series, []).append(s)
    return out


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


# ---------------------------------------------------------------- page


def plot_div(fig: go.Figure | None, div_id: str) -> Markup | None:
    """The figure as a div for the page (None for no figure); plotly.js is inlined once in <head>,
    each figure only carries its data."""
    if fig is None:
        return None
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG))


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "study"


def summary_line(studies: list[StudyView]) -> str:
    if not studies:
        return "No studies in this storage yet."
    trials = [t for s in studies for t in s.trials]
    parts = [
        plural(len(studies), "study", "studies"),
        f"{plural(len(trials), 'trial')} ({state_counts(trials) or 'none'})",
    ]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if running:
        parts.append(
            f"{plural(running, 'trial')} still running: in a search that has ended, left by a process that "
            "died; a rerun of the command retries them"
        )
    several = len({s.series for s in studies}) > 1  # then a budget alone does not say which study
    best = [
        (f"{s.series} " if several else "")
        + f"{budget_str(s.budget)}: {pct(s.best.value)}"
        + (f" (test {pct(s.final['test_acc'])})" if s.final and s.final.get("test_acc") is not None else "")
        for s in studies
        if s.best
    ]
    if best:
        parts.append("best per budget " + ", ".join(best))
    return " · ".join(parts)


def winner_record(s: StudyView) -> dict[str, Any] | None:
    """What the winners table shows for a study: its final training, else its search's winner
    (not final-trained yet), else None."""
    if s.final:
        return s.final
    if s.winner:
        return {**s.winner.user_attrs, "val_acc": s.winner.user_attrs.get("val_acc", s.winner.value)}
    return None


def winners_rows(studies: list[StudyView]) -> list[tuple[StudyView, dict[str, Any] | None]]:
    """(study, winner record) per study; a final-trained winner that tests below the winner of the
    series' budget before it is marked `below_previous` (the table flags it)."""
    rows, last = [], {}
    for s in studies:  # ordered by space and budget
        record = winner_record(s)
        acc = (s.final or {}).get("test_acc")
        if acc is not None:
            if last.get(s.series) is not None and acc < last[s.series]:
                record = {**record, "below_previous": True}
            last[s.series] = acc
        rows.append((s, record))
    return rows


def search_gain(s: StudyView) -> float | None:
    """Test accuracy of the winner minus that of the hand design, both final-trained alike."""
    f, hand = s.final or {}, s.baselines.get("hand")
    if hand and hand.get("test_acc") is not None and f.get("test_acc") is not None:
        return f["test_acc"] - hand["test_acc"]
    return None


def study_plots(s: StudyView) -> list[Markup]:
    """A budget's own plots; none while it has no completed trial."""
    if s.status():
        return []
    key = slug(s.name)
    plots = [plot_div(fig_search_progress(s), f"progress-{key}"), plot_div(fig_learning_curves(s), f"curves-{key}")]
    if s.is_fdpg:
        plots.append(plot_div(fig_fdpg_path(s), f"fdpg-{key}"))
    return plots


# The page's layout is templates/report.html.j2 (package data); it is autoescaped, so every value
# put into it is escaped and only the plots and plotly.js come in as Markup.
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("nas", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters.update(pct=pct, count=count_str, budget=budget_str, duration=duration_str, plural=plural, slug=slug)
TEMPLATES.globals.update(state_counts=state_counts)


def render_html(studies: list[StudyView], storage: str, title: str) -> str:
    return TEMPLATES.get_template("report.html.j2").render(
        title=title,
        storage=storage,
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        plotly_js=Markup(get_plotlyjs()),
        summary=summary_line(studies),
        curve_plot=plot_div(fig_accuracy_vs_params(studies), "accuracy-vs-params"),
        winners=winners_rows(studies),
        added=[(s, search_gain(s)) for s in studies if s.final],
        added_plot=plot_div(fig_search_added(studies), "search-added"),
        shapes_plot=plot_div(fig_winner_shapes(studies), "winner-shapes"),
        sections=[(s, study_plots(s)) for s in studies],
        reference_source=reference.REFERENCE_STUDY_SOURCE,
        reference_points=reference.REFERENCE_STUDY,
        public_points=public_points_by_source(),
    )


def write_report(storage: str, out: str | Path, title: str | None = None) -> Path:
    """Write the HTML report over every study in `storage` to `out`; returns the path written."""
    studies = load_studies(storage)
    check_file_target(out, "report file")  # before the page is rendered: that takes a while
    page = render_html(studies, storage, title or f"nas report — {default_report_path(storage).stem}")
    return write_text_atomic(out, page, "report file")
