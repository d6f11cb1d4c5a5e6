"""Searchers: Optuna's samplers and fdpg's walk (nas.fdpg), run by one search loop.

Every searcher is an Optuna sampler and every evaluation a trial of the study of (space,
budget, recipe), evaluated through `nas.study.Evaluator`; only genomes inside the budget band
[(1 - tol) * B, B] are evaluated: sampled genes are projected before training, and fdpg's
probes and steps are projected too. `search()` is what `nas search` runs: its settings are a
`SearchConfig`, its loop (`run_trials`) the same for every searcher.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.budget import DEFAULT_TOL, band, check_budget, project
from nas.errors import NasError, warn
from nas.fdpg import FdpgSampler, NothingToPropose
from nas.finalists import FINALIST_PICKS, Finalist, FinalistFidelity, pick, retrain_finalists
from nas.finalists import winner as finalist_winner
from nas.spaces import Genome, Space, load_space
from nas.study import (
    DEFAULT_VAL_SIZE,
    Evaluator,
    Objective,
    Outcome,
    counts_as_done,
    fail_stale_trials,
    heartbeat_seconds,
    open_study,
    resolve_storage,
    searcher_trials,
    top_trials,
    trial_proposal,
)
from nas.text import plural

if TYPE_CHECKING:
    from nas.data import CifarSource
    from nas.objective import TrainingObjective
    from nas.plan import Plan
    from nas.training import Recipe

SAMPLERS = ("tpe", "cmaes", "gp", "random", "nsga2")
SEARCHERS = ("fdpg", *SAMPLERS)
PRUNERS = ("hyperband", "median", "none")
SCALE_PLACEHOLDER = 16  # the value a sampler leaves in a scale coordinate before projection
TRAIN_IMAGES = 50_000   # CIFAR-100's training set, before the validation split
TRIALS_REACHED = "trial limit reached"  # SearchResult.stopped when `trials` evaluations are done
TIME_REACHED = "time limit reached"     # ... and when the time limit passed
SURPLUS = "not needed: other workers claimed the last trials first"
EXHAUSTED_AFTER = 30    # proposals in a row that bring a sampler no new genome end its search
POLL_S = 1.0            # how often a worker waiting for the fdpg walk's running trials in other processes looks again


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs: what `nas search` options set, and what `nas sweep` passes to every
    budget's search (it sets `time_limit` and `transfer` per budget itself)."""

    searcher: str = "tpe"
    trials: int | None = 40          # finished trials of this searcher in the study; None: no count limit
    jobs: int = 1                    # trials trained at once
    score: str = "val"               # "val" or "asymptote" (see nas.study.SCORES)
    pruner: str = "hyperband"        # samplers only: fdpg needs complete trainings
    seed: int = 0                    # sampler seed (see WorkerSeeded)
    tol: float = DEFAULT_TOL         # budget band [(1 - tol) * B, B]
    subset: int | None = None        # training images per trial (None: all but the validation split)
    val_size: int = DEFAULT_VAL_SIZE
    start: Genome | None = None      # the first trial and fdpg's start (default: the space's hand design)
    device: str | None = None
    time_limit: float | None = None  # seconds; no trial starts after it
    transfer: Sequence[tuple[str, Genome]] = ()  # (label, genome) queued after the start (budget transfer)
    plan: bool | None = None         # calibrate and print the plan first (default: with progress)
    noise_seeds: bool = True         # train the hand design with two more seeds (see measure_noise)
    finalists: int = 0               # best genomes retrained at the finalist fidelity to choose the winner
    finalist_epochs: int | None = None  # their epochs (None: the recipe's); they train on every image of the split
    finalist_pick: str = FINALIST_PICKS[0]  # which trials: see finalists.pick

    def check(self) -> None:
        """Raise NasError for settings no search can run with."""
        if self.searcher not in SEARCHERS:
            raise NasError(f"unknown searcher '{self.searcher}' (known: {', '.join(SEARCHERS)})")
        for name, value in (("trials", self.trials), ("jobs", self.jobs), ("finalist_epochs", self.finalist_epochs)):
            if value is not None and value < 1:
                raise NasError(f"{name} must be at least 1, got {value}")
        if self.finalists < 0:
            raise NasError(f"finalists must be 0 (none) or more, got {self.finalists}")
        if self.finalist_pick not in FINALIST_PICKS:
            raise NasError(f"unknown finalist pick '{self.finalist_pick}' (known: {', '.join(FINALIST_PICKS)})")
        if self.trials is None and self.time_limit is None:
            raise NasError("a search needs a number of trials, a time limit, or both")


