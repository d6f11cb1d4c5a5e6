"""Searchers: the finite-difference projected gradient walk (fdpg) and Optuna's samplers.

Both evaluate genomes through `nas.study.Evaluator`, so every evaluation is a trial of the
study of (space, budget, recipe), and both only ever evaluate genomes inside the budget band
[(1 - tol) * B, B]: sampled genes are projected before training, and fdpg's probes and steps
are projected too. `search()` is what `nas search` runs.

fdpg (the reference study's method, see docs/brief.md): at a centre genome c, probe each integer
coordinate q_i by a forward step (one grid step; about 12% for widths, since +1 channel is
noise) and project the probe back onto the band. In normalised coordinates u = log(q) the
probes' displacements D and accuracy differences dA give grad Acc by least squares
(D g = dA); grad N comes from the exact counter. The step is eta along
P(g) = g - (<g, n> / <n, n>) n with n = grad N, rounded to the grid and projected onto the band.
A step that does not beat its centre is taken back and eta halved. The walk stops when the
trial budget is spent, when `patience` steps in a row found nothing better, or when no step
leaves the centre. A rerun replays the walk from the study's records without training again.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.budget import band, check_budget, param_gradient, project
from nas.errors import NasError, warn
from nas.spaces import Genome, Space, load_space
from nas.study import (Evaluator, Objective, Outcome, counts_as_done, fail_stale_trials, heartbeat_seconds,
                       open_study, resolve_storage, searcher_trials, top_trials, trial_genome)
from nas.text import plural

if TYPE_CHECKING:
    from nas.data import CifarSource
    from nas.objective import TrainingObjective
    from nas.plan import Plan
    from nas.training import Recipe

SAMPLERS = ("tpe", "cmaes", "gp", "random", "nsga2")
SEARCHERS = ("fdpg", *SAMPLERS)
PRUNERS = ("hyperband", "median", "none")
FDPG_ETA = 0.5          # step length in log-coordinates (0.5 ~ a 65% change of one gene)
FDPG_REL_STEP = 0.12    # width probes: this fraction of the width, at least one grid step
FDPG_PATIENCE = 3
SCALE_PLACEHOLDER = 16  # the value a sampler leaves in a scale coordinate before projection
TRAIN_IMAGES = 50_000   # CIFAR-100's training set, before the validation split
TRIALS_REACHED = "trial limit reached"  # SearchResult.stopped when `trials` evaluations are done
TIME_REACHED = "time limit reached"     # ... and when the time limit passed
SURPLUS = "not needed: other workers claimed the last trials first"
EXHAUSTED_AFTER = 30    # proposals in a row that bring a sampler no new genome end its search

T = TypeVar("T")


# ---------------------------------------------------------------- Optuna samplers

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
    """The sampler's genome, projected into the budget band (the suggested values stay in
    trial.params; the projected genome is what gets trained and recorded)."""
    return project(suggest_genome(trial, space), space, budget, tol)


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
                mine = searcher_trials(self.ev.study, self.ev.searcher)
                done = sum(counts_as_done(t) for t in mine)
                running = sum(t.state == TrialState.RUNNING for t in mine)
                if done >= self.trials:
                    return None
                if done + running < self.trials:
                    trial = self.ev.ask()
                    self._mine.add(trial.number)
                    if not self._surplus(trial):
                        return trial
                    self.ev.fail(trial, SURPLUS, retryable=True)
                    continue
                foreign = sum(t.state == TrialState.RUNNING and t.number not in self._mine for t in mine)
            if foreign <= 0:  # all running trials are this process's: they will finish the budget
                return None
            if self.on_wait:
                self.on_wait(foreign)
            time.sleep(heartbeat_seconds())


    def _surplus(self, trial: optuna.Trial) -> bool:
        """Whether this searcher's trials numbered below `trial`, done or running, fill the budget:
        workers that claim the last trial at once all ask one, and all but the first give it back."""
        ahead = [t for t in searcher_trials(self.ev.study, self.ev.searcher) if t.number < trial.number]
        return sum(counts_as_done(t) or t.state == TrialState.RUNNING for t in ahead) >= self.trials


def parallel_map(fn: Callable[[T], Any], items: Iterable[T], jobs: int) -> list[Any]:
    """`[fn(x) for x in items]` on up to `jobs` daemon threads (daemon: after Ctrl-C the process
    exits without waiting for a training run; its trial is marked by the main thread)."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    nxt = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while not errors:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def sampler_search(ev: Evaluator, space: Space, budget: int, tol: float, budget_trials: TrialBudget,
                   jobs: int = 1, on_outcome: Callable[[Outcome], None] | None = None,
                   exhausted_after: int = EXHAUSTED_AFTER) -> str:
    """Run the study's sampler until the trial budget is spent; returns why it stopped.

    --trials counts distinct trainings. A proposal of a genome the study already holds (trained,
    pruned, or running in any worker) is a duplicate trial, and one that cannot be projected into
    the band fails; neither counts, and the sampler is asked again, with a random point of the
    space queued as the next trial: in a small band (a 1k budget) a model-based sampler keeps
    proposing what it has, and the random point moves it on. `exhausted_after` such proposals
    in a row in one worker end the search: the space holds nothing new."""
    exhausted: list[str] = []

    def worker(_: int) -> None:
        repeats = 0
        while not exhausted and (trial := budget_trials.claim()) is not None:
            try:
                genome = propose(trial, space, budget, tol)
            except NasError as e:  # a corner of the space the band cannot be reached from
                ev.fail(trial, f"projection: {e}", retryable=True)  # nothing trained: not counted
                out = None
            else:
                out = ev.evaluate(genome, role=trial.user_attrs.get("role", "sample"), trial=trial, distinct=True)
            if out is not None and out.duplicate_of is None:
                repeats = 0
                if on_outcome:
                    on_outcome(out)
                continue
            novel = novel_params(space, budget, tol, ev.study, random.Random(trial.number))
            if novel is not None and (repeats := repeats + 1) < exhausted_after:
                ev.study.enqueue_trial(novel, user_attrs={"role": "explore"})
            else:
                exhausted.append(f"stopped early: the sampler's last proposals were all genomes already in the "
                                 f"study and {NOVEL_DRAWS} random points of the space found no new one either, "
                                 f"so the band looks exhausted")

    parallel_map(worker, range(jobs), jobs)
    return exhausted[0] if exhausted else budget_trials.why_stopped()

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


