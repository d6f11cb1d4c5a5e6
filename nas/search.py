"""`nas search`: one budget's search, as a short sequence of steps over the samplers
(`nas.samplers`), the trial loop (`nas.trials`) and the finalists (`nas.finalists`).

Every evaluation is a trial of the study of (space, budget, recipe), evaluated through
`nas.evaluator.Evaluator`; only genomes inside the budget band [(1 - tol) * B, B] are evaluated.
Its settings are a `SearchConfig`; what it leaves is a `SearchResult`.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.budget import DEFAULT_TOL, band, check_budget, project
from nas.errors import NasError, warn
from nas.evaluator import Evaluator, Outcome
from nas.finalists import FINALIST_PICKS, Finalist, FinalistFidelity, finalist_seconds, pick, retrain_finalists
from nas.finalists import winner as finalist_winner
from nas.progress import SearchProgress
from nas.samplers import SEARCHERS, WorkerSeeded, make_pruner, make_searcher, searcher_needs
from nas.spaces import Genome, Space, load_space
from nas.storage import open_storage, storage_url
from nas.study import DEFAULT_VAL_SIZE, Objective, open_study, sampler_needs, top_trials
from nas.text import plural
from nas.trials import TrialQuota, enqueue_genomes, flops_ratios, quantile, run_trials

if TYPE_CHECKING:
    from nas.data import CifarSource
    from nas.objective import TrainingObjective
    from nas.plan import Plan
    from nas.training import Recipe

TRAIN_IMAGES = 50_000  # CIFAR-100's training set, before the validation split


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs: what `nas search` options set, and what `nas sweep` passes to every
    budget's search (it sets `time_limit` and `transfer` per budget itself)."""

    searcher: str = "tpe"
    trials: int | None = 40  # finished trials of this searcher in the study; None: no count limit
    jobs: int = 1  # trials trained at once
    score: str = "val"  # "val" or "asymptote" (see nas.study.SCORES)
    pruner: str = "hyperband"  # for samplers whose trials may be pruned (SamplerNeeds.prunable)
    seed: int = 0  # sampler seed (see WorkerSeeded)
    tol: float = DEFAULT_TOL  # budget band [(1 - tol) * B, B]
    subset: int | None = None  # training images per trial (None: all but the validation split)
    val_size: int = DEFAULT_VAL_SIZE
    start: Genome | None = None  # the first trial (default: the space's hand design)
    device: str | None = None
    time_limit: float | None = None  # seconds; no trial starts after it
    transfer: Sequence[tuple[str, Genome]] = ()  # (label, genome) queued after the start (budget transfer)
    plan: bool | None = None  # calibrate and print the plan first (default: with progress)
    noise_seeds: bool = True  # train the hand design with two more seeds (see measure_noise)
    finalists: int = 0  # best genomes retrained at the finalist fidelity to choose the winner
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


def default_start(space: Space) -> Genome:
    """The hand design, every search's first trial, from the brief's design lessons: one block per stage (the reference
    study's best plain member), widths doubling stage by stage ("wider blocks deeper in");
    the space's family chooses it (`Family.default_start`)."""
    return space.family.default_start(space)


@dataclass
class SearchResult:
    """What a search left in its study: the best in-budget trials, best first, and its winner:
    the best of them after retraining the finalists (see nas.finalists), else the best trial."""

    study_name: str
    storage: str
    searcher: str
    budget: int
    score: str
    trials: int  # finished evaluations of this searcher in the study
    top: list[FrozenTrial]  # every finished in-budget trial, one per genome, best first
    stopped: str  # why the search ended
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
        warn(
            f"--jobs {jobs} is far above the {plural(cores, 'CPU core')}: "
            f"up to {min(jobs, trials or jobs):,} trainings "
            f"run at once, one CPU thread each, so each runs slower and the search is not faster"
        )


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
            values[str(seed)] = TrainingObjective(
                objective.data, replace(objective.recipe, seed=seed), score=objective.score, device=objective.device
            )(genome, None)
    # The genome's own trial (the samplers' queued start, fdpg's first centre) trained it with seed 0.
    own = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("genome") == genome.to_json() and t.user_attrs.get("reused_from") is None
    ]
    if own:
        values["0"] = own[0].value
    noise["values"] = values
    noise["sigma"] = statistics.stdev(values.values()) if len(values) >= 2 else None
    study.set_user_attr(NOISE_ATTR, noise)


