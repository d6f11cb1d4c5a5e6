"""nas.study: storage, study naming and attrs, trial records, de-duplication, liveness."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from nas.budget import project
from nas.errors import NasError
from nas.evaluator import EvaluationFailed, Evaluator
from nas.liveness import HEARTBEAT_ATTR, fail_stale_trials, heartbeat
from nas.objective import TrainingObjective
from nas.spaces import load_space
from nas.storage import dashboard_command, open_storage, optuna_heartbeat, resolve_storage
from nas.study import DIED, INTERRUPTED, counts_as_done, failure_reason, open_study, study_name
from nas.training import Recipe

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def space():
    return load_space("mbconv")


@pytest.fixture
def genome(space):
    return project(space.presets["seed-m4"], space, 10_000)


def _study(tmp_path, space, **kw):
    return open_study(
        f"sqlite:///{tmp_path}/s.db", space, 10_000, Recipe(epochs=2), tol=0.1, searcher=kw.pop("searcher", "tpe"), **kw
    )


class Counting:
    """A stand-in objective that counts its calls."""

    def __init__(self, value=0.5):
        self.calls, self.value = [], value

    def __call__(self, genome, trial):
        self.calls.append(genome)
        if trial is not None:
            trial.report(self.value / 2, 1)
            trial.report(self.value, 2)
        return self.value


def test_default_storage_is_sqlite_under_studies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage(None) == "sqlite:///studies/nas.db"
    assert (tmp_path / "studies").is_dir()
    assert dashboard_command(None) == f"optuna-dashboard sqlite:///{tmp_path}/studies/nas.db"


def test_sqlite_url_options_and_servers(tmp_path, monkeypatch):
    """A SQLite URL's query string is an option, not part of the file name; a server database or
    an in-memory one has no file to create or to find."""
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///sub/x.db?timeout=5"
    open_storage(url)
    assert {p.name for p in (tmp_path / "sub").iterdir()} <= {"x.db", "x.db-wal", "x.db-shm"}  # write-ahead log
    assert (tmp_path / "sub" / "x.db").is_file()
    assert dashboard_command(url) == f"optuna-dashboard sqlite:///{tmp_path}/sub/x.db"
    with pytest.raises(NasError, match="no study storage at 'sub/none.db' "):
        resolve_storage("sqlite:///sub/none.db?timeout=5", create=False)
    for url in ("sqlite:///:memory:", "postgresql://u@host/nasdb?sslmode=require"):
        assert resolve_storage(url, create=False) == url
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_journal_path_and_bad_storage(tmp_path):
    path = tmp_path / "j" / "nas.log"
    st = open_storage(str(path))
    assert isinstance(st, optuna.storages.JournalStorage) and path.parent.is_dir()
    with pytest.raises(NasError, match="neither a storage URL"):
        resolve_storage(str(tmp_path / "nas.txt"))
    with pytest.raises(NasError, match="cannot open storage"):
        open_storage("nosuchdb://x/y")


def test_study_name_and_attrs(tmp_path, space):
    r = Recipe(epochs=2)
    assert study_name("mbconv", 10_000, r) == f"mbconv-b10000-{r.tag}"
    assert study_name("mbconv", 10_000, r, "asymptote", 500, 200) == f"mbconv-b10000-{r.tag}-asym-sub500-val200"
    study = _study(tmp_path, space)
    assert study.study_name == f"mbconv-b10000-{r.tag}"
    a = study.user_attrs
    assert (a["space"], a["family"], a["budget"], a["tol"], a["searcher"]) == ("mbconv", "mbconv", 10_000, 0.1, "tpe")
    assert a["recipe"] == r.to_dict()
    again = _study(tmp_path, space, searcher="fdpg")  # resumes, and lists both searchers
    assert again.user_attrs["searcher"] == "tpe,fdpg"
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path}/s.db")) == 1
    with pytest.raises(NasError, match="--tol 0.1"):
        open_study(f"sqlite:///{tmp_path}/s.db", space, 10_000, r, tol=0.2, searcher="tpe")


def test_evaluate_records_attrs_and_reuses_genomes(tmp_path, space, genome):
    study = _study(tmp_path, space)
    obj = Counting(0.4)
    ev = Evaluator(study, obj, "tpe", {"epochs": 2})
    first = ev.evaluate(genome, role="sample")
    assert first.ok and first.value == 0.4 and first.reused_from is None
    t = study.trials[first.number]
    a = t.user_attrs
    assert a["genome_str"] == str(genome) and a["params"] <= 10_000 and a["flops"] > 0
    assert (a["role"], a["step"], a["searcher"], a["recipe"]) == ("sample", first.number, "tpe", {"epochs": 2})
    assert t.intermediate_values == {1: 0.2, 2: 0.4}

    second = ev.evaluate(genome, role="neighbour", step=3)
    assert len(obj.calls) == 1, "the same genome must not be evaluated twice in one study"
    assert second.reused_from == first.number and second.value == 0.4
    t2 = study.trials[second.number]
    assert t2.user_attrs["reused_from"] == first.number and t2.intermediate_values == {1: 0.2, 2: 0.4}
    # another process (a new Evaluator) reuses it too
    third = Evaluator(study, obj, "fdpg").evaluate(genome, role="centre", step=0)
    assert third.reused_from == first.number and len(obj.calls) == 1


def test_distinct_evaluation_yields_to_a_genome_held_elsewhere(tmp_path, space, genome):
    """Two workers (two Evaluators on one study, as two processes) propose one genome: the trial
    with the lower number trains it, even when it records the genome later; the other becomes a
    duplicate that does not count, told the result once there is one."""
    import threading

    study = _study(tmp_path, space)
    a, b = Counting(0.4), Counting(0.9)
    ev_a, ev_b = Evaluator(study, a, "tpe"), Evaluator(study, b, "tpe")
    first, second = ev_a.ask(), ev_b.ask()  # first is still choosing its genome
    outs = {}
    worker = threading.Thread(
        target=lambda: outs.setdefault("b", ev_b.evaluate(genome, role="sample", trial=second, distinct=True))
    )
    worker.start()
    worker.join(0.5)
    assert worker.is_alive(), "a lower-numbered trial that has not chosen yet may choose this genome: wait"
    assert ev_a.evaluate(genome, role="sample", trial=first, distinct=True).duplicate_of is None
    worker.join(10)
    dup = outs["b"]
    assert a.calls == [genome] and b.calls == [] and dup.duplicate_of == first.number
    t = study.trials[second.number]
    assert t.user_attrs["duplicate_of"] == first.number and not counts_as_done(t)
    if t.state == TrialState.COMPLETE:  # the holder had finished: its result is reused
        assert t.value == 0.4 and t.user_attrs["reused_from"] == first.number
    else:
        assert t.state == TrialState.FAIL and "still running" in t.user_attrs["failure"]
    # a later proposal of a trained genome takes its result, and does not count either
    again = ev_b.evaluate(genome, role="sample", distinct=True)
    assert again.state == TrialState.COMPLETE and again.value == 0.4 and again.duplicate_of == first.number
    assert b.calls == [] and not counts_as_done(study.trials[again.number])
    # without `distinct` (fdpg) the reuse is an evaluation of its own, as before
    reused = ev_b.evaluate(genome, role="centre", step=0)
    assert reused.reused_from == first.number and counts_as_done(study.trials[reused.number])


def test_a_running_genome_is_taken(tmp_path, space, genome):
    """While another worker trains a genome, a proposal of it is a duplicate (FAIL, not counted)."""
    import threading

    study = _study(tmp_path, space)
    release, started = threading.Event(), threading.Event()

    def slow(g, trial):
        started.set()
        release.wait(10)
        return 0.5

    worker = threading.Thread(
        target=lambda: Evaluator(study, slow, "tpe").evaluate(genome, role="sample", distinct=True)
    )
    worker.start()
    assert started.wait(10)
    obj = Counting()
    out = Evaluator(study, obj, "tpe").evaluate(genome, role="sample", distinct=True)
    release.set()
    worker.join(10)
    t = study.trials[out.number]
    assert out.duplicate_of == 0 and not obj.calls and t.state == TrialState.FAIL and not counts_as_done(t)
    assert study.trials[0].state == TrialState.COMPLETE and counts_as_done(study.trials[0])


def test_failed_pruned_and_interrupted_trials(tmp_path, space, genome):
    study = _study(tmp_path, space)

    def failing(g, trial):
        raise EvaluationFailed("loss became nan at epoch 1 step 3")

    out = Evaluator(study, failing, "tpe").evaluate(genome, role="sample")
    t = study.trials[out.number]
    assert t.state == TrialState.FAIL and t.user_attrs["failure"].startswith("loss became nan")
    assert counts_as_done(t)

    def pruned(g, trial):
        trial.report(0.1, 1)
        raise optuna.TrialPruned()

    g2 = project(space.presets["seed-m5"], space, 10_000)
    out = Evaluator(study, pruned, "tpe").evaluate(g2, role="sample")
    assert study.trials[out.number].state == TrialState.PRUNED
    # a pruned genome is not trained again: its record is reused as pruned
    obj = Counting()
    again = Evaluator(study, obj, "tpe").evaluate(g2, role="sample")
    assert not obj.calls and again.state == TrialState.PRUNED and again.reused_from == out.number

    def interrupted(g, trial):
        raise KeyboardInterrupt

    g3 = project(space.presets["seed-m6"], space, 10_000)
    with pytest.raises(KeyboardInterrupt):
        Evaluator(study, interrupted, "tpe").evaluate(g3, role="sample")
    t = study.trials[-1]
    assert t.state == TrialState.FAIL and t.user_attrs["failure"] == INTERRUPTED and not counts_as_done(t)


def test_environment_error_stops_the_search_and_is_retried_on_rerun(tmp_path, space, genome):
    """Missing data is not the genome's fault: the error reaches the user, and the trial does not
    count as done, so the rerun after the fix trains it."""
    study = _study(tmp_path, space)

    def no_data(g, trial):
        raise NasError("CIFAR-100 not found (…/train is missing)")

    with pytest.raises(NasError, match="CIFAR-100 not found"):
        Evaluator(study, no_data, "tpe").evaluate(genome, role="sample")
    t = study.trials[-1]
    assert t.state == TrialState.FAIL and "CIFAR-100 not found" in t.user_attrs["failure"]
    assert not counts_as_done(t)
    obj = Counting()
    out = Evaluator(study, obj, "tpe").evaluate(genome, role="sample")
    assert obj.calls and out.state == TrialState.COMPLETE


def test_stale_trial_is_failed_and_retried_on_a_journal(tmp_path, space, monkeypatch):
    """Journal files have no heartbeat in Optuna: nas's own marks and retries dead trials."""
    monkeypatch.setenv("NAS_HEARTBEAT_SECONDS", "1")
    study = open_study(str(tmp_path / "s.log"), space, 10_000, Recipe(epochs=2), tol=0.1, searcher="tpe")
    storage = study._storage
    assert not optuna_heartbeat(storage)
    dead = study.ask()
    dead.suggest_int("stem", 4, 128, log=True)
    dead.set_user_attr("searcher", "tpe")
    dead.set_user_attr("curve", [{"epoch": 1}])
    storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 1.5)
    alive = study.ask()
    storage.set_trial_system_attr(alive._trial_id, HEARTBEAT_ATTR, time.time())
    foreign = study.ask()  # no heartbeat: not a nas trial, left alone
    assert fail_stale_trials(study) == []  # 1.5 s is within the 2 s grace
    storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 5)
    assert fail_stale_trials(study) == [dead.number]
    trials = study.get_trials()
    t = trials[dead.number]
    assert t.state == TrialState.FAIL and t.user_attrs["failure"] == DIED and not counts_as_done(t)
    assert trials[alive.number].state == TrialState.RUNNING and trials[foreign.number].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == dead.number
    assert "curve" not in retry.user_attrs and retry.user_attrs["searcher"] == "tpe"
    popped = study.ask()  # the retry is asked first and suggests the same value
    assert popped.number == retry.number
    assert popped.suggest_int("stem", 4, 128, log=True) == t.params["stem"]


