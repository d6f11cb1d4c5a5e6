"""Finalists: a search's best genomes retrained at a higher fidelity before the winner is chosen.

A trial's score comes from a short training (on a CPU, 15,000 images x 4 epochs), which ranks
genomes only roughly (README, "Does the search fidelity rank?"), and the best of some fifty noisy
scores is biased upward by its own luck (the winner's curse). So a search ends by retraining its
`k` best genomes on every training image of its split, with a seed no trial used, and its winner
is the best of those scores. They are another fidelity, so they are never trial values: each is
kept in a study user attr `finalist:<trial number>` with the fidelity it was measured at, which
lets a rerun (or another worker) skip the finalists already measured and the report show them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nas.spaces import Genome
from nas.text import plural

if TYPE_CHECKING:  # nas.cli reads FINALIST_PICKS for --help: no optuna import here
    import optuna
    from optuna.trial import FrozenTrial

ATTR_PREFIX = "finalist:"
FINALIST_PICKS = ("diverse", "best")  # see pick()
# A finalist is not started when its estimated time exceeds the time left by more than this
# factor: the estimate (its trial's time x the fidelity ratio) misses per-trial overheads and the
# machine's load both ways, and one that does start and overruns is only cut, unranked.
FINISH_SLACK = 1.25


@dataclass(frozen=True)
class FinalistFidelity:
    """How finalists are retrained: on every training image of the search's split (`val_size`
    held out, as the trials), for `epochs`, with the recipe's `seed` (one the trials did not use)."""

    val_size: int
    epochs: int
    seed: int

    def describe(self) -> str:
        return (
            f"every training image but the {self.val_size:,} held out, {plural(self.epochs, 'epoch')}, seed {self.seed}"
        )


@dataclass(frozen=True)
class Finalist:
    """One finalist's record (the attr's value is its dict)."""

    trial: int  # the trial that put the genome among the best
    genome: str  # genome JSON
    genome_str: str
    search_score: float  # the trial's value, at the search's fidelity
    score: float  # validation accuracy at the finalist fidelity
    wall_time_s: float
    train_images: int
    fidelity: dict[str, int]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finalist:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def recorded(attrs: dict[str, Any], fidelity: FinalistFidelity | None = None) -> list[Finalist]:
    """The finalists recorded in a study's user attrs (only those of `fidelity` when given), best first."""
    out = [Finalist.from_dict(v) for k, v in attrs.items() if k.startswith(ATTR_PREFIX) and isinstance(v, dict)]
    if fidelity is not None:
        out = [f for f in out if f.fidelity == asdict(fidelity)]
    return sorted(out, key=lambda f: (-f.score, f.trial))


def seconds_spent(attrs: dict[str, Any]) -> float:
    """The training time of every finalist recorded in a study (part of its search's time)."""
    return sum(f.wall_time_s for f in recorded(attrs))


def winner(top: Sequence[FrozenTrial], finalists: Sequence[Finalist]) -> FrozenTrial | None:
    """The trial whose genome scored best as a finalist (of the finalists among `top`); the best
    trial while it has not been retrained itself (nothing to compare the others with)."""
    by_genome = {f.genome: f.score for f in finalists}
    if not top or top[0].user_attrs.get("genome") not in by_genome:
        return top[0] if top else None
    measured = [t for t in top if t.user_attrs.get("genome") in by_genome]
    return max(measured, key=lambda t: (by_genome[t.user_attrs["genome"]], t.value))


def pick(top: Sequence[FrozenTrial], k: int, diverse: bool = True) -> list[FrozenTrial]:
    """The `k` trials of `top` (best first, one per genome) to retrain. `diverse`: the best trial
    of each topology (the genome without its widths, `Genome.topology`) in turn, then the next
    best: a search's best trials are mostly width variations of one topology, and a short trial
    ranks a deeper genome below its worth (it learns more slowly in four epochs), so the k best
    rarely include one (README, "Does the search beat a hand design?"). Otherwise the `k` best."""
    if not diverse:
        return list(top[:k])
    firsts: dict[str, FrozenTrial] = {}
    for t in top:
        firsts.setdefault(Genome.from_json(t.user_attrs["genome"]).topology(), t)
    leaders = {t.number for t in firsts.values()}
    ranked = [*firsts.values(), *(t for t in top if t.number not in leaders)]
    chosen = {t.number for t in ranked[:k]}
    return [t for t in top if t.number in chosen]