# ---------------------------------------------------------------- samplers

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


def propose(trial: optuna.Trial, space: Space, budget: int, tol: float) -> Genome:
    """The trial's genome: the sampler's genes projected into the budget band (the suggested
    values stay in trial.params; the projected genome is what gets trained and recorded). A
    sampler that chose the genome itself (`trial_proposal`: fdpg's walk, already in the band and
    with the start's options) still supplies its genes as the params, and that genome is kept."""
    genes = suggest_genome(trial, space)
    chosen = trial_proposal(trial)
    return Genome.from_json(chosen["genome"]) if chosen else project(genes, space, budget, tol)


def trial_role(trial: optuna.Trial) -> tuple[str, int | None]:
    """(role, step) to record for the trial: its sampler's proposal's, a queued trial's role, else
    a sample (its step is then its number)."""
    chosen = trial_proposal(trial)
    return (chosen["role"], chosen["step"]) if chosen else (trial.user_attrs.get("role", "sample"), None)


def make_searcher(config: SearchConfig, space: Space, budget: int, start: Genome) -> optuna.samplers.BaseSampler:
    """The sampler of `config.searcher`: fdpg's walk from `start`, or an Optuna sampler."""
    if config.searcher == "fdpg":
        return FdpgSampler(space, start, budget, config.tol)
    return make_sampler(config.searcher, config.seed, config.trials or 40)


def make_sampler(name: str, seed: int = 0, trials: int = 40) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `name`, seeded per worker (see `WorkerSeeded`)."""
    if name not in SAMPLERS:
        raise NasError(f"unknown searcher '{name}' (known: {', '.join(SEARCHERS)})")
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CmaEsSampler imports it lazily, failing mid-search)
        except ImportError:
            raise NasError("searcher cmaes needs the 'cmaes' package: pip install cmaes") from None
    return WorkerSeeded(lambda s: _sampler(name, s, trials), seed)


def _sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    startup = max(3, min(10, trials // 4))  # short searches should not be all random start-up
    if name == "tpe":
        # constant_liar: trials running in other workers count as bad, so TPE looks elsewhere
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    if name == "cmaes":
        # The kernel gene is categorical: CMA-ES leaves it to the independent sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)))


def worker_seed(seed: int, first_trial: int) -> int:
    """The sampler seed of a worker whose first trial has number `first_trial`."""
    return int(np.random.SeedSequence([seed % 2**64, first_trial]).generate_state(1)[0])


class WorkerSeeded(optuna.samplers.BaseSampler):
    """A sampler made at this process's first trial, seeded from (seed, that trial's number).

    Optuna's seeded samplers replay one random stream in every process: a resumed search would
    re-propose the first run's genomes in order, and two workers started together would propose
    the same ones. Trial numbers are unique in a study, so each run and each worker draws its
    own stream, and a fresh search is still reproducible for its seed. Threads of one process
    share the sampler, as they would share an unwrapped one."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int = 0):
        self._make, self.seed = make, seed
        self._sampler: optuna.samplers.BaseSampler | None = None
        self._lock = threading.Lock()

    def inner(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        with self._lock:
            if self._sampler is None:
                self._sampler = self._make(worker_seed(self.seed, trial.number))
            return self._sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self.inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner(trial).after_trial(study, trial, state, values)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Multi-fidelity pruning on epochs (the intermediate values are per-epoch val accuracy)."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(0, epochs // 3))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise NasError(f"unknown pruner '{name}' (known: {', '.join(PRUNERS)})")


# ---------------------------------------------------------------- the trial budget

class TrialBudget:
    """Hands out trials of one searcher until `trials` of them are done, counting the trials
    already in the study (so a rerun finishes the remaining ones) and those running elsewhere."""

    def __init__(self, evaluator: Evaluator, trials: int | None, on_wait: Callable[[int], None] | None = None,
                 deadline: float | None = None):
        # trials None: no count limit (a deadline ends the search); deadline: time.time() after
        # which no trial starts
        self.ev, self.on_wait, self.deadline = evaluator, on_wait, deadline
        self.trials = trials if trials is not None else 2**62
        self._lock = threading.Lock()
        self._mine: set[int] = set()  # trials this process asked for

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

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
                searcher is None and t.state == TrialState.RUNNING and t.datetime_start is not None
                and t.datetime_start >= since)

        return [t for t in self.ev.study.get_trials(deepcopy=False) if counts(t)]

    def _surplus(self, trial: optuna.Trial) -> bool:
        """Whether this searcher's trials that are done, or started running before `trial`, fill
        the budget: workers that claim the last trial at once all ask one, and all but the first
        give it back. Started-before is by start time, not number: a queued trial keeps the lower
        number it was queued with, but starts when it is popped."""
        mine = self._trials()
        me = next(t for t in mine if t.number == trial.number)
        ahead = [t for t in mine if t.number != me.number and (
            counts_as_done(t) or
            t.state == TrialState.RUNNING and (t.datetime_start, t.number) < (me.datetime_start, me.number))]
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


