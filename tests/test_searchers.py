"""nas.searchers: fdpg on a planted objective, samplers stay in budget, resume and replay."""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from nas.budget import band, project
from nas.counting import count_params
from nas.errors import NasError
from nas.fdpg import (
    estimate_gradient,
    gradient_step,
    log_param_gradient,
    midpoint,
    probe_genomes,
    tangent,
    to_log,
)
from nas.samplers import SAMPLERS, make_sampler, worker_seed
from nas.search import SearchConfig, search
from nas.spaces import Genome, load_space
from nas.storage import open_storage
from nas.study import counts_as_done
from nas.trials import enqueue_genomes, propose

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = """
family = "conv"
[options]
stages = 2
[genes]
depth = {low = 1, high = 3}
width = {low = 4, high = 96, step = 4}
"""
BUDGET, TOL = 20_000, 0.1


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("spaces") / "small.toml"
    path.write_text(SMALL)
    return load_space(path)


class Planted:
    """A smooth concave score of log-coordinates whose unconstrained maximum (depth 3, 2; width
    96, 64) is far over the budget, so the constrained maximum lies on the band."""

    target = np.log([3, 2, 96, 64])
    weights = np.array([0.02, 0.05, 0.3, 0.1])

    def __init__(self, space):
        self.space, self.calls = space, []

    def score(self, genome: Genome) -> float:
        u = np.log(np.array(self.space.vector(genome), dtype=float))
        return float(-np.sum(self.weights * (u - self.target) ** 2))

    def __call__(self, genome, trial):
        self.calls.append(genome)
        return self.score(genome)


def brute_force_optimum(space, budget, tol):
    lo, hi = band(budget, tol)
    planted = Planted(space)
    genomes = (
        space.from_vector(list(v)) for v in itertools.product(*[space.genes[n].values() for n, _ in space.coords])
    )
    return max(planted.score(g) for g in genomes if lo <= count_params(g) <= hi)


def test_projection_removes_the_budget_normal():
    rng = np.random.default_rng(0)
    g, n = rng.normal(size=6), rng.normal(size=6)
    p = tangent(g, n)
    assert abs(p @ n) < 1e-12
    assert np.allclose(tangent(p, n), p)  # a projection
    # least squares recovers an exact linear model's gradient from probe displacements
    disp = np.eye(6) + 0.1 * rng.normal(size=(6, 6))
    assert np.allclose(estimate_gradient(disp, disp @ g), g)


def test_probes_and_steps_stay_in_the_band(small):
    lo, hi = band(BUDGET, TOL)
    centre = project(midpoint(small), small, BUDGET, TOL)
    probes = probe_genomes(small, centre, BUDGET, TOL)
    assert len(probes) == len(small.coords) and len(set(probes)) == len(probes) and centre not in probes
    n = log_param_gradient(small, centre)
    assert (n > 0).all()  # every gene adds parameters
    for p in probes:
        small.check(p)
        assert lo <= count_params(p) <= hi
    direction = tangent(np.array([0.0, -1.0, 1.0, 0.5]), n)
    direction /= np.linalg.norm(direction)
    x, eta = gradient_step(small, centre, direction, 0.5, BUDGET, TOL)
    small.check(x)
    assert lo <= count_params(x) <= hi and x != centre
    # the step moved along the direction: its displacement has a positive component on it
    assert (to_log(small, x) - to_log(small, centre)) @ direction > 0
    assert gradient_step(small, centre, direction, 0.5, BUDGET, TOL, seen={x}) != (x, eta)


def fdpg(trials: int, **options) -> SearchConfig:
    return SearchConfig("fdpg", trials=trials, tol=TOL, **options)


