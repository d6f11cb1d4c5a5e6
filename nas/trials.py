"""The trial loop: workers claim trials from a quota, ask the sampler for a genome, project it into
the budget band and evaluate it (`nas.evaluator.Evaluator`), until the quota is spent, the time is up
or the sampler has nothing new to propose. The same loop runs every searcher; what a searcher
needs from it, it says itself (`nas.study.SamplerNeeds`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.budget import project
from nas.errors import NasError
from nas.evaluator import Evaluator, Outcome
from nas.liveness import fail_stale_trials
from nas.spaces import Genome, Space
from nas.storage import heartbeat_seconds
from nas.study import NothingToPropose, counts_as_done, sampler_needs, searcher_trials, trial_proposal

SCALE_PLACEHOLDER = 16  # the value a sampler leaves in a scale coordinate before projection


TRIALS_REACHED = "trial limit reached"  # SearchResult.stopped when `trials` evaluations are done


TIME_REACHED = "time limit reached"  # ... and when the time limit passed


SURPLUS = "not needed: other workers claimed the last trials first"


EXHAUSTED_AFTER = 30  # proposals in a row that bring a sampler no new genome end its search


POLL_S = 1.0  # how often a worker waiting for a paced sampler's trials running elsewhere looks again
NOVEL_DRAWS = 500  # random points tried for a genome the study does not hold yet


def suggest_genome(trial: optuna.Trial, space: Space) -> Genome:
    """A genome of `space` whose genes are suggested through the trial, one parameter per
    coordinate (named as `space.coord_name`), with the gene's grid, log scale or choices."""
    values = []
    for coord in space.coords:
        gene, name = space.genes[coord[0]], space.coord_name(coord)
        if space.is_scale(coord):  # projection sets it: searching it would only add noise
            values.append(SCALE_PLACEHOLDER)
        elif gene.choices is not None:
            values.append(trial.suggest_categorical(name, list(gene.choices)))
        else:
            values.append(trial.suggest_int(name, gene.low, gene.high_on_grid, step=gene.step, log=gene.log))
    return space.from_vector(values)


def flops_ratios(space: Space, budget: int, tol: float, hand: Genome, samples: int = 16) -> list[float]:
    """The FLOPs of `samples` random genomes of `space` projected to `budget` over the hand
    design's, sorted: how much more a search's genomes compute than the hand design the plan times
    (seeded, so a plan is the same each time it is made)."""
    from nas.counting import count_flops

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a scratch study
    try:
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(level)
    flops = [count_flops(project(suggest_genome(draws.ask(), space), space, budget, tol)) for _ in range(samples)]
    return sorted(f / count_flops(hand) for f in flops)


def quantile(values: list[float], q: float) -> float:
    """The value at quantile `q` of sorted `values` (the nearest rank)."""
    return values[round(q * (len(values) - 1))]


def propose(trial: optuna.Trial, space: Space, budget: int, tol: float) -> Genome:
    """The trial's genome: the sampler's genes projected into the budget band (the suggested
    values stay in trial.params; the projected genome is what gets trained and recorded). A
    sampler that chose the genome itself (`trial_proposal`, e.g. fdpg's walk, already in the band and
    with the start's options) still supplies its genes as the params, and that genome is kept."""
    genes = suggest_genome(trial, space)
    chosen = trial_proposal(trial)
    if chosen:
        return Genome.from_json(chosen["genome"])
    return replace(project(genes, space, budget, tol), recipe=suggest_recipe_genes(trial, space))


def base_recipe_value(space: Space, name: str) -> float:
    """A recipe field's value in the space's [recipe] table, else Recipe's default, inside the searched range."""
    from nas.training import Recipe

    gene = space.recipe_genes[name]
    value = float(space.recipe.get(name, getattr(Recipe(), name)))
    return min(max(value, gene.low), gene.high)


def recipe_param(name: str) -> str:
    """The trial param of a searched recipe field, e.g. recipe_lr."""
    return f"recipe_{name}"