# ---------------------------------------------------------------- fdpg

def log_offsets(space: Space) -> np.ndarray:
    """Per coordinate, what to add before taking the log (1 for genes that may be 0)."""
    return np.array([1.0 if space.genes[n].minimum == 0 else 0.0 for n, _ in space.coords])


def to_log(space: Space, genome: Genome) -> np.ndarray:
    """Normalised coordinates u = log(q): equal steps are equal relative changes of any gene."""
    return np.log(np.array(space.vector(genome), dtype=float) + log_offsets(space))


def from_log(space: Space, u: np.ndarray, options: dict[str, Any]) -> Genome:
    return space.from_vector(list(np.exp(u) - log_offsets(space)), options)


def midpoint(space: Space) -> Genome:
    """The centre of every gene's range (geometric for log-scale genes)."""
    values = []
    for name, _ in space.coords:
        g = space.genes[name]
        values.append(math.sqrt(g.minimum * g.maximum) if g.log else (g.minimum + g.maximum) / 2)
    return space.from_vector(values)


def default_start(space: Space) -> Genome:
    """fdpg's default start, from the brief's design lessons: one block per stage (the reference
    study's best plain member), widths doubling stage by stage ("wider blocks deeper in");
    the space's family chooses it (`Family.default_start`)."""
    return space.family.default_start(space)