class FinalistTime:
    """Keeps the end of a time-limited search for its finalists: no trial starts in the last
    `plan.reserve_for(...)` seconds. After each trial the reserve is made from the genomes that
    would be the finalists now (`candidates()`): each one's measured trial time times the
    finalist fidelity's (`plan.finalist_scale`), the calibrated time for those not yet there;
    the slowdown (the median trial's wall time over the plan's typical trial) scales what is
    estimated, since whatever else runs on the machine slows trials and finalists alike."""

    def __init__(self, plan: Plan, deadline: float, quota: TrialQuota, candidates: Callable[[], list[FrozenTrial]]):
        self.plan, self.deadline, self.quota, self.candidates = plan, deadline, quota, candidates
        self.trial_seconds: list[float] = []
        self.quota.deadline = deadline - plan.reserve_s

    def slowdown(self) -> float:
        if not self.trial_seconds:
            return 1.0
        return statistics.median(self.trial_seconds) / self.plan.seconds_per_job_trial

    def finalist_seconds(self, slowdown: float) -> list[float]:
        """Each finalist's estimated training time, the genomes chosen now first."""
        plan = self.plan
        estimates = (finalist_seconds(t, plan.finalist_scale) for t in self.candidates())
        measured = [s for s in estimates if s is not None]
        return measured + [plan.seconds_per_finalist * slowdown] * max(0, plan.finalists - len(measured))

    def outcome(self, out: Outcome) -> None:
        if out.ok and out.reused_from is None and out.seconds:
            self.trial_seconds.append(out.seconds)
            slowdown = self.slowdown()
            self.quota.deadline = self.deadline - self.plan.reserve_for(slowdown, self.finalist_seconds(slowdown))


def run_finalists(
    study: optuna.Study,
    candidates: list[FrozenTrial],
    fidelity: FinalistFidelity,
    recipe: Recipe,
    config: SearchConfig,
    data: CifarSource,
    *,
    deadline: float | None,
    progress: bool,
    note: Callable[[str], None],
    finalist_scale: float | None = None,
) -> list[Finalist]:
    """Retrain the search's best `candidates` at `fidelity` (see nas.finalists), the trials' recipe
    with the finalists' epochs and seed, scored by validation accuracy; none start after `deadline`,
    nor (given the plan's `finalist_scale`) one whose trial time says it would not end before it."""
    from nas.evaluator import EvaluationFailed
    from nas.objective import training_objective

    objective = _LazyObjective(
        lambda: training_objective(
            replace(recipe, epochs=fidelity.epochs, seed=fidelity.seed),
            data=data,
            val_size=fidelity.val_size,
            device=config.device,
            progress=progress,
            deadline=deadline,
        )
    )

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
    return retrain_finalists(
        study,
        candidates,
        fidelity,
        None if out_of_time else train_one,
        jobs=config.jobs,
        note=note,
        deadline=deadline,
        finalist_scale=finalist_scale,
    )