def finalist_seconds(trial: FrozenTrial, finalist_scale: float) -> float | None:
    """A finalist's estimated training time: its trial's wall time times `finalist_scale` (a
    finalist's time over its trial's, `nas.plan.Plan.finalist_scale`); None before it is measured."""
    wall = trial.user_attrs.get("wall_time_s")
    return wall * finalist_scale if wall else None


def retrain_finalists(
    study: optuna.Study,
    candidates: Sequence[FrozenTrial],
    fidelity: FinalistFidelity,
    train_genome: Callable[[Genome], tuple[float, float, int] | str] | None,
    *,
    jobs: int = 1,
    note: Callable[[str], None] = lambda _: None,
    deadline: float | None = None,
    finalist_scale: float | None = None,
) -> list[Finalist]:
    """Retrain the genomes of `candidates` (best trials first) that the study holds no finalist
    record of at `fidelity`, `jobs` at a time, and record each. `train_genome` returns (validation
    accuracy, seconds, training images), or why the training did not finish (a time limit, a
    divergence: nothing is recorded, a rerun retrains it); None: no time is left, nothing is
    retrained. Returns the finalists of `candidates` recorded at `fidelity`.

    One job retrains them best first; several start the longest first (by their trials' wall
    time), as the search's time reserve assumes: started in rank order, a slow finalist could
    start last and run past the time limit (seen at 50k: 80 s + 133 s on one job).

    With a `deadline` (time.time()) and `finalist_scale` (a finalist's time over its trial's), a
    finalist whose trial time says it would not end before the deadline (`FINISH_SLACK`) is not
    started: it would only be cut there, unranked, its time lost to the others (seen at 500k: a
    10-minute trial's 30-minute finalist started with 9 minutes left)."""
    held = {f.genome for f in recorded(study.user_attrs, fidelity)}
    todo = [t for t in candidates if t.user_attrs.get("genome") not in held] if train_genome is not None else []
    if jobs > 1:
        todo.sort(key=lambda t: -(t.user_attrs.get("wall_time_s") or 0.0))

    def run(t: FrozenTrial) -> None:
        genome = Genome.from_json(t.user_attrs["genome"])
        needs = finalist_seconds(t, finalist_scale or 0.0) or 0.0
        left = deadline - time.time() if deadline is not None else None
        if left is not None and needs > left * FINISH_SLACK:
            note(f"finalist {genome}: needs about {needs / 60:.0f} min, {max(left, 0) / 60:.0f} left; not started")
            return
        out = train_genome(genome)
        if isinstance(out, str):
            note(f"finalist {genome}: {out}; not ranked")
            return
        score, seconds, images = out
        f = Finalist(
            trial=t.number,
            genome=t.user_attrs["genome"],
            genome_str=str(genome),
            search_score=t.value,
            score=score,
            wall_time_s=seconds,
            train_images=images,
            fidelity=asdict(fidelity),
        )
        study.set_user_attr(f"{ATTR_PREFIX}{t.number}", asdict(f))
        note(
            f"finalist {genome}: {score:.2%} on {images:,} images x {plural(fidelity.epochs, 'epoch')} "
            f"(its trial's score {t.value:.2%}) in {seconds:.0f} s"
        )

    if todo:
        note(f"retraining the {len(todo)} best genomes ({fidelity.describe()}) to choose the winner")
        if jobs <= 1:
            for t in todo:
                run(t)
        else:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nas-finalist") as pool:
                list(pool.map(run, todo))  # list(): raise a worker's error here
    genomes = {t.user_attrs.get("genome") for t in candidates}
    return [f for f in recorded(study.user_attrs, fidelity) if f.genome in genomes]
