"""A study as the report and the curve summary read it (`StudyView`: its trials, winner, final
training and baselines, from what docs/design.md "Study and trial records" promises), and the number
formats they print. Accuracies are stored in [0, 1] and shown in %.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from plotly.colors import qualitative

from nas.finalists import Finalist, recorded
from nas.finalists import winner as finalist_winner
from nas.storage import open_storage
from nas.study import failure_reason, search_seconds

COLORS = qualitative.Plotly  # one per study


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


def by_series(studies: list[StudyView]) -> dict[str, list[StudyView]]:
    """The studies that differ only in budget (one curve each), by budget."""
    out: dict[str, list[StudyView]] = {}
    for s in sorted(studies, key=lambda s: s.budget or 0):
        out.setdefault(s.series, []).append(s)
    return out