def make_plan(
    space: Space, budget: int, config: SearchConfig, recipe: Recipe, *, done: int = 0, noise_trials: int | None = None
) -> Plan:
    """The plan of a search (see nas.plan), calibrated on the budget's hand design with the
    threads one of `config.jobs` concurrent trials gets, a typical trial's time scaled from it by
    FLOPs (the median of `flops_ratios`; a winner's at WINNER_FLOPS_QUANTILE). `noise_trials`:
    the noise measurement's trainings still to run (default: all of them when `config.noise_seeds`)."""
    import torch

    from nas.plan import TIME_PER_FLOPS_EXPONENT, WINNER_FLOPS_QUANTILE, Plan, calibrate
    from nas.training import bf16_autocast, default_device, threads_per_job

    dev = torch.device(config.device) if config.device is not None else default_device()
    hand = project(default_start(space), space, budget, config.tol)
    with threads_per_job(config.jobs if dev.type == "cpu" else 1):
        cal = calibrate(hand, recipe, dev)
    train_images = config.subset or (TRAIN_IMAGES - config.val_size)
    fin = finalist_fidelity(config, recipe)
    ratios = flops_ratios(space, budget, config.tol, hand)
    return Plan(
        space=space.name,
        searcher=config.searcher,
        budget=budget,
        band=band(budget, config.tol),
        device=cal.device,
        bf16=bf16_autocast(dev, recipe.bf16),
        train_images=train_images,
        val_images=config.val_size,
        epochs=recipe.epochs,
        pruner=config.pruner if searcher_needs(config.searcher).prunable else "none",
        trials=config.trials,
        time_limit_s=config.time_limit,
        calibration=cal,
        done=done,
        jobs=config.jobs,
        finalists=config.finalists,
        finalist_images=TRAIN_IMAGES - config.val_size,
        finalist_epochs=fin.epochs if fin else 0,
        finalist_pick=config.finalist_pick,
        cost_factor=quantile(ratios, 0.5) ** TIME_PER_FLOPS_EXPONENT,
        winner_cost_factor=quantile(ratios, WINNER_FLOPS_QUANTILE) ** TIME_PER_FLOPS_EXPONENT,
        noise_trials=(len(NOISE_SEEDS) if config.noise_seeds else 0) if noise_trials is None else noise_trials,
    )


def finalist_fidelity(config: SearchConfig, recipe: Recipe) -> FinalistFidelity | None:
    """How the search's finalists are retrained (None: it has none): every training image of the
    split, `config.finalist_epochs` (default the recipe's), the recipe's seed + 1."""
    if not config.finalists:
        return None
    return FinalistFidelity(
        val_size=config.val_size, epochs=config.finalist_epochs or recipe.epochs, seed=recipe.seed + 1
    )


@dataclass
class _Run:
    """One search's parts, as its steps build them."""

    space: Space
    budget: int
    config: SearchConfig
    recipe: Recipe
    hand: Genome
    url: str
    deadline: float | None
    study: optuna.Study = None
    sampler: optuna.samplers.BaseSampler = None
    objective: Objective | _LazyObjective = None
    fidelity: FinalistFidelity | None = None
    data: CifarSource | None = None
    plan: Plan | None = None