def walk_path(storage: str, name: str) -> list[tuple[int, str, str]]:
    """The fdpg walk recorded in a study: (step, role, genome) of its counted trials, in order."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    return [(t.user_attrs["step"], t.user_attrs["role"], t.user_attrs["genome"]) for t in trials if counts_as_done(t)]


def test_fdpg_reaches_the_planted_constrained_optimum(small, tmp_path):
    best_possible = brute_force_optimum(small, BUDGET, TOL)
    planted = Planted(small)
    start = planted.score(project(midpoint(small), small, BUDGET, TOL))
    r = search(small, BUDGET, fdpg(40), storage=f"sqlite:///{tmp_path}/f.db", objective=planted, progress=False)
    assert len(planted.calls) <= 40
    assert best_possible - r.best.value < 0.01 * (best_possible - start), (r.best.value, best_possible, start)
    lo, hi = band(BUDGET, TOL)
    study = optuna.load_study(study_name=r.study_name, storage=r.storage)
    trials = study.get_trials()
    assert all(lo <= t.user_attrs["params"] <= hi for t in trials)
    roles = {t.user_attrs["role"] for t in trials}
    assert roles == {"centre", "neighbour"}
    assert all(isinstance(t.user_attrs["step"], int) for t in trials)
    assert [t.user_attrs["step"] for t in trials if t.user_attrs["role"] == "centre"][:2] == [0, 1]
    assert len({g.key() for g in planted.calls}) == len(planted.calls), "a genome was trained twice"
    # the trial's params are its genes, as a sampler's are (the dashboard shows them)
    for t in trials:
        g = Genome.from_json(t.user_attrs["genome"])
        assert t.params == {small.coord_name(c): v for c, v in zip(small.coords, small.vector(g))}


def test_fdpg_rerun_replays_without_training_and_continues(small, tmp_path):
    storage = f"sqlite:///{tmp_path}/r.db"
    first = Planted(small)
    r1 = search(small, BUDGET, fdpg(8), storage=storage, objective=first, progress=False)
    assert r1.trials == 8 and len(first.calls) <= 8
    again = Planted(small)
    assert search(small, BUDGET, fdpg(8), storage=storage, objective=again, progress=False).trials == 8
    assert again.calls == []
    more = Planted(small)
    r3 = search(small, BUDGET, fdpg(14), storage=storage, objective=more, progress=False)
    assert r3.trials == 14 and 0 < len(more.calls) <= 6
    assert not {g.key() for g in more.calls} & {g.key() for g in first.calls}
    # the same walk in one go ends where the resumed one did
    fresh = search(
        small, BUDGET, fdpg(14), storage=f"sqlite:///{tmp_path}/one.db", objective=Planted(small), progress=False
    )
    assert fresh.best.value == r3.best.value


class Interrupted(Planted):
    """Planted, with Ctrl-C during its `at`-th training (counted from 0)."""

    def __init__(self, space, at):
        super().__init__(space)
        self.at = at

    def __call__(self, genome, trial):
        if len(self.calls) == self.at:
            self.calls.append(genome)
            raise KeyboardInterrupt
        return super().__call__(genome, trial)


@pytest.mark.parametrize("at", [2, 5], ids=["among-probes", "at-a-step"])
def test_fdpg_resumed_after_ctrl_c_walks_on_as_if_uninterrupted(small, tmp_path, at):
    whole = Planted(small)
    one = search(small, BUDGET, fdpg(16), storage=f"sqlite:///{tmp_path}/one.db", objective=whole, progress=False)
    storage = f"sqlite:///{tmp_path}/cut.db"
    cut = Interrupted(small, at)
    with pytest.raises(KeyboardInterrupt):
        search(small, BUDGET, fdpg(16), storage=storage, objective=cut, progress=False)
    rest = Planted(small)
    r = search(small, BUDGET, fdpg(16), storage=storage, objective=rest, progress=False)
    assert walk_path(storage, r.study_name) == walk_path(one.storage, one.study_name)
    assert (r.trials, r.stopped, r.best.value) == (one.trials, one.stopped, one.best.value)
    # the finished trainings are kept; the interrupted one is trained again, first
    assert rest.calls[0] == cut.calls[at] and not set(rest.calls) & set(cut.calls[:at])
    assert cut.calls[:at] + rest.calls == whole.calls


class Slow(Planted):
    def __call__(self, genome, trial):
        time.sleep(0.05)  # long enough for the workers' trials to overlap
        return super().__call__(genome, trial)


class Paired(Slow):
    """One of two workers: after its first evaluation it waits (up to 60 s) until the other has
    begun one too, so that both take part however the two threads happen to be scheduled (on a
    loaded machine one thread could otherwise walk the whole path alone)."""

    def __init__(self, space, started: threading.Event, other_started: threading.Event):
        super().__init__(space)
        self.started, self.other_started = started, other_started

    def __call__(self, genome, trial):
        self.started.set()
        if self.calls:
            self.other_started.wait(timeout=60)
        return super().__call__(genome, trial)


def test_fdpg_workers_on_one_study_walk_one_path(small, tmp_path):
    """jobs=2 in one search, and two searches at once on one study (as two processes): together
    they walk the path of a serial run to its end, and train no genome twice."""
    serial = search(
        small, BUDGET, fdpg(100), storage=f"sqlite:///{tmp_path}/s.db", objective=Planted(small), progress=False
    )
    assert serial.stopped.startswith(("no new step", "no improvement"))  # the walk ended, not the trials
    expected = sorted(walk_path(serial.storage, serial.study_name))

    threads = Slow(small)
    par = search(
        small, BUDGET, fdpg(100, jobs=2), storage=f"sqlite:///{tmp_path}/p.db", objective=threads, progress=False
    )
    assert sorted(walk_path(par.storage, par.study_name)) == expected  # each evaluation claimed once
    assert par.stopped == serial.stopped and par.best.value == serial.best.value
    assert len(threads.calls) == len(set(threads.calls))

    storage = f"sqlite:///{tmp_path}/w.db"
    open_storage(storage)  # the tables, before two writers race to create them
    events = [threading.Event(), threading.Event()]
    workers = [Paired(small, events[0], events[1]), Paired(small, events[1], events[0])]
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda w: search(small, BUDGET, fdpg(100), storage=storage, objective=w, progress=False), workers)
        )
    path = walk_path(storage, serial.study_name)
    assert sorted(set(path)) == expected
    # each evaluation is claimed by one worker: at most one rarely taken by both at the same moment
    assert len(path) < 1.5 * len(expected)
    assert all(r.stopped == serial.stopped and r.best.value == serial.best.value for r in results)
    trained = workers[0].calls + workers[1].calls
    assert len(trained) == len(set(trained)), "a genome was trained twice"
    assert workers[0].calls and workers[1].calls  # both took part


def _mbconv_score(space, g):
    u = np.log(np.array(space.vector(g), dtype=float))
    return float(-np.sum((u - np.log(np.array(space.vector(space.presets["seed-m5"]), dtype=float))) ** 2))


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_propose_only_in_budget_genomes(name):
    if name == "cmaes":
        pytest.importorskip("cmaes")
    space = load_space("mbconv")
    budget = 20_000
    lo, hi = band(budget, 0.1)
    # GP refits its model at every suggestion (seconds each on 2 cores): fewer for it.
    n = 16 if name == "gp" else 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=0, trials=n))
        seen = set()
        for _ in range(n):
            trial = study.ask()
            g = propose(trial, space, budget, 0.1)
            space.check(g)
            assert lo <= count_params(g) <= hi
            seen.add(g)
            study.tell(trial, _mbconv_score(space, g))
    assert len(seen) > n // 4, "the sampler should explore"
    assert set(study.trials[-1].params) == {space.coord_name(c) for c in space.coords}


def test_sampler_search_resumes_and_dedups(small, tmp_path):
    storage = f"sqlite:///{tmp_path}/t.db"
    calls = Planted(small)
    r = search(small, BUDGET, SearchConfig("tpe", trials=6), storage=storage, objective=calls, progress=False)
    assert r.trials == 6
    before = {t.number: t.value for t in optuna.load_study(study_name=r.study_name, storage=storage).trials}
    r2 = search(small, BUDGET, SearchConfig("tpe", trials=10, jobs=2), storage=storage, objective=calls, progress=False)
    study = optuna.load_study(study_name=r2.study_name, storage=storage)
    # duplicates, and proposals that could not be projected into the band, are asked again
    counted = [t for t in study.trials if "duplicate_of" not in t.user_attrs and "retryable" not in t.user_attrs]
    assert r2.trials == 10 and len(counted) == 10
    assert {t.number: t.value for t in study.trials if t.number in before} == before
    assert all(t.state == TrialState.COMPLETE for t in counted)
    # --trials counts distinct trainings: no genome twice, none reused in place of a new one
    assert len(calls.calls) == len({g.key() for g in calls.calls}) == 10
    assert [t.user_attrs["role"] for t in counted] == ["start"] + ["sample"] * 9  # the hand design first
    assert all(t.user_attrs["searcher"] == "tpe" for t in counted)


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_a_resumed_sampler_continues_instead_of_replaying(name, small, tmp_path):
    """Each search() makes its sampler anew, as a new process does: seeded by (seed, first trial
    number), the rerun draws new proposals instead of the first run's again."""
    storage = f"sqlite:///{tmp_path}/t.db"
    calls = Planted(small)
    search(small, BUDGET, SearchConfig(name, trials=3), storage=storage, objective=calls, progress=False)
    r = search(small, BUDGET, SearchConfig(name, trials=6), storage=storage, objective=calls, progress=False)
    trials = optuna.load_study(study_name=r.study_name, storage=storage).trials
    assert [t.params for t in trials[3:6]] != [t.params for t in trials[:3]], "the rerun replayed the first run"
    assert not any("duplicate_of" in t.user_attrs for t in trials)
    assert r.trials == 6 and len({g.key() for g in calls.calls}) == len(calls.calls) == 6
    assert worker_seed(0, 0) != worker_seed(0, 3) != worker_seed(1, 0)