def run_trials(ev: Evaluator, space: Space, budget: int, tol: float, budget_trials: TrialBudget,
               sampler: optuna.samplers.BaseSampler, jobs: int = 1,
               on_outcome: Callable[[Outcome], None] | None = None,
               exhausted_after: int = EXHAUSTED_AFTER) -> str:
    """Run the study's sampler until the trial budget is spent, or the sampler has nothing more
    to propose; returns why it stopped. `jobs` workers share the sampler; one at a time asks for
    a trial and its genome.

    --trials counts distinct trainings for the Optuna samplers. A proposal of a genome the study
    already holds (trained, pruned, or running in any worker) is a duplicate trial, and one that
    cannot be projected into the band fails; neither counts, and the sampler is asked again,
    with a random point of the space queued as the next trial: in a small band (a 1k budget) a
    model-based sampler keeps proposing what it has, and the random point moves it on.
    `exhausted_after` such proposals in a row in one worker end the search: the space holds
    nothing new. fdpg's walk (`FdpgSampler`) says itself when it has ended; while its next
    evaluations all run in other workers, a worker waits for them; the walk may come back to a
    genome the study holds, and that evaluation (a reuse) counts."""
    walk = sampler if isinstance(sampler, FdpgSampler) else None
    ended: list[str] = []        # why the search ended, once a worker found out
    stop = threading.Event()     # an error or Ctrl-C: take no new trial
    lock = threading.Lock()
    finished = threading.Condition()  # a worker of this process finished a trial

    def claim() -> tuple[optuna.Trial, Genome | None] | None:
        """The next trial with its genome (None: its genes could not be projected into the band,
        the trial failed), or None when the search is over."""
        while not ended and not stop.is_set():
            with lock:
                state = walk.state(ev.study) if walk is not None else None
                if state is not None and state.stopped is not None:
                    ended.append(state.stopped)
                    return None
                if state is None or state.todo or state.queued:
                    trial = budget_trials.claim()
                    if trial is None:
                        return None
                    try:
                        return trial, propose(trial, space, budget, tol)
                    except NothingToPropose as e:  # another process took the walk's last evaluation
                        ev.fail(trial, str(e), retryable=True)
                    except NasError as e:  # a corner of the space the band cannot be reached from
                        ev.fail(trial, f"projection: {e}", retryable=True)  # nothing trained: not counted
                        return trial, None
            if budget_trials.expired():
                return None
            with finished:  # the walk waits for its running trials (a dead process's are retried)
                finished.wait(POLL_S)
            fail_stale_trials(ev.study)
        return None

    def worker() -> None:
        repeats = 0
        while (claimed := claim()) is not None:
            trial, genome = claimed
            out = None
            if genome is not None:
                role, step = trial_role(trial)
                out = ev.evaluate(genome, role=role, step=step, trial=trial, distinct=walk is None)
                with finished:
                    finished.notify_all()
            if stop.is_set():
                return  # interrupted: the caller has marked the trial and closed the progress
            if out is not None and out.duplicate_of is None:
                repeats = 0
                if on_outcome:
                    on_outcome(out)
                continue
            novel = novel_params(space, budget, tol, ev.study, random.Random(trial.number))
            if novel is not None and (repeats := repeats + 1) < exhausted_after:
                ev.study.enqueue_trial(novel, user_attrs={"role": "explore"})
            else:
                ended.append(f"stopped early: the sampler's last proposals were all genomes already in the "
                             f"study and {NOVEL_DRAWS} random points of the space found no new one either, "
                             f"so the band looks exhausted")

    run_workers(worker, jobs, stop)
    return ended[0] if ended else budget_trials.why_stopped()