def search(
    space: str | Space,
    budget: int,
    config: SearchConfig | None = None,
    *,
    storage: str | None = None,
    data_dir: str | Path | None = None,
    data: CifarSource | None = None,
    recipe: Recipe | None = None,
    objective: Objective | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search `space` for the genome with the best score under `budget` parameters, as `config`
    says (default: `SearchConfig()`).

    Every evaluation is a trial of the study of (space, budget, recipe) in `storage`; trials
    already there count toward `config.trials`, so rerunning the same call resumes. The first
    trial is the space's hand design (its default start, or `config.start`) projected to the
    budget, then the `config.transfer` genomes (e.g. winners of other budgets, projected here),
    so the search can never end below them (a sampler that proposes them itself, as fdpg's walk,
    starts there instead). The time limit ends the search: no trial starts after it, and the
    running one stops at its next epoch boundary (recorded as failed, retried on a rerun);
    `trials` None means no count limit. `objective` replaces training (tests, benchmarks); by
    default genomes are trained with `recipe` (its epochs included) on CIFAR-100
    (`config.subset` training images, `config.val_size` held out) from `data` (read once by the
    caller) or `data_dir`. `config.plan` (default: when `progress`) calibrates and prints the
    plan first; it is skipped when `objective` is given. `config.noise_seeds` trains the hand
    design with two more seeds (see `measure_noise`) so the report can show the score's noise.
    Every argument is checked before anything is written or trained."""
    from nas.training import threads_per_job

    t0 = time.perf_counter()
    run = _checked_run(space, budget, config or SearchConfig(), recipe, storage, data_dir, data, objective)
    _open_study(run)
    _prepare_objective(run, objective, data_dir, progress)
    ev = Evaluator(run.study, run.objective, run.config.searcher, run.recipe.to_dict())
    quota = TrialQuota(ev, run.config.trials, deadline=run.deadline)
    done = quota.done()
    run.plan = _print_plan(run, objective is None, done, progress)
    if run.config.trials is None and run.plan is not None and isinstance(run.sampler, WorkerSeeded):
        run.sampler.expect(done + run.plan.expected_trials)  # a time limit: as many as the plan says fit
    bar, on_outcome = _progress(run, quota, done, progress)
    train_noise = _noise_wanted(run, objective is None, bar)
    try:
        with warnings.catch_warnings(), threads_per_job(run.config.jobs):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if train_noise:
                bar.note(f"measuring the seed-to-seed noise of the score on {run.hand} (seeds {NOISE_SEEDS})")
                measure_noise(run.study, run.hand, run.objective.get())
            stopped = run_trials(
                ev, run.space, run.budget, run.config.tol, quota, run.sampler, run.config.jobs, on_outcome=on_outcome
            )
            finalists = _finalists(run, progress, bar.note)
        if objective is None and run.config.noise_seeds and not _out_of_time(run.config):
            measure_noise(run.study, run.hand, None)  # adds the start trial's own score
    except KeyboardInterrupt:
        ev.interrupt_running()
        raise
    finally:
        bar.close()
    top = top_trials(run.study, run.budget, None)
    return SearchResult(
        run.study.study_name,
        run.url,
        run.config.searcher,
        run.budget,
        run.config.score,
        quota.done(),
        top,
        stopped,
        time.perf_counter() - t0,
        finalists,
    )


def _checked_run(space, budget, config, recipe, storage, data_dir, data, objective) -> _Run:
    """Every argument checked (a failed command leaves nothing behind), nothing written yet."""
    from nas.data import check_data, check_subset
    from nas.training import space_recipe

    sp = load_space(space) if isinstance(space, (str, Path)) else space
    budget = check_budget(budget)
    config.check()
    check_subset(config.subset)
    url = storage_url(storage)  # a storage that cannot be named fails here; nothing is created yet
    warn_many_jobs(config.jobs, config.trials)
    if config.start is not None:
        sp.check(config.start, "start genome")
    hand = project(config.start or default_start(sp), sp, budget, config.tol)  # a budget the space cannot meet
    if objective is None and data is None:
        check_data(data_dir)  # last: the data folder holds CIFAR-100, or it is downloaded now
    deadline = time.time() + config.time_limit if config.time_limit is not None else None
    return _Run(sp, budget, config, recipe or space_recipe(sp), hand, url, deadline, data=data)


def _open_study(run: _Run) -> None:
    """The study with its sampler and pruner; the start and transfer genomes queued as its first
    trials unless the sampler proposes them itself."""
    c = run.config
    st = open_storage(run.url)
    with warnings.catch_warnings():  # samplers flag their newer options as experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        run.sampler = make_searcher(
            c.searcher, run.space, run.budget, c.tol, run.hand, c.transfer, seed=c.seed, trials=c.trials, storage=st
        )
        needs = sampler_needs(run.sampler)
        pruner = make_pruner(c.pruner if needs.prunable else "none", run.recipe.epochs)
    run.study = open_study(
        st,
        run.space,
        run.budget,
        run.recipe,
        tol=c.tol,
        searcher=c.searcher,
        score=c.score,
        subset=c.subset,
        val_size=c.val_size,
        sampler=run.sampler,
        pruner=pruner,
    )
    if not needs.proposes_start:
        enqueue_genomes(run.study, run.space, [("start", run.hand), *c.transfer])


def _prepare_objective(run: _Run, objective: Objective | None, data_dir, progress: bool) -> None:
    """The trials' objective: the one given, or training on CIFAR-100, read at the first trial."""
    run.objective = objective
    if objective is not None:
        return
    from nas.data import CifarSource
    from nas.objective import training_objective
    from nas.training import default_device

    c = run.config
    run.fidelity = finalist_fidelity(c, run.recipe)
    run.data = run.data or CifarSource(data_dir, str(c.device or default_device()))
    run.objective = _LazyObjective(
        lambda: training_objective(
            run.recipe,
            data=run.data,
            score=c.score,
            subset=c.subset,
            val_size=c.val_size,
            device=c.device,
            progress=progress,
            deadline=run.deadline,
        )
    )


def _out_of_time(config: SearchConfig) -> bool:
    return config.time_limit is not None and config.time_limit <= 0  # e.g. a resumed sweep's used-up share


def _print_plan(run: _Run, own_objective: bool, done: int, progress: bool) -> Plan | None:
    """The calibrated plan, printed when asked; also made (unprinted) when the noise measurement
    or the finalists need its time estimates."""
    c = run.config
    show = c.plan if c.plan is not None else progress
    timed = c.time_limit is not None and (c.noise_seeds or run.fidelity is not None)
    if not own_objective or _out_of_time(c) or not (show or timed):
        return None
    plan = make_plan(run.space, run.budget, c, run.recipe, done=done, noise_trials=len(_noise_seeds_left(run)))
    if show and progress:
        for line in plan.lines():
            print(line, file=sys.stderr, flush=True)
    return plan


def _progress(run: _Run, quota: TrialQuota, done: int, progress: bool) -> tuple[SearchProgress, Callable]:
    """The progress display, and what each finished trial tells: the display, and the finalists'
    time keeper when the time limit must leave room for them."""
    c, plan = run.config, run.plan
    tops = top_trials(run.study, run.budget, 1)
    total = c.trials if c.trials is not None else done + (plan.expected_trials if plan else 0)
    bar = SearchProgress(
        total,
        done,
        progress,
        tops[0].value if tops else None,
        run.deadline,
        plan.seconds_per_trial if plan else None,
        counted=c.trials is not None,
    )
    quota.on_wait = bar.wait
    bar.note(f"study '{run.study.study_name}' in {run.url} ({plural(done, 'trial')} done)")
    if run.deadline is None or plan is None or not plan.reserve_s:
        return bar, bar.outcome
    keeper = FinalistTime(plan, run.deadline, quota, lambda: _finalist_candidates(run))

    def on_outcome(out: Outcome) -> None:
        bar.outcome(out)
        keeper.outcome(out)

    return bar, on_outcome


def _noise_seeds_left(run: _Run) -> list[int]:
    """The noise seeds whose hand-design training the study does not hold yet (none unless asked)."""
    if not run.config.noise_seeds:
        return []
    noise = run.study.user_attrs.get(NOISE_ATTR) or {}
    values = noise.get("values", {}) if noise.get("genome") == run.hand.to_json() else {}
    return [seed for seed in NOISE_SEEDS if str(seed) not in values]


def _noise_wanted(run: _Run, own_objective: bool, bar: SearchProgress) -> bool:
    """Whether to train the hand design with the noise seeds now: not yet measured, and the time
    limit leaves room for it."""
    if not (own_objective and _noise_seeds_left(run)) or _out_of_time(run.config):
        return False
    plan = run.plan
    if (
        plan is not None
        and plan.time_limit_s is not None
        and plan.time_limit_s < NOISE_MIN_TRIALS * plan.seconds_per_trial
    ):
        bar.note(
            f"not measuring the score's seed-to-seed noise: it costs two trials, and the time limit leaves "
            f"room for about {plural(plan.expected_trials, 'trial')}"
        )
        return False
    return True


def _finalists(run: _Run, progress: bool, note: Callable[[str], None]) -> list[Finalist]:
    if run.fidelity is None:
        return []
    return run_finalists(
        run.study,
        _finalist_candidates(run),
        run.fidelity,
        run.recipe,
        run.config,
        run.data,
        deadline=run.deadline,
        progress=progress,
        note=note,
        finalist_scale=run.plan.finalist_scale if run.plan is not None else None,
    )


def _finalist_candidates(run: _Run) -> list[FrozenTrial]:
    """The trials whose genomes would be the finalists if the search stopped now."""
    c = run.config
    return pick(top_trials(run.study, run.budget, None), c.finalists, c.finalist_pick == "diverse")