def test_workers_claiming_the_last_trial_at_once_train_it_once(small, tmp_path, monkeypatch):
    """Two workers count one trial left and both ask one: the later trial is given back (failed,
    not counted) instead of training one genome more than --trials."""
    from nas.evaluator import Evaluator
    from nas.study import counts_as_done, open_study
    from nas.training import Recipe
    from nas.trials import SURPLUS
    from nas.trials import TrialQuota as TrialBudget

    monkeypatch.setenv("NAS_HEARTBEAT_SECONDS", "1")  # the wait for the other worker's trial
    study = open_study(f"sqlite:///{tmp_path}/c.db", small, BUDGET, Recipe(), tol=TOL, searcher="tpe")
    ev1, ev2 = Evaluator(study, Planted(small), "tpe"), Evaluator(study, Planted(small), "tpe")
    first, second = TrialBudget(ev1, 1), TrialBudget(ev2, 1)
    genome = project(midpoint(small), small, BUDGET, TOL)
    taken, ask = [], ev2.ask

    def racing_ask():  # the other worker claims between this worker's count and its ask
        taken.append(first.claim())
        ev2.ask = ask
        return ask()

    ev2.ask = racing_ask
    second.on_wait = lambda n: ev1.evaluate(genome, role="sample", trial=taken[0])
    assert second.claim() is None
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["failure"] == SURPLUS and not counts_as_done(trials[1])
    assert first.done() == 1 and len(ev2.objective.calls) == 0


