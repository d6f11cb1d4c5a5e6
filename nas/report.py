"""The HTML report: one self-contained page over every study in an Optuna storage.

The page reads only what docs/design.md ("Study and trial records") promises is in a study,
through Optuna's public API, and inlines plotly.js once so it opens offline. Accuracies are
stored in [0, 1] and shown in %. The studies are read as `nas.study_view.StudyView`s, the
figures come from `nas.figures`; this module assembles the tables' records and the page, which
templates/report.html.j2 lays out (autoescaped, so no value reaches the page unescaped).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import jinja2
import plotly.graph_objects as go
from markupsafe import Markup
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from nas import reference
from nas.figures import (
    fig_accuracy_vs_params,
    fig_fdpg_path,
    fig_learning_curves,
    fig_search_added,
    fig_search_progress,
    fig_winner_shapes,
    public_points_by_source,
)
from nas.files import check_file_target, write_text_atomic
from nas.storage import storage_database
from nas.study_view import StudyView, budget_str, count_str, duration_str, load_studies, pct, state_counts
from nas.text import plural

PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def default_report_path(storage: str) -> Path:
    """reports/<storage stem>.html, e.g. sqlite:///studies/nas.db -> reports/nas.html."""
    return Path("reports") / f"{Path(storage_database(storage) or '').stem or 'report'}.html"


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