NOVEL_DRAWS = 500  # random points tried for a genome the study does not hold yet


def novel_params(space: Space, budget: int, tol: float, study: optuna.Study, rng: random.Random) -> dict | None:
    """Params of a uniformly random point of the space whose projected genome the study does not
    hold yet (none after NOVEL_DRAWS tries). Projection maps much of a small band's space onto a
    few genomes (at 1k, 70% of random points land on one), so a sampler there keeps proposing
    held genomes; this finds the rest without a trial per miss."""
    held = {t.user_attrs.get("genome") for t in study.get_trials(deepcopy=False)}
    for _ in range(NOVEL_DRAWS):
        params = {space.coord_name(c): rng.choice(space.genes[c[0]].values())
                  for c in space.coords if not space.is_scale(c)}
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
        study.enqueue_trial(params, user_attrs={"seed": label, "role": label.split(":", 1)[0]})
        held.add(label)
        queued += 1
    return queued


def default_start(space: Space) -> Genome:
    """fdpg's default start, from the brief's design lessons: one block per stage (the reference
    study's best plain member), widths doubling stage by stage ("wider blocks deeper in");
    the space's family chooses it (`Family.default_start`)."""
    return space.family.default_start(space)


# ---------------------------------------------------------------- search()

@dataclass
class SearchResult:
    """What a search left in its study: the best in-budget trials, best first, and its winner:
    the best of them after retraining the finalists (see nas.finalists), else the best trial."""

    study_name: str
    storage: str
    searcher: str
    budget: int
    score: str
    trials: int             # finished evaluations of this searcher in the study
    top: list[FrozenTrial]  # every finished in-budget trial, one per genome, best first
    stopped: str            # why the search ended
    wall_time_s: float
    finalists: list[Finalist] = field(default_factory=list)  # best first

    @property
    def best(self) -> FrozenTrial | None:
        """The winner: what a sweep final-trains and `--export` exports."""
        return finalist_winner(self.top, self.finalists)


def warn_many_jobs(jobs: int, trials: int) -> None:
    """Concurrent trainings far beyond the cores only make each one slower: say so."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if jobs > 2 * cores:
        warn(f"--jobs {jobs} is far above the {plural(cores, 'CPU core')}: up to {min(jobs, trials or jobs):,} trainings "
             f"run at once, one CPU thread each, so each runs slower and the search is not faster")


@contextmanager
def _torch_threads_per_job(jobs: int) -> Iterator[None]:
    """Concurrent CPU training runs share the cores instead of each claiming all of them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _LazyObjective:
    """Builds the training objective (loading CIFAR-100) at the first evaluation, so resuming a
    finished search does not load the data set."""

    def __init__(self, make: Callable[[], Objective]):
        self._make, self._objective, self._lock = make, None, threading.Lock()

    def get(self) -> Objective:
        with self._lock:
            if self._objective is None:
                self._objective = self._make()
        return self._objective

    def __call__(self, genome: Genome, trial: optuna.Trial | None) -> float:
        return self.get()(genome, trial)