def tangent(g: np.ndarray, n: np.ndarray) -> np.ndarray:
    """P(g) = g - (<g, n> / <n, n>) n: the part of g along the surface N = const."""
    nn = float(n @ n)
    return g - (float(g @ n) / nn) * n if nn > 0 else g


def log_param_gradient(space: Space, genome: Genome) -> np.ndarray:
    """dN/du_i = dN/dq_i * dq_i/du_i, with u = log(q + offset)."""
    q = np.array(space.vector(genome), dtype=float) + log_offsets(space)
    return np.array(param_gradient(space, genome)) * q


def estimate_gradient(displacements: np.ndarray, differences: np.ndarray) -> np.ndarray:
    """grad Acc in u from probes: least squares D g = dA. Projected probes all lie near the
    surface N = const, so D is nearly rank-deficient along grad N; singular values below 5% of
    the largest are cut instead of amplifying noise (that direction is projected out anyway)."""
    g, *_ = np.linalg.lstsq(displacements, differences, rcond=0.05)
    return g


def probe_genomes(space: Space, centre: Genome, budget: int, tol: float,
                  rel_step: float = FDPG_REL_STEP) -> list[Genome]:
    """One projected probe per coordinate, distinct from the centre and from each other. Widths
    step up by `rel_step`; depth, expansion and kernel step one grid point down where they can
    (the projection then widens the model: that is the trade-off the budget forces), else up."""
    v = space.vector(centre)
    out: list[Genome] = []
    for i, (name, _) in enumerate(space.coords):
        gene = space.genes[name]
        width = gene.role == "width" and gene.choices is None
        h = max(1, round(rel_step * v[i] / gene.step)) if width else 1
        for steps in (h, 2 * h, 4 * h):  # a small step can round back onto the centre
            first, second = (steps, -steps) if width else (-steps, steps)
            moved = gene.shift(v[i], first)
            if moved is None:
                moved = gene.shift(v[i], second)
            if moved is None:
                break
            w = list(v)
            w[i] = moved
            try:
                p = project(space.from_vector(w, centre.options), space, budget, tol)
            except NasError:
                break
            if p != centre and p not in out:
                out.append(p)
                break
    return out


def gradient_step(space: Space, centre: Genome, direction: np.ndarray, eta: float, budget: int, tol: float,
                  seen: set[Genome] | frozenset[Genome] = frozenset()) -> tuple[Genome, float] | None:
    """The point centre + eta * direction (in u), rounded and projected, and the eta used.
    While rounding lands on the centre, eta doubles (at most 3 times); when it lands on a genome
    already evaluated (`seen`), shorter steps are tried. None when no new point is found."""
    u = to_log(space, centre)

    def at(scale: float) -> Genome | None:
        try:
            return project(from_log(space, u + eta * scale * direction, centre.options), space, budget, tol)
        except NasError:
            return None

    for scale in (1, 2, 4, 8):
        x = at(scale)
        if x is None or x == centre:
            continue
        if x not in seen:
            return x, eta * scale
        for shorter in (scale / 2, scale / 4, scale / 8):
            y = at(shorter)
            if y is not None and y != centre and y not in seen:
                return y, eta * shorter
        return None
    return None


@dataclass
class _Replay:
    """fdpg's finished evaluations in the study, by (step, role, genome): a rerun walks the same
    path and takes these values instead of training again."""

    done: dict[tuple[int, str, str], FrozenTrial]

    @classmethod
    def of(cls, ev: Evaluator) -> _Replay:
        done = {}
        for t in searcher_trials(ev.study, ev.searcher):
            g = trial_genome(t)
            if counts_as_done(t) and g is not None:
                done.setdefault((t.user_attrs.get("step"), t.user_attrs.get("role"), g.key()), t)
        return cls(done)

    def get(self, genome: Genome, role: str, step: int) -> Outcome | None:
        t = self.done.get((step, role, genome.key()))
        if t is None:
            return None
        value = t.value if t.state == TrialState.COMPLETE else None
        return Outcome(t.number, t.state, value, genome, t.user_attrs.get("reused_from"))