def suggest_recipe_genes(trial: optuna.Trial, space: Space) -> dict[str, float]:
    """The values of the recipe fields the space searches (`[search_recipe]`), suggested through
    the trial, to 3 significant digits (what a short form shows is what was trained)."""
    return {
        name: float(f"{trial.suggest_float(recipe_param(name), g.low, g.high, log=g.log):.3g}")
        for name, g in space.recipe_genes.items()
    }


def trial_role(trial: optuna.Trial) -> tuple[str, int | None]:
    """(role, step) to record for the trial: its sampler's proposal's, a queued trial's role, else
    a sample (its step is then its number)."""
    chosen = trial_proposal(trial)
    return (chosen["role"], chosen["step"]) if chosen else (trial.user_attrs.get("role", "sample"), None)


class TrialQuota:
    """Hands out trials of one searcher until `trials` of them are done, counting the trials
    already in the study (so a rerun finishes the remaining ones) and those running elsewhere."""

    def __init__(
        self,
        evaluator: Evaluator,
        trials: int | None,
        on_wait: Callable[[int], None] | None = None,
        deadline: float | None = None,
    ):
        # trials None: no count limit (a deadline ends the search); deadline: time.time() after
        # which no trial starts
        self.ev, self.on_wait, self.deadline = evaluator, on_wait, deadline
        self.trials = trials if trials is not None else 2**62
        self._lock = threading.Lock()
        self._mine: set[int] = set()  # trials this process asked for

    def expired(self) -> bool:
        """Whether no trial should start now: the deadline has passed, or the time left is shorter
        than the quickest trial this searcher has completed (it would only be cut at the deadline,
        as when a resumed sweep has seconds of a budget's share left). Trials that reused another's
        result took no time and say nothing about how long a training takes."""
        if self.deadline is None:
            return False
        left = self.deadline - time.time()
        return left <= 0 or left < self._quickest_trial_s()

    def _quickest_trial_s(self) -> float:
        times = [
            t.duration.total_seconds()
            for t in self.ev.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("searcher") == self.ev.searcher
            and t.duration is not None
            and t.user_attrs.get("reused_from") is None
        ]
        return min(times, default=0.0)

    def done(self) -> int:
        return sum(counts_as_done(t) for t in searcher_trials(self.ev.study, self.ev.searcher))

    def why_stopped(self) -> str:
        return TIME_REACHED if self.expired() else TRIALS_REACHED

    def claim(self) -> optuna.Trial | None:
        """A new trial, or None when the budget is spent. Waits while the remaining trials are
        running in other processes (or in dead ones, until their heartbeat expires)."""
        while True:
            if self.expired():
                return None
            with self._lock:
                fail_stale_trials(self.ev.study)
                mine = self._trials()
                done = sum(counts_as_done(t) for t in mine)
                running = [t for t in mine if t.state == TrialState.RUNNING]
                if done >= self.trials:
                    return None
                if done + len(running) < self.trials:
                    trial = self.ev.ask()
                    self._mine.add(trial.number)
                    if not self._surplus(trial):
                        return trial
                    self.ev.fail(trial, SURPLUS, retryable=True)
                    continue
                foreign = sum(t.number not in self._mine for t in running)
            if foreign <= 0:  # all running trials are this process's: they will finish the budget
                return None
            if self.on_wait:
                self.on_wait(foreign)
            time.sleep(heartbeat_seconds())

    def _trials(self) -> list[FrozenTrial]:
        """This searcher's trials, and those another process has just asked: a trial is tagged
        with its searcher a moment after it starts, so an untagged one that started within a
        heartbeat's grace counts as this searcher's (at worst a worker waits, or gives back a
        trial and asks again); an older untagged one is not a nas trial."""
        since = datetime.now() - timedelta(seconds=2 * heartbeat_seconds())

        def counts(t: FrozenTrial) -> bool:
            searcher = t.user_attrs.get("searcher")
            return searcher == self.ev.searcher or (
                searcher is None
                and t.state == TrialState.RUNNING
                and t.datetime_start is not None
                and t.datetime_start >= since
            )

        return [t for t in self.ev.study.get_trials(deepcopy=False) if counts(t)]

    def _surplus(self, trial: optuna.Trial) -> bool:
        """Whether this searcher's trials that are done, or started running before `trial`, fill
        the budget: workers that claim the last trial at once all ask one, and all but the first
        give it back. Started-before is by start time, not number: a queued trial keeps the lower
        number it was queued with, but starts when it is popped."""
        mine = self._trials()
        me = next(t for t in mine if t.number == trial.number)
        ahead = [
            t
            for t in mine
            if t.number != me.number
            and (
                counts_as_done(t)
                or t.state == TrialState.RUNNING
                and (t.datetime_start, t.number) < (me.datetime_start, me.number)
            )
        ]
        return len(ahead) >= self.trials