NOISE_SEEDS = (1, 2)  # besides the start trial's seed 0
NOISE_ATTR = "score_noise"
NOISE_MIN_TRIALS = 10  # the noise trainings (two trials' time) run only if a time limit leaves room for this many


def measure_noise(study: optuna.Study, genome: Genome, objective: TrainingObjective | None) -> None:
    """Train `genome` with other seeds at the search's fidelity (unless `objective` is None) and
    keep the scores, and their standard deviation with the start trial's, in the study's user
    attr `score_noise`: how far apart two trials of one genome land by luck alone (the report
    draws it as a band)."""
    from nas.objective import TrainingObjective

    noise = dict(study.user_attrs.get(NOISE_ATTR) or {})
    if noise.get("genome") != genome.to_json():
        noise = {"genome": genome.to_json(), "genome_str": str(genome), "values": {}}
    values = dict(noise["values"])
    for seed in NOISE_SEEDS if objective is not None else ():
        if str(seed) not in values:
            values[str(seed)] = TrainingObjective(objective.data, replace(objective.recipe, seed=seed),
                                                  score=objective.score, device=objective.device)(genome, None)
    # The genome's own trial (the samplers' queued start, fdpg's first centre) trained it with seed 0.
    own = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
           if t.user_attrs.get("genome") == genome.to_json() and t.user_attrs.get("reused_from") is None]
    if own:
        values["0"] = own[0].value
    noise["values"] = values
    noise["sigma"] = statistics.stdev(values.values()) if len(values) >= 2 else None
    study.set_user_attr(NOISE_ATTR, noise)


class _Progress:
    """Progress a person can read. On a terminal: a bar over the trials with the ETA and the best
    score so far (the running trial's own bar, over its batches, sits below it). In a log file: one
    line per finished trial with its time, and an ETA line at least once a minute."""

    LOG_EVERY_S = 60.0

    def __init__(self, total: int, done: int, enabled: bool, best: float | None, deadline: float | None,
                 seconds_per_trial: float | None, counted: bool = True):
        from nas.progress import progress_bar

        self.total, self.done, self.enabled, self.best = total, done, enabled, best
        self.counted = counted  # False: `total` is only the plan's guess, the deadline ends the search
        self.deadline, self.estimate = deadline, seconds_per_trial
        self.started = time.time()
        self.finished = 0
        self.tty = enabled and sys.stderr.isatty()
        self.bar = progress_bar(total, enabled, initial=min(done, total), unit="trial", desc="search",
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None
        if enabled and not self.tty:
            self._ticker = threading.Thread(target=self._tick, daemon=True, name="progress")
            self._ticker.start()
        self._refresh()

    def eta_s(self) -> float | None:
        """Seconds left: the remaining trials at the mean measured trial time (the calibrated
        estimate until a trial has finished), cut at the deadline; without a trial count, the
        time to the deadline."""
        per = (time.time() - self.started) / self.finished if self.finished else self.estimate
        left = None if per is None or not self.counted else max(0, self.total - self.done) * per
        if self.deadline is not None:
            until = max(0.0, self.deadline - time.time())
            left = until if left is None else min(left, until)
        return left

    def status(self) -> str:
        from nas.plan import duration

        best = f"best {self.best:.2%}" if self.best is not None else "no result yet"
        return f"{best}, ETA {duration(self.eta_s())}"

    def _refresh(self) -> None:
        self.bar.set_postfix_str(self.status(), refresh=True)

    def _tick(self) -> None:
        from nas.plan import duration

        while not self._stop.wait(self.LOG_EVERY_S):
            with self._lock:
                print(f"search: {self.done}/{self.total} trials, {duration(time.time() - self.started)} elapsed, "
                      f"{self.status()}", file=sys.stderr, flush=True)

    def outcome(self, out: Outcome) -> None:
        with self._lock:
            if out.ok and (self.best is None or out.value > self.best):
                self.best = out.value
            if out.reused_from is None:
                self.finished += 1
            self.done += 1
            if self.done > self.total:  # more (e.g. pruned, shorter) trials than the plan guessed
                self.total = self.bar.total = self.done
            if not self.enabled:
                return
            self.bar.update(1)
            self._refresh()
            what = (f"{out.value:.2%}" if out.value is not None else "-") + f" {out.state.name.lower()}"
            reused = f" (reused #{out.reused_from})" if out.reused_from is not None else ""
            took = f" in {out.seconds:.0f} s" if out.seconds is not None else ""
            self.bar.write(f"trial #{out.number}: {out.genome}  {what}{took}{reused}", file=sys.stderr)

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text, file=sys.stderr)

    def wait(self, n: int) -> None:
        self.note(f"waiting for {plural(n, 'trial')} running in another process "
                  f"(or a dead one, until its heartbeat expires)")

    def close(self) -> None:
        self._stop.set()
        self.bar.close()