def test_stale_trial_on_sqlite_uses_optunas_heartbeat(tmp_path, space, monkeypatch):
    """RDB storages (SQLite here, PostgreSQL in test_postgres.py) use Optuna's heartbeat, its
    stale-trial check and its retry callback."""
    monkeypatch.setenv("NAS_HEARTBEAT_SECONDS", "1")
    study = _study(tmp_path, space)
    storage = study._storage
    assert optuna_heartbeat(storage) and storage.get_heartbeat_interval() == 1
    ev = Evaluator(study, Counting(), "tpe")
    dead = ev.ask()  # its heartbeat starts at ask; nobody beats it again: its process "died"
    dead.suggest_int("stem", 4, 128, log=True)
    with heartbeat(storage, ev.ask()._trial_id):  # a live trial, beating every second
        time.sleep(3.2)  # past the 2 s grace (the database clock counts whole seconds)
        assert fail_stale_trials(study) == [dead.number]
    trials = study.get_trials()
    t = trials[dead.number]
    assert t.state == TrialState.FAIL and failure_reason(t) == DIED and not counts_as_done(t)
    assert trials[1].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == dead.number
    assert retry.user_attrs["searcher"] == "tpe" and retry.params == t.params


@pytest.mark.parametrize("reports", [True, False])
def test_trial_failed_by_another_process_is_dropped_not_fatal(tmp_path, space, genome, reports):
    """A live trial whose heartbeat came late may be failed (and retried) by another process:
    its own process then drops it and goes on, whether it notices while reporting or at the end."""
    study = _study(tmp_path, space)

    def objective(g, trial):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # "another process"
        if reports:
            trial.report(0.1, 1)
        return 0.5

    out = Evaluator(study, objective, "tpe").evaluate(genome, role="sample")
    assert out.state == TrialState.FAIL and out.value is None
    assert study.trials[out.number].state == TrialState.FAIL