def run_workers(worker: Callable[[], None], jobs: int, stop: threading.Event) -> None:
    """Run `worker` on `jobs` threads (this one when `jobs` is 1) until every one returns. A
    worker's error is raised once the others have finished their trial (`stop` tells them to take
    no other). After Ctrl-C the others are not waited for: the caller marks their trials
    interrupted, which ends their training at its next report."""
    if jobs <= 1:
        worker()
        return
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nas-trial")
    futures = [pool.submit(worker) for _ in range(jobs)]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    stop.set()
    pool.shutdown(wait=True)
    for f in futures:
        f.result()


def run_trials(
    ev: Evaluator,
    space: Space,
    budget: int,
    tol: float,
    quota: TrialQuota,
    sampler: optuna.samplers.BaseSampler,
    jobs: int = 1,
    on_outcome: Callable[[Outcome], None] | None = None,
    exhausted_after: int = EXHAUSTED_AFTER,
) -> str:
    """Run the study's sampler until the trial budget is spent, or the sampler has nothing more
    to propose; returns why it stopped. `jobs` workers share the sampler; one at a time asks for
    a trial and its genome.

    --trials counts distinct trainings for the Optuna samplers. A proposal of a genome the study
    already holds (trained, pruned, or running in any worker) is a duplicate trial, and one that
    cannot be projected into the band fails; neither counts, and the sampler is asked again,
    with a random point of the space queued as the next trial: in a small band (a 1k budget) a
    model-based sampler keeps proposing what it has, and the random point moves it on.
    `exhausted_after` such proposals in a row in one worker end the search: the space holds
    nothing new. A paced sampler (fdpg's walk) says itself when it has ended; while its next
    evaluations all run in other workers, a worker waits for them; it may come back to a
    genome the study holds, and that evaluation (a reuse) counts."""
    loop = _TrialLoop(ev, space, budget, tol, quota, sampler, on_outcome, exhausted_after)
    run_workers(loop.worker, jobs, loop.stop)
    return loop.ended[0] if loop.ended else quota.why_stopped()