class FinalistTime:
    """Keeps the end of a time-limited search for its finalists: no trial starts in the last
    `plan.reserve_for(slowdown)` seconds. The slowdown starts at 1 (the calibration) and follows
    the trials: the median wall time of those trained to their last epoch over the calibrated
    time of one, since whatever else runs on the machine slows trials and finalists alike."""

    def __init__(self, plan: Plan, deadline: float, budget_trials: TrialBudget):
        self.plan, self.deadline, self.budget_trials = plan, deadline, budget_trials
        self.trial_seconds: list[float] = []
        self.budget_trials.deadline = deadline - plan.reserve_s

    def slowdown(self) -> float:
        if not self.trial_seconds:
            return 1.0
        return statistics.median(self.trial_seconds) / self.plan.seconds_per_job_trial

    def outcome(self, out: Outcome) -> None:
        if out.ok and out.reused_from is None and out.seconds:
            self.trial_seconds.append(out.seconds)
            self.budget_trials.deadline = self.deadline - self.plan.reserve_for(self.slowdown())


def run_finalists(study: optuna.Study, candidates: list[FrozenTrial], fidelity: FinalistFidelity, recipe: Recipe,
                  config: SearchConfig, data: CifarSource, *, deadline: float | None, progress: bool,
                  note: Callable[[str], None]) -> list[Finalist]:
    """Retrain the search's best `candidates` at `fidelity` (see nas.finalists), the trials' recipe
    with the finalists' epochs and seed, scored by validation accuracy; none start after `deadline`."""
    from nas.objective import training_objective
    from nas.study import EvaluationFailed

    objective = _LazyObjective(lambda: training_objective(
        replace(recipe, epochs=fidelity.epochs, seed=fidelity.seed), data=data, val_size=fidelity.val_size,
        device=config.device, progress=progress, deadline=deadline))

    def train_one(genome: Genome) -> tuple[float, float, int] | str:
        if deadline is not None and time.time() >= deadline:
            return "the time limit had passed"
        t0 = time.perf_counter()
        try:
            score = objective(genome, None)
        except EvaluationFailed as e:  # a time limit (DeadlineReached) or a divergence
            return str(e)
        return score, time.perf_counter() - t0, len(objective.get().data.train_y)

    out_of_time = deadline is not None and time.time() >= deadline  # e.g. a resumed sweep's used-up share
    return retrain_finalists(study, candidates, fidelity, None if out_of_time else train_one, jobs=config.jobs,
                             note=note)


