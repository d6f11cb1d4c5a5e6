"""The searchers: Optuna's samplers and fdpg's walk, made by one factory, each saying what it
needs from the search loop (`nas.study.SamplerNeeds`), so the loop and the search ask rather than check
which searcher they run.

Every searcher is an Optuna sampler. This is the one module that names fdpg; everything else asks
`nas.study.sampler_needs(sampler)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.errors import NasError
from nas.study import SamplerNeeds

if TYPE_CHECKING:
    from nas.spaces import Genome, Space

SAMPLERS = ("tpe", "cmaes", "gp", "random", "nsga2")


SEARCHERS = ("fdpg", *SAMPLERS)


PRUNERS = ("hyperband", "median", "none")


def searcher_needs(name: str) -> SamplerNeeds:
    """What searcher `name` needs from the loop, before one is made (a plan)."""
    if name == "fdpg":
        from nas.fdpg import FdpgSampler

        return FdpgSampler.needs
    return SamplerNeeds()


def make_searcher(
    name: str,
    space: Space,
    budget: int,
    tol: float,
    start: Genome,
    transfer: Sequence[tuple[str, Genome]] = (),
    *,
    seed: int = 0,
    trials: int | None = 40,
    storage: optuna.storages.BaseStorage | None = None,
) -> optuna.samplers.BaseSampler:
    """The sampler of searcher `name`: fdpg's walk from the best of `start` and the `transfer`
    genomes, or an Optuna sampler (which the search gives the start and transfer genomes as
    queued trials). `storage`: where fdpg records which trial evaluates what."""
    if name == "fdpg":
        from nas.fdpg import FdpgSampler

        return FdpgSampler(space, start, budget, tol, also=[g for _, g in transfer], storage=storage)
    return make_sampler(name, seed, trials or 40)


def make_sampler(name: str, seed: int = 0, trials: int = 40) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `name`, seeded per worker (see `WorkerSeeded`)."""
    if name not in SAMPLERS:
        raise NasError(f"unknown searcher '{name}' (known: {', '.join(SEARCHERS)})")
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CmaEsSampler imports it lazily, failing mid-search)
        except ImportError:
            raise NasError("searcher cmaes needs the 'cmaes' package: pip install cmaes") from None
    return WorkerSeeded(lambda s, n: _sampler(name, s, n), seed, trials)


def _sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # Short searches should not be all random start-up: with the fixed 10, a 30-minute 500k
    # search (6-11 trials) was random search, drawing the random arm's genomes trial for trial.
    startup = max(3, min(10, trials // 4))
    if name == "tpe":
        # constant_liar: trials running in other workers count as bad, so TPE looks elsewhere
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    if name == "cmaes":
        # The kernel gene is categorical: CMA-ES leaves it to the independent sampler.
        return optuna.samplers.CmaEsSampler(
            seed=seed, warn_independent_sampling=False, independent_sampler=optuna.samplers.RandomSampler(seed=seed)
        )
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
    share the sampler, as they would share an unwrapped one.

    `trials`: the search's length as the sampler is sized for it (TPE's random start-up, NSGA-II's
    population); a search limited by time sets it from its plan (`expect`) before the first trial."""

    def __init__(self, make: Callable[[int, int], optuna.samplers.BaseSampler], seed: int = 0, trials: int = 40):
        self._make, self.seed, self.trials = make, seed, trials
        self._sampler: optuna.samplers.BaseSampler | None = None
        self._lock = threading.Lock()

    def expect(self, trials: int) -> None:
        """Size the sampler for `trials` in all (the study's, done or to come); before its first trial."""
        with self._lock:
            if self._sampler is None:
                self.trials = max(1, trials)

    def inner(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        with self._lock:
            if self._sampler is None:
                self._sampler = self._make(worker_seed(self.seed, trial.number), self.trials)
            return self._sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self.inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
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