def test_no_genome_trained_twice_across_processes(tmp_path, space, genome):
    """Two Evaluators on one study (as two processes would have) given the same genome at once:
    the later trial waits for the earlier and reuses its result."""
    import threading

    started, release = threading.Event(), threading.Event()
    calls = []

    def slow(g, trial):
        calls.append(trial.number)
        started.set()
        release.wait(10)
        return 0.5

    url = f"sqlite:///{tmp_path}/s.db"
    a = Evaluator(_study(tmp_path, space), slow, "tpe")
    b = Evaluator(optuna.load_study(study_name=a.study.study_name, storage=open_storage(url)), slow, "tpe")
    first = a.ask()
    second = b.ask()
    results = {}
    ta = threading.Thread(target=lambda: results.setdefault("a", a.evaluate(genome, role="sample", trial=first)))
    ta.start()
    assert started.wait(10)
    tb = threading.Thread(target=lambda: results.setdefault("b", b.evaluate(genome, role="sample", trial=second)))
    tb.start()
    time.sleep(1.5)
    assert b.study.trials[second.number].state == TrialState.RUNNING  # waiting, not training
    release.set()
    ta.join(10)
    tb.join(10)
    assert calls == [first.number]
    assert results["b"].reused_from == first.number and results["b"].value == 0.5