def make_plan(space: Space, budget: int, config: SearchConfig, recipe: Recipe, *, done: int = 0) -> Plan:
    """The plan of a search (see nas.plan), calibrated on the budget's hand design with the
    threads one of `config.jobs` concurrent trials gets."""
    import torch

    from nas.plan import Plan, calibrate
    from nas.training import bf16_autocast, default_device

    dev = torch.device(config.device) if config.device is not None else default_device()
    hand = project(default_start(space), space, budget, config.tol)
    with _torch_threads_per_job(config.jobs if dev.type == "cpu" else 1):
        cal = calibrate(hand, recipe, dev)
    train_images = config.subset or (TRAIN_IMAGES - config.val_size)
    fin = finalist_fidelity(config, recipe)
    return Plan(space=space.name, searcher=config.searcher, budget=budget, band=band(budget, config.tol),
                device=cal.device, bf16=bf16_autocast(dev, recipe.bf16), train_images=train_images,
                val_images=config.val_size, epochs=recipe.epochs, pruner=config.pruner, trials=config.trials,
                time_limit_s=config.time_limit, calibration=cal, done=done, jobs=config.jobs,
                finalists=config.finalists, finalist_images=TRAIN_IMAGES - config.val_size,
                finalist_epochs=fin.epochs if fin else 0)


def finalist_fidelity(config: SearchConfig, recipe: Recipe) -> FinalistFidelity | None:
    """How the search's finalists are retrained (None: it has none): every training image of the
    split, `config.finalist_epochs` (default the recipe's), the recipe's seed + 1."""
    if not config.finalists:
        return None
    return FinalistFidelity(val_size=config.val_size, epochs=config.finalist_epochs or recipe.epochs,
                            seed=recipe.seed + 1)