class _Exhausted(Exception):
    pass


def fdpg_search(ev: Evaluator, space: Space, budget: int, tol: float, budget_trials: TrialBudget, *,
                start: Genome | None = None, jobs: int = 1, eta: float = FDPG_ETA,
                rel_step: float = FDPG_REL_STEP, patience: int = FDPG_PATIENCE,
                on_outcome: Callable[[Outcome], None] | None = None) -> str:
    """The finite-difference projected-gradient walk (module docstring); returns why it stopped."""
    replay = _Replay.of(ev)

    def run(genome: Genome, role: str, step: int) -> Outcome:
        out = replay.get(genome, role, step)
        if out is None:
            trial = budget_trials.claim()
            if trial is None:
                raise _Exhausted
            out = ev.evaluate(genome, role=role, step=step, trial=trial)
            if on_outcome:
                on_outcome(out)
        return out

    centre = project(start or default_start(space), space, budget, tol)
    step, seen = 0, {centre}
    try:
        first = run(centre, "centre", step)
        if not first.ok:
            raise NasError(f"fdpg: the start genome {centre} could not be evaluated (trial #{first.number}: "
                           f"{first.state.name.lower()}); pick another with --start")
        value, best, since_best = first.value, first.value, 0
        direction: np.ndarray | None = None
        probed: list[Outcome] = []
        while True:
            if direction is None:  # a new centre: probe every coordinate
                probes = probe_genomes(space, centre, budget, tol, rel_step)
                seen.update(probes)
                probed = [o for o in parallel_map(lambda p: run(p, "neighbour", step), probes, jobs) if o.ok]
                if not probed:
                    return "no neighbour of the centre could be evaluated"
                u0 = to_log(space, centre)
                disp = np.array([to_log(space, o.genome) - u0 for o in probed])
                diff = np.array([o.value - value for o in probed])
                p = tangent(estimate_gradient(disp, diff), log_param_gradient(space, centre))
                if not np.linalg.norm(p) > 0:
                    return "the projected gradient vanished"
                direction = p / np.linalg.norm(p)
            found = gradient_step(space, centre, direction, eta, budget, tol, seen)
            if found is None:
                return "no new step from the centre (converged on the grid)"
            x, eta = found
            seen.add(x)
            step += 1
            out = run(x, "centre", step)
            # The next centre is the best genome evaluated around this one, the step first.
            cands = [o for o in (out, *probed) if o.ok]
            top = max(cands, key=lambda o: o.value, default=None)
            if top is not None and top.value > value:
                centre, value, direction = top.genome, top.value, None
            else:
                eta /= 2  # take the step back and try a shorter one along the same direction
            probed = []
            if value > best:
                best, since_best = value, 0
            else:
                since_best += 1
            if since_best >= patience:
                return f"no improvement in {plural(patience, 'step')}"
    except _Exhausted:
        return budget_trials.why_stopped()


# ---------------------------------------------------------------- search()

@dataclass
class SearchResult:
    """What a search left in its study: the best in-budget trials, best first."""

    study_name: str
    storage: str
    searcher: str
    budget: int
    score: str
    trials: int             # finished evaluations of this searcher in the study
    top: list[FrozenTrial]
    stopped: str            # why the search ended
    wall_time_s: float

    @property
    def best(self) -> FrozenTrial | None:
        return self.top[0] if self.top else None


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


