"""Optuna studies of a search: their names and the records of their trials.

What a study and its trials contain is the contract in docs/design.md ("Study and trial
records"); this module and `nas.evaluator` are its only writers. Where studies are stored is
`nas.storage`; how running trials show they are alive is `nas.liveness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.counting import count_flops, count_params
from nas.errors import NasError
from nas.finalists import seconds_spent
from nas.spaces import Genome, Space
from nas.storage import open_storage, storage_url, trial_id

if TYPE_CHECKING:
    from nas.training import Recipe

INTERRUPTED = "interrupted"
DIED = "process died during the trial (heartbeat lost)"
SCORES = ("val", "asymptote")
# Attrs that describe what a trial evaluates; a retry inherits them, results are not inherited.
IDENTITY_ATTRS = ("genome", "genome_str", "params", "flops", "recipe", "searcher", "role", "step")
RESULT_ATTRS = ("curve", "val_acc", "asymptote", "asymptote_std", "wall_time_s", "device")
# On a sampler's proposal of a genome the study already held: the holder's trial number.
DUPLICATE_ATTR = "duplicate_of"
# System attr of a trial whose sampler chose the genome itself (fdpg's walk): {genome, role, step}.
PROPOSAL_ATTR = "nas:proposal"

Objective = Callable[[Genome, "optuna.Trial | None"], float]


class NothingToPropose(Exception):
    """Raised by a sampler that chooses genomes itself when a trial asks for genes but every
    evaluation it needs is held by another trial (workers in other processes claimed them at
    the same moment): give the trial back."""


@dataclass(frozen=True)
class SamplerNeeds:
    """What a searcher needs from the search loop (`nas.trials`) and the search; a sampler
    declares it as its `needs` attribute, Optuna's samplers take the defaults.

    prunable:       its trials may be stopped early by a pruner (a walk that differences scores
                    needs complete trainings: no)
    proposes_start: it evaluates the start and transfer genomes itself, as its own proposals,
                    so the search does not queue them as trials
    distinct:       a proposal of a genome the study already holds is a duplicate to skip (a walk
                    may revisit a genome on purpose: the result is reused and counts)
    paced:          it has a `state(study)` saying whether it has evaluations to hand out now,
                    must wait for trials running elsewhere, or has ended (and why)
    """

    prunable: bool = True
    proposes_start: bool = False
    distinct: bool = True
    paced: bool = False


def sampler_needs(sampler: optuna.samplers.BaseSampler) -> SamplerNeeds:
    """What `sampler` needs from the loop: its own `needs`, else an Optuna sampler's."""
    return getattr(sampler, "needs", SamplerNeeds())


DEFAULT_VAL_SIZE = 5000


def study_name(
    space: str,
    budget: int,
    recipe: Recipe,
    score: str = "val",
    subset: int | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
) -> str:
    """`{space}-b{budget}-{recipe.tag}`. Scores by the asymptote, or from a training subset or
    another validation split, must not be mixed with plain ones: those get a suffix
    (`-asym`, `-sub{N}`, `-val{N}`)."""
    name = f"{space}-b{budget}-{recipe.tag}"
    if score == "asymptote":
        name += "-asym"
    if subset:
        name += f"-sub{subset}"
    if val_size != DEFAULT_VAL_SIZE:
        name += f"-val{val_size}"
    return name