def search(space: str | Space, budget: int, config: SearchConfig | None = None, *, storage: str | None = None,
           data_dir: str | Path | None = None, data: CifarSource | None = None, recipe: Recipe | None = None,
           objective: Objective | None = None, progress: bool = True) -> SearchResult:
    """Search `space` for the genome with the best score under `budget` parameters, as `config`
    says (default: `SearchConfig()`).

    Every evaluation is a trial of the study of (space, budget, recipe) in `storage`; trials
    already there count toward `config.trials`, so rerunning the same call resumes. The first
    trial is the space's hand design (its default start, or `config.start`) projected to the
    budget, then the `config.transfer` genomes (e.g. winners of other budgets, projected here),
    so the search can never end below them (fdpg starts its walk there instead). The time limit
    ends the search: no trial starts after it, and the running one stops at its next epoch
    boundary (recorded as failed, retried on a rerun); `trials` None means no count limit.
    `objective` replaces training (tests, benchmarks); by default genomes are trained with
    `recipe` (its epochs included) on CIFAR-100 (`config.subset` training images,
    `config.val_size` held out) from `data` (read once by the caller) or `data_dir`.
    `config.plan` (default: when `progress`) calibrates and prints the plan first; it is skipped
    when `objective` is given. `config.noise_seeds` trains the hand design with two more seeds
    (see `measure_noise`) so the report can show the score's noise."""
    from nas.data import check_subset
    from nas.training import space_recipe

    config = config or SearchConfig()
    sp = load_space(space) if isinstance(space, (str, Path)) else space
    budget = check_budget(budget)
    config.check()
    check_subset(config.subset)  # before the study is created: a failed command leaves nothing behind
    warn_many_jobs(config.jobs, config.trials)
    recipe = recipe or space_recipe(sp)
    if config.start is not None:
        sp.check(config.start, "start genome")
    # a budget the space cannot meet fails here
    hand = project(config.start or default_start(sp), sp, budget, config.tol)
    t0 = time.perf_counter()
    deadline = time.time() + config.time_limit if config.time_limit is not None else None
    url = resolve_storage(storage)
    with warnings.catch_warnings():  # samplers flag their newer options as experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = make_searcher(config, sp, budget, hand)
        walk = isinstance(sampler, FdpgSampler)
        # fdpg needs complete curves for its differences: no pruning
        prune = make_pruner("none" if walk else config.pruner, recipe.epochs)
    study = open_study(url, sp, budget, recipe, tol=config.tol, searcher=config.searcher, score=config.score,
                       subset=config.subset, val_size=config.val_size, sampler=sampler, pruner=prune)
    if not walk:  # fdpg starts its walk from the hand design itself
        enqueue_genomes(study, sp, [("start", hand), *config.transfer])
    own_objective = objective is None
    fidelity = finalist_fidelity(config, recipe) if own_objective else None  # a given objective is the score
    if objective is None:
        from nas.data import CifarSource
        from nas.objective import training_objective
        from nas.training import default_device

        # read at the first training, once for the trials and the finalists
        data = data if data is not None else CifarSource(data_dir, str(config.device or default_device()))
        objective = _LazyObjective(lambda: training_objective(recipe, data=data, score=config.score,
                                                              subset=config.subset, val_size=config.val_size,
                                                              device=config.device, progress=progress,
                                                              deadline=deadline))
    ev = Evaluator(study, objective, config.searcher, recipe.to_dict())
    budget_trials = TrialBudget(ev, config.trials, deadline=deadline)
    done = budget_trials.done()
    the_plan = None
    # e.g. a resumed sweep's budget whose share is used
    no_time_left = config.time_limit is not None and config.time_limit <= 0
    show_plan = config.plan if config.plan is not None else progress
    noise = own_objective and not no_time_left and config.noise_seeds
    if own_objective and not no_time_left and \
            (show_plan or ((noise or fidelity is not None) and config.time_limit is not None)):
        the_plan = make_plan(sp, budget, config, recipe, done=done)  # also sizes the noise and finalists' time
        if show_plan and progress:
            for line in the_plan.lines():
                print(line, file=sys.stderr, flush=True)
    tops = top_trials(study, budget, 1)
    total = config.trials if config.trials is not None else done + (the_plan.expected_trials if the_plan else 0)
    bar = _Progress(total, done, progress, tops[0].value if tops else None, deadline,
                    the_plan.seconds_per_trial if the_plan else None, counted=config.trials is not None)
    budget_trials.on_wait = bar.wait
    on_outcome = bar.outcome
    if deadline is not None and the_plan is not None and the_plan.reserve_s:
        keeper = FinalistTime(the_plan, deadline, budget_trials)

        def on_outcome(out: Outcome) -> None:
            bar.outcome(out)
            keeper.outcome(out)
    bar.note(f"study '{study.study_name}' in {url} ({plural(done, 'trial')} done)")
    measured = all(str(seed) in (study.user_attrs.get(NOISE_ATTR) or {}).get("values", {}) for seed in NOISE_SEEDS)
    train_noise = noise and not measured
    if train_noise and the_plan is not None and the_plan.time_limit_s is not None and \
            the_plan.time_limit_s < NOISE_MIN_TRIALS * the_plan.seconds_per_trial:
        train_noise = False  # two trainings would eat most of a short search
        bar.note(f"not measuring the score's seed-to-seed noise: it costs two trials, and the time limit leaves "
                 f"room for about {plural(the_plan.expected_trials, 'trial')}")
    try:
        with warnings.catch_warnings(), _torch_threads_per_job(config.jobs):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if train_noise:
                bar.note(f"measuring the seed-to-seed noise of the score on {hand} (seeds {NOISE_SEEDS})")
                measure_noise(study, hand, objective.get())
            stopped = run_trials(ev, sp, budget, config.tol, budget_trials, sampler, config.jobs,
                                 on_outcome=on_outcome)
            finalists = [] if fidelity is None else run_finalists(
                study, pick(top_trials(study, budget, None), config.finalists, config.finalist_pick == "diverse"),
                fidelity, recipe, config, data, deadline=deadline, progress=progress, note=bar.note)
        if noise:
            measure_noise(study, hand, None)  # adds the start trial's own score
    except KeyboardInterrupt:
        ev.interrupt_running()
        raise
    finally:
        bar.close()
    return SearchResult(study.study_name, url, config.searcher, budget, config.score, budget_trials.done(),
                        top_trials(study, budget, None), stopped, time.perf_counter() - t0, finalists)