@dataclass
class _TrialLoop:
    """`run_trials`'s state, shared by its workers: one at a time claims (`lock`); a worker that
    finishes a trial wakes those waiting for a paced sampler (`finished`)."""

    ev: Evaluator
    space: Space
    budget: int
    tol: float
    quota: TrialQuota
    sampler: optuna.samplers.BaseSampler
    on_outcome: Callable[[Outcome], None] | None
    exhausted_after: int
    ended: list[str] = field(default_factory=list)  # why the search ended, once a worker found out
    stop: threading.Event = field(default_factory=threading.Event)  # an error or Ctrl-C: take no new trial
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        needs = sampler_needs(self.sampler)
        self.paced, self.distinct = (self.sampler if needs.paced else None), needs.distinct

    def claim(self) -> tuple[optuna.Trial, Genome | None] | None:
        """The next trial with its genome (None: its genes could not be projected into the band,
        the trial failed), or None when the search is over."""
        while not self.ended and not self.stop.is_set():
            with self.lock:
                state = self.paced.state(self.ev.study) if self.paced is not None else None
                if state is not None and state.stopped is not None:
                    self.ended.append(state.stopped)
                    return None
                if state is None or state.todo or state.queued:
                    trial = self.quota.claim()
                    if trial is None:
                        return None
                    try:
                        return trial, propose(trial, self.space, self.budget, self.tol)
                    except NothingToPropose as e:  # another process took the sampler's last evaluation
                        self.ev.fail(trial, str(e), retryable=True)
                    except NasError as e:  # a corner of the space the band cannot be reached from
                        self.ev.fail(trial, f"projection: {e}", retryable=True)  # nothing trained: not counted
                        return trial, None
            if self.quota.expired():
                return None
            with self.finished:  # a paced sampler waits for its running trials (a dead process's are retried)
                self.finished.wait(POLL_S)
            fail_stale_trials(self.ev.study)
        return None

    def worker(self) -> None:
        repeats = 0  # proposals in a row that brought no new genome
        while (claimed := self.claim()) is not None:
            trial, genome = claimed
            out = None
            if genome is not None:
                role, step = trial_role(trial)
                out = self.ev.evaluate(genome, role=role, step=step, trial=trial, distinct=self.distinct)
                with self.finished:
                    self.finished.notify_all()
            if self.stop.is_set():
                return  # interrupted: the caller has marked the trial and closed the progress
            if out is not None and out.duplicate_of is None:
                repeats = 0
                if self.on_outcome:
                    self.on_outcome(out)
                continue
            repeats += 1
            self.move_on(trial, repeats)

    def move_on(self, trial: optuna.Trial, repeats: int) -> None:
        """After a proposal that brought nothing new: queue a random point the study does not
        hold, or end the search when there is none or this happened `exhausted_after` times."""
        novel = novel_params(self.space, self.budget, self.tol, self.ev.study, random.Random(trial.number))
        if novel is not None and repeats < self.exhausted_after:
            self.ev.study.enqueue_trial(novel, user_attrs={"role": "explore"})
        else:
            self.ended.append(
                f"stopped early: the sampler's last proposals were all genomes already in the "
                f"study and {NOVEL_DRAWS} random points of the space found no new one either, "
                f"so the band looks exhausted"
            )


def novel_params(space: Space, budget: int, tol: float, study: optuna.Study, rng: random.Random) -> dict | None:
    """Params of a uniformly random point of the space whose projected genome the study does not
    hold yet (none after NOVEL_DRAWS tries). Projection maps much of a small band's space onto a
    few genomes (at 1k, 70% of random points land on one), so a sampler there keeps proposing
    held genomes; this finds the rest without a trial per miss."""
    held = {t.user_attrs.get("genome") for t in study.get_trials(deepcopy=False)}
    for _ in range(NOVEL_DRAWS):
        params = {
            space.coord_name(c): rng.choice(space.genes[c[0]].values()) for c in space.coords if not space.is_scale(c)
        }
        values = [SCALE_PLACEHOLDER if space.is_scale(c) else params[space.coord_name(c)] for c in space.coords]
        try:
            genome = project(space.from_vector(values), space, budget, tol)
        except NasError:
            continue
        if genome.to_json() not in held:
            return params
    return None


def enqueue_genomes(study: optuna.Study, space: Space, genomes: list[tuple[str, Genome]]) -> int:
    """Queue (label, genome) pairs as the sampler's next trials, their coordinates as the trial's
    params so the sampler learns from them like from its own proposals. A label already in the
    study (user attr `seed`) is not queued again, so a resumed search does not repeat them.
    Returns how many were queued."""
    held = {t.user_attrs.get("seed") for t in study.get_trials(deepcopy=False)}
    queued = 0
    for label, genome in genomes:
        if label in held:
            continue
        params = {space.coord_name(c): v for c, v in zip(space.coords, space.vector(genome)) if not space.is_scale(c)}
        # a searched recipe field: the genome's value, else the space's measured one (the hand design's)
        params |= {recipe_param(n): genome.recipe.get(n, base_recipe_value(space, n)) for n in space.recipe_genes}
        study.enqueue_trial(params, user_attrs={"seed": label, "role": label.split(":", 1)[0]})
        held.add(label)
        queued += 1
    return queued