def open_study(
    storage: str | optuna.storages.BaseStorage | None,
    space: Space,
    budget: int,
    recipe: Recipe,
    *,
    tol: float,
    searcher: str,
    score: str = "val",
    subset: int | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or resume the study of (space, budget, recipe) and record its user attrs."""
    if score not in SCORES:
        raise NasError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    st = storage if isinstance(storage, optuna.storages.BaseStorage) else open_storage(storage)
    name = study_name(space.name, budget, recipe, score, subset, val_size)
    study = optuna.create_study(
        storage=st, study_name=name, direction="maximize", load_if_exists=True, sampler=sampler, pruner=pruner
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise NasError(f"study '{name}' exists and minimises; use another --storage")
    attrs = dict(study.user_attrs)
    if "tol" in attrs and not math.isclose(float(attrs["tol"]), tol):
        raise NasError(
            f"study '{name}' was searched with --tol {attrs['tol']}; rerun with that tolerance or use another --storage"
        )
    wanted = {
        "space": space.name,
        "family": space.family.name,
        "budget": budget,
        "tol": tol,
        "recipe": recipe.to_dict(),
        "score": score,
        "train_subset": subset,
        "val_size": val_size,
    }
    for key, value in wanted.items():
        if attrs.get(key) != value:
            study.set_user_attr(key, value)
    # Several searchers may work on one study (they share its results): all are listed.
    used = [s for s in str(attrs.get("searcher", "")).split(",") if s]
    if searcher not in used:
        study.set_user_attr("searcher", ",".join([*used, searcher]))
    return study


def genome_attrs(genome: Genome) -> dict[str, Any]:
    return {
        "genome": genome.to_json(),
        "genome_str": str(genome),
        "params": count_params(genome),
        "flops": count_flops(genome),
    }


def trial_genome(t: FrozenTrial) -> Genome | None:
    text = t.user_attrs.get("genome")
    return Genome.from_json(text) if isinstance(text, str) else None


def trial_genome_by_number(study: str, number: int, storage: str | None = None) -> Genome:
    """The genome of trial `number` of study `study` in `storage` (a GENOME `STUDY#N`), or a
    one-line NasError naming what is missing: the storage, the study or the trial."""
    st = open_storage(storage, create=False)
    names = optuna.get_all_study_names(st)
    if study not in names:
        listed = ", ".join(sorted(names)[:10]) + (", ..." if len(names) > 10 else "")
        raise NasError(f"no study '{study}' in {storage_url(storage)} (studies: {listed or 'none'})")
    trials = optuna.load_study(study_name=study, storage=st).get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        have = f"trials #0..#{len(trials) - 1}" if trials else "no trials"
        raise NasError(f"study '{study}' has no trial #{number} ({have})")
    genome = trial_genome(found[0])
    if genome is None:
        raise NasError(f"trial #{number} of study '{study}' has no genome")
    return genome


def trial_proposal(trial: optuna.Trial) -> dict[str, Any] | None:
    """The genome, role and step a sampler chose for `trial` itself (PROPOSAL_ATTR), if it did."""
    return trial.storage.get_trial_system_attrs(trial_id(trial)).get(PROPOSAL_ATTR)


def counts_as_done(t: FrozenTrial) -> bool:
    """Finished for good: complete, pruned, or failed for a reason that a rerun would not fix
    (interrupted and dead-process trials are not done: a rerun evaluates them again). A sampler's
    proposal of a genome the study already held (`duplicate_of`) is not an evaluation at all."""
    if DUPLICATE_ATTR in t.user_attrs:
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (
        t.state == TrialState.FAIL
        and t.user_attrs.get("failure") not in (INTERRUPTED, DIED, None)
        and not t.user_attrs.get("retryable")
    )


def failure_reason(t: FrozenTrial) -> str | None:
    """Why a trial failed: its `failure` attr; a FAIL without one was failed by Optuna's heartbeat
    check (it cannot write attrs to the trial it fails), i.e. its process died."""
    reason = t.user_attrs.get("failure")
    if reason is None and t.state == TrialState.FAIL:
        return DIED
    return reason


def searcher_trials(
    study: optuna.Study, searcher: str, states: tuple[TrialState, ...] | None = None
) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.user_attrs.get("searcher") == searcher]


def in_budget(t: FrozenTrial, budget: int) -> bool:
    return isinstance(t.user_attrs.get("params"), int) and t.user_attrs["params"] <= budget


def search_seconds(trials: Iterable[FrozenTrial], attrs: dict[str, Any]) -> float:
    """The time a study's search has taken: its finished trials' durations and its finalists'
    retraining (a sweep's rerun with the same --time spends only what is left)."""
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    ) + seconds_spent(attrs)


def top_trials(study: optuna.Study, budget: int, n: int | None = 10) -> list[FrozenTrial]:
    """The `n` (None: all) best completed trials within the budget, one per genome, best first."""
    seen, out = set(), []
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and in_budget(t, budget)
    ]
    for t in sorted(done, key=lambda t: (-t.value, t.number)):
        if t.user_attrs.get("genome") not in seen:
            seen.add(t.user_attrs.get("genome"))
            out.append(t)
    return out[:n]