def measure_noise(study: optuna.Study, objective: TrainingObjective, genome: Genome) -> None:
    """Train `genome` with other seeds at the search's fidelity and keep the scores, and their
    standard deviation with the start trial's, in the study's user attr `score_noise`: how far
    apart two trials of one genome land by luck alone (the report draws it as a band)."""
    import statistics

    from nas.objective import TrainingObjective

    noise = dict(study.user_attrs.get(NOISE_ATTR) or {})
    if noise.get("genome") != genome.to_json():
        noise = {"genome": genome.to_json(), "genome_str": str(genome), "values": {}}
    values = dict(noise["values"])
    for seed in NOISE_SEEDS:
        if str(seed) not in values:
            values[str(seed)] = TrainingObjective(objective.data, replace(objective.recipe, seed=seed),
                                                  score=objective.score, device=objective.device)(genome, None)
    start = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.user_attrs.get("seed") == "start" and t.user_attrs.get("genome") == genome.to_json()]
    if start:
        values["0"] = start[0].value
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


def make_plan(space: Space, budget: int, searcher: str, recipe: Recipe, *, trials: int | None,
              time_limit: float | None, subset: int | None, val_size: int, tol: float, pruner: str,
              device: str | None, done: int = 0, jobs: int = 1) -> Plan:
    """The plan of a search (see nas.plan), calibrated on the budget's hand design with the
    threads one of `jobs` concurrent trials gets."""
    from nas.plan import Plan, calibrate
    from nas.training import bf16_autocast, default_device

    import torch

    dev = torch.device(device) if device is not None else default_device()
    hand = project(default_start(space), space, budget, tol)
    with _torch_threads_per_job(jobs if dev.type == "cpu" else 1):
        cal = calibrate(hand, recipe, dev)
    train_images = subset or (TRAIN_IMAGES - val_size)
    return Plan(space=space.name, searcher=searcher, budget=budget, band=band(budget, tol), device=cal.device,
                bf16=bf16_autocast(dev, recipe.bf16), train_images=train_images, val_images=val_size,
                epochs=recipe.epochs, pruner=pruner, trials=trials, time_limit_s=time_limit, calibration=cal,
                done=done, jobs=jobs)