def test_training_objective_records_curve_and_prunes(tmp_path, space, cifar_data):
    import dataclasses

    data = dataclasses.replace(cifar_data, train_x=cifar_data.train_x[:400], train_y=cifar_data.train_y[:400])
    genome = project(space.presets["seed-m4"], space, 3_000)
    recipe = Recipe(epochs=2, batch_size=128)

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = open_study(
        f"sqlite:///{tmp_path}/t.db", space, 3_000, recipe, tol=0.5, searcher="tpe", pruner=AlwaysPrune()
    )
    obj = TrainingObjective(data, recipe, score="asymptote", device="cpu")
    out = Evaluator(study, obj, "tpe", recipe.to_dict()).evaluate(genome, role="sample")
    t = study.trials[out.number]
    assert t.state == TrialState.PRUNED
    assert [c["epoch"] for c in t.user_attrs["curve"]] == [1], "a pruned trial keeps the curve it got"
    assert t.intermediate_values == {1: t.user_attrs["val_acc"]}
    assert {"asymptote", "asymptote_std", "wall_time_s", "device"} <= set(t.user_attrs)

    study2 = open_study(f"sqlite:///{tmp_path}/t2.db", space, 3_000, recipe, tol=0.5, searcher="tpe")
    out = Evaluator(study2, obj, "tpe").evaluate(genome, role="sample")
    t = study2.trials[out.number]
    assert t.state == TrialState.COMPLETE and len(t.user_attrs["curve"]) == 2
    assert t.value == pytest.approx(t.user_attrs["asymptote"]) and 0 <= t.user_attrs["val_acc"] <= 1