def _racing_budget(small, tmp_path, monkeypatch, other_asks):
    """A study at budget 1 whose worker, between counting and asking, sees `other_asks(study)`
    run: another process claiming the last trial at that moment."""
    from nas.evaluator import Evaluator
    from nas.study import open_study
    from nas.training import Recipe
    from nas.trials import TrialQuota as TrialBudget

    monkeypatch.setenv("NAS_HEARTBEAT_SECONDS", "1")
    study = open_study(f"sqlite:///{tmp_path}/c.db", small, BUDGET, Recipe(), tol=TOL, searcher="tpe")
    ev = Evaluator(study, Planted(small), "tpe")
    budget, ask = TrialBudget(ev, 1), ev.ask

    def racing_ask():
        other_asks(study)
        ev.ask = ask
        return ask()

    ev.ask = racing_ask
    return study, budget


def test_a_trial_another_process_has_just_asked_counts_before_it_is_tagged(small, tmp_path, monkeypatch):
    """Another process's trial is RUNNING a moment before it carries its searcher's name: a
    worker claiming the last trial then gives its own back instead of training one more."""
    from nas.trials import SURPLUS

    others = []
    study, budget = _racing_budget(small, tmp_path, monkeypatch, lambda s: others.append(s.ask()))

    def other_finishes(_):  # the other process tags and finishes its trial
        others[0].set_user_attr("searcher", "tpe")
        study.tell(others[0], 1.0)

    budget.on_wait = other_finishes
    assert budget.claim() is None
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["failure"] == SURPLUS