def search(space: str | Space, budget: int, searcher: str = "tpe", trials: int | None = 40,
           jobs: int = 1, storage: str | None = None, data_dir: str | Path | None = None,
           score: str = "val", pruner: str = "hyperband", seed: int = 0, tol: float = 0.1,
           recipe: Recipe | None = None, objective: Objective | None = None, progress: bool = True, *,
           subset: int | None = None, val_size: int = 5000, start: Genome | None = None,
           device: str | None = None, time_limit: float | None = None,
           transfer: list[tuple[str, Genome]] | None = None, plan: bool | None = None,
           noise_seeds: bool = True, data: CifarSource | None = None) -> SearchResult:
    """Search `space` for the genome with the best score under `budget` parameters.

    Every evaluation is a trial of the study of (space, budget, recipe) in `storage`; trials
    already there count toward `trials`, so rerunning the same call resumes. The first trial is
    the space's hand design (its default start, or `start`) projected to the budget, then the
    `transfer` genomes (e.g. winners of other budgets, projected here), so the search can never
    end below them. `time_limit` (seconds) ends the search: no trial starts after it, and the
    running one stops at its next epoch boundary (recorded as failed, retried on a rerun);
    `trials` None means no count limit. `objective` replaces training (tests, benchmarks); by
    default genomes are trained with `recipe` (its epochs included) on CIFAR-100 (`subset`
    training images, `val_size` held out) from `data` (read once by the caller) or `data_dir`.
    `plan` (default: when `progress`) calibrates and prints the plan first; it is skipped when
    `objective` is given. `noise_seeds` trains the hand
    design with two more seeds (see `measure_noise`) so the report can show the score's noise."""
    from nas.data import check_subset
    from nas.training import space_recipe

    sp = load_space(space) if isinstance(space, (str, Path)) else space
    budget = check_budget(budget)
    if searcher not in SEARCHERS:
        raise NasError(f"unknown searcher '{searcher}' (known: {', '.join(SEARCHERS)})")
    for name, value in (("trials", trials), ("jobs", jobs)):
        if value is not None and value < 1:
            raise NasError(f"{name} must be at least 1, got {value}")
    if trials is None and time_limit is None:
        raise NasError("a search needs a number of trials, a time limit, or both")
    check_subset(subset)  # before the study is created: a failed command leaves nothing behind
    warn_many_jobs(jobs, trials)
    recipe = recipe or space_recipe(sp)
    if start is not None:
        sp.check(start, "start genome")
    hand = project(start or default_start(sp), sp, budget, tol)  # a budget the space cannot meet fails here
    t0 = time.perf_counter()
    deadline = time.time() + time_limit if time_limit is not None else None
    url = resolve_storage(storage)
    with warnings.catch_warnings():  # samplers flag their newer options as experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = make_sampler(searcher, seed, trials or 40) if searcher != "fdpg" else None
        # fdpg needs complete curves for its differences: no pruning
        prune = make_pruner(pruner if searcher != "fdpg" else "none", recipe.epochs)
    study = open_study(url, sp, budget, recipe, tol=tol, searcher=searcher, score=score, subset=subset,
                       val_size=val_size, sampler=sampler, pruner=prune)
    if searcher != "fdpg":  # fdpg starts its walk from the hand design itself
        enqueue_genomes(study, sp, [("start", hand), *(transfer or [])])
    own_objective = objective is None
    if objective is None:
        from nas.objective import training_objective

        objective = _LazyObjective(lambda: training_objective(recipe, data=data, data_dir=data_dir, score=score,
                                                              subset=subset, val_size=val_size, device=device,
                                                              progress=progress, deadline=deadline))
    ev = Evaluator(study, objective, searcher, recipe.to_dict())
    budget_trials = TrialBudget(ev, trials, deadline=deadline)
    done = budget_trials.done()
    the_plan = None
    no_time_left = time_limit is not None and time_limit <= 0  # e.g. a resumed sweep's budget whose share is used
    if (plan if plan is not None else progress) and own_objective and not no_time_left:
        the_plan = make_plan(sp, budget, searcher, recipe, trials=trials, time_limit=time_limit, subset=subset,
                             val_size=val_size, tol=tol, pruner=pruner, device=device, done=done, jobs=jobs)
        if progress:
            for line in the_plan.lines():
                print(line, file=sys.stderr, flush=True)
    tops = top_trials(study, budget, 1)
    total = trials if trials is not None else done + (the_plan.expected_trials if the_plan else 0)
    bar = _Progress(total, done, progress, tops[0].value if tops else None, deadline,
                    the_plan.seconds_per_trial if the_plan else None, counted=trials is not None)
    budget_trials.on_wait = bar.wait
    bar.note(f"study '{study.study_name}' in {url} ({plural(done, 'trial')} done)")
    measure = own_objective and not no_time_left and noise_seeds
    try:
        with warnings.catch_warnings(), _torch_threads_per_job(jobs):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if measure and len((study.user_attrs.get(NOISE_ATTR) or {}).get("values", {})) < len(NOISE_SEEDS):
                bar.note(f"measuring the seed-to-seed noise of the score on {hand} (seeds {NOISE_SEEDS})")
                measure_noise(study, objective.get(), hand)
            if searcher == "fdpg":
                stopped = fdpg_search(ev, sp, budget, tol, budget_trials, start=start, jobs=jobs,
                                      on_outcome=bar.outcome)
            else:
                stopped = sampler_search(ev, sp, budget, tol, budget_trials, jobs, on_outcome=bar.outcome)
        if measure:
            measure_noise(study, objective.get(), hand)  # adds the start trial's own score
    except KeyboardInterrupt:
        ev.interrupt_running()
        raise
    finally:
        bar.close()
    return SearchResult(study.study_name, url, searcher, budget, score, budget_trials.done(),
                        top_trials(study, budget), stopped, time.perf_counter() - t0)