def test_a_queued_trial_popped_last_is_the_one_given_back(small, tmp_path, monkeypatch):
    """A queued trial keeps the number it was queued with but starts when a worker pops it:
    another process's trial that started first, with a higher number, keeps the last place."""
    from nas.trials import SURPLUS

    def other_asks(study):  # its ask read no queued trial, so it made a new one
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"searcher": "tpe"}))

    study, budget = _racing_budget(small, tmp_path, monkeypatch, other_asks)
    genome = project(midpoint(small), small, BUDGET, TOL)
    enqueue_genomes(study, small, [("start", genome)])
    budget.on_wait = lambda _: study.tell(1, 1.0)
    assert budget.claim() is None
    trials = study.get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    assert trials[0].user_attrs["failure"] == SURPLUS


TINY = """
family = "conv"
[options]
stages = 2
[genes]
depth = {low = 1, high = 2}
width = {low = 4, high = 24, step = 4}
"""


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_duplicates_do_not_count_and_an_exhausted_band_stops(name, tmp_path):
    """The band of budget 8k in this space holds 11 genomes: asking for 20 trains each reachable
    one once, the repeated proposals are duplicates outside --trials, and the search says why
    it stopped."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    tiny = load_space(path)
    lo, hi = band(8_000, TOL)
    in_band = {
        g.key()
        for g in (
            tiny.from_vector(list(v)) for v in itertools.product(*[tiny.genes[n].values() for n, _ in tiny.coords])
        )
        if lo <= count_params(g) <= hi
    }
    calls = Planted(tiny)
    r = search(
        tiny,
        8_000,
        SearchConfig(name, trials=20, tol=TOL),
        storage=f"sqlite:///{tmp_path}/x.db",
        objective=calls,
        progress=False,
    )
    trained = [g.key() for g in calls.calls]
    # every genome of the band is found (random points fill in what the sampler keeps missing), once
    assert len(trained) == len(set(trained)) == r.trials and set(trained) == in_band
    assert r.stopped.startswith("stopped early:") and r.stopped.endswith("so the band looks exhausted")
    trials = optuna.load_study(study_name=r.study_name, storage=r.storage).trials
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    missed = [t for t in trials if t.user_attrs.get("failure", "").startswith("projection:")]
    assert len(dups) + len(missed) >= 1 and len(trials) == len(dups) + len(missed) + r.trials
    for t in dups:  # told the held genome's result: the sampler learns the value of what it proposed
        held = trials[t.user_attrs["duplicate_of"]]
        assert t.user_attrs["genome"] == held.user_attrs["genome"] and t.value == held.value
        assert t.user_attrs["reused_from"] == held.number and "duplicate_of" not in held.user_attrs


def test_search_on_a_journal_file_resumes(small, tmp_path):
    path = str(tmp_path / "nas.log")
    r = search(small, BUDGET, SearchConfig("random", trials=3), storage=path, objective=Planted(small), progress=False)
    assert r.storage == path and r.trials == 3
    r = search(small, BUDGET, SearchConfig("random", trials=5), storage=path, objective=Planted(small), progress=False)
    assert r.trials == 5 and len(r.top) >= 1


def test_search_rejects_bad_arguments(small, tmp_path):
    with pytest.raises(NasError, match="unknown searcher"):
        search(small, BUDGET, SearchConfig("sgd"), storage=f"sqlite:///{tmp_path}/x.db", objective=Planted(small))
    with pytest.raises(NasError, match="below what space"):
        search(
            small,
            100,
            SearchConfig("tpe", trials=2),
            storage=f"sqlite:///{tmp_path}/x.db",
            objective=Planted(small),
            progress=False,
        )


def test_many_jobs_warn_once_and_tiny_subsets_are_refused(small, tmp_path, capsys, monkeypatch):
    import nas.errors
    import nas.search

    monkeypatch.setattr(nas.errors, "_warned", set())
    monkeypatch.setattr(nas.search.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    storage = f"sqlite:///{tmp_path}/j.db"
    for _ in range(2):  # a sweep searches several budgets: one warning is enough
        search(
            small,
            BUDGET,
            SearchConfig("random", trials=2, jobs=9),
            storage=storage,
            objective=Planted(small),
            progress=False,
        )
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "nas: warning: --jobs 9 is far above the 2 CPU cores: up to 2 trainings run at once, one CPU "
        "thread each, so each runs slower and the search is not faster"
    ]
    db = tmp_path / "sub.db"
    with pytest.raises(NasError, match=r"subset must be at least 500 training images \(5 per class of 100\), got 499"):
        search(small, BUDGET, SearchConfig("random", subset=499), storage=f"sqlite:///{db}", objective=Planted(small))
    assert not db.exists()  # refused before the study was created


def test_search_says_why_it_stopped_without_repeating_the_count(small, tmp_path):
    r = search(
        small,
        BUDGET,
        SearchConfig("random", trials=2),
        storage=f"sqlite:///{tmp_path}/w.db",
        objective=Planted(small),
        progress=False,
    )
    assert r.stopped == "trial limit reached"


def test_a_search_limited_by_time_sizes_tpe_start_up_by_its_plan(cifar_dir, tmp_path, monkeypatch):
    """TPE samples at random for its first trials. A search limited by time whose plan fits about
    eight trials must leave that start-up within them: sized for the 40 trials of a search with no
    count, it sampled at random throughout (at 500k it drew the random arm's genomes trial for trial)."""
    from conftest import PlantedTraining

    from nas.plan import Calibration
    from nas.training import Recipe

    startups = []
    tpe = optuna.samplers.TPESampler
    monkeypatch.setattr(
        "nas.samplers.optuna.samplers.TPESampler", lambda **kw: startups.append(kw["n_startup_trials"]) or tpe(**kw)
    )
    monkeypatch.setattr("nas.objective.train", PlantedTraining())
    monkeypatch.setattr("nas.search.flops_ratios", lambda *a, **k: [1.0])
    # one trial (600 + 200 validated images, 1 epoch) 0.4 s: a 3.2 s search plans 8 trials
    monkeypatch.setattr(
        "nas.plan.calibrate",
        lambda *a, **k: Calibration(
            genome="g", params=1, train_images_per_s=2000, eval_images_per_s=2000, device="cpu"
        ),
    )
    config = SearchConfig(
        "tpe", trials=None, time_limit=3.2, val_size=200, subset=600, finalists=0, noise_seeds=False, plan=True
    )
    storage = f"sqlite:///{tmp_path}/t.db"
    search("conv", 5000, config, storage=storage, data_dir=cifar_dir, recipe=Recipe(epochs=1), progress=False)
    assert startups == [3]  # max(3, 8 // 4); 10 before
    startups.clear()
    counted = SearchConfig("tpe", trials=24, val_size=200, subset=600, finalists=0, noise_seeds=False)
    search(
        "conv",
        5000,
        counted,
        storage=f"sqlite:///{tmp_path}/c.db",
        data_dir=cifar_dir,
        recipe=Recipe(epochs=1),
        progress=False,
    )
    assert startups == [6]  # a counted search: 24 // 4, as before
