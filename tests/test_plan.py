"""--time, --plan and the device-sized defaults (nas.plan, nas.search.search)."""

import time

import optuna
import pytest
from conftest import plan_for_tests
from optuna.trial import TrialState

from nas.budget import project
from nas.cli import main
from nas.errors import NasError
from nas.evaluator import Evaluator
from nas.objective import TrainingObjective
from nas.plan import CPU_DEFAULTS, calibrate, duration, hyperband_rungs, parse_duration
from nas.search import SearchConfig, default_start, search
from nas.spaces import load_space
from nas.study import counts_as_done, open_study
from nas.training import Recipe, threads_per_job


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45), ("1.5h", 5400), (" 10M ", 600)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "0s", "5x", "-3m", "m"])
def test_bad_duration_is_one_line(bad):
    with pytest.raises(NasError, match="duration|longer than zero"):
        parse_duration(bad)


def test_duration_reads_like_a_person_writes():
    assert [duration(s) for s in (45, 600, 1440, 7500)] == ["45 s", "10 min", "24 min", "2 h 05 min"]
    assert hyperband_rungs(4) == [1, 3, 4] and hyperband_rungs(15) == [1, 3, 9, 15] and hyperband_rungs(1) == [1]


class Slow:
    """A stand-in objective that takes `seconds` per genome."""

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, []

    def __call__(self, genome, trial):
        self.started.append(time.time())
        time.sleep(self.seconds)
        return 0.5 + 1e-6 * len(self.started)


def test_time_limit_starts_no_trial_after_the_deadline(tmp_path):
    slow = Slow(0.6)
    t0 = time.time()
    r = search(
        "conv-shape",
        20_000,
        SearchConfig("random", trials=None, time_limit=2.0),
        storage=f"sqlite:///{tmp_path}/t.db",
        objective=slow,
        progress=False,
    )
    took = time.time() - t0
    assert r.stopped == "time limit reached"
    # Nothing started after the deadline, and the search ended with the trial running at it. The
    # slack is for a loaded machine (CI shares its cores): without the limit this search never ends.
    assert slow.started and max(slow.started) < t0 + 2.0 + 1.5
    assert took < 2.0 + 0.6 + 5
    assert r.trials == len(slow.started)


def test_a_search_resumed_with_less_time_than_its_quickest_trial_starts_none(tmp_path):
    # A resumed sweep gives a budget what is left of its share: seconds, where a trial takes
    # minutes. Such a trial would only be cut at the deadline and recorded as failed. A trial that
    # reused another's result (here the start genome queued again, as budget transfer does) took
    # no time and must not count as the quickest.
    storage = f"sqlite:///{tmp_path}/q.db"
    start = project(default_start(load_space("conv-shape")), load_space("conv-shape"), 20_000)
    config = SearchConfig("random", trials=2, transfer=[("transfer:again", start)])  # a duplicate does not count
    first = search("conv-shape", 20_000, config, storage=storage, objective=Slow(0.8), progress=False)
    trials = optuna.load_study(study_name=first.study_name, storage=storage).trials
    assert [t.user_attrs.get("reused_from") for t in trials] == [None, 0, None]
    again = Slow(0.8)
    r = search(
        "conv-shape",
        20_000,
        SearchConfig("random", trials=None, time_limit=0.4),
        storage=storage,
        objective=again,
        progress=False,
    )
    assert again.started == [] and r.stopped == "time limit reached"
    states = [t.state for t in optuna.load_study(study_name=r.study_name, storage=storage).trials]
    assert states == [TrialState.COMPLETE] * 3


def test_a_trial_running_at_the_deadline_stops_at_an_epoch_and_is_retried(cifar_data, tmp_path):
    space = load_space("conv")
    recipe = Recipe(epochs=3, batch_size=128)
    objective = TrainingObjective(cifar_data, recipe, deadline=time.time())  # already past: stop after epoch 1
    storage = f"sqlite:///{tmp_path}/d.db"
    study = open_study(storage, space, 3000, recipe, tol=0.1, searcher="random")
    genome = project(default_start(space), space, 3000)
    out = Evaluator(study, objective, "random").evaluate(genome, role="sample")
    assert out.state == TrialState.FAIL
    (t,) = study.trials
    assert t.state == TrialState.FAIL and t.user_attrs["failure"] == "stopped at the time limit after epoch 1 of 3"
    assert len(t.user_attrs["curve"]) == 1 and not counts_as_done(t)  # a rerun trains it again
    objective.deadline = None
    r2 = search(
        space,
        3000,
        SearchConfig("random", trials=1),
        storage=storage,
        objective=objective,
        progress=False,
        recipe=recipe,
    )
    done = [
        t for t in optuna.load_study(study_name=r2.study_name, storage=storage).trials if t.state == TrialState.COMPLETE
    ]
    assert len(done) == 1 and len(done[0].user_attrs["curve"]) == 3


def test_plan_creates_no_trials_and_says_the_eta(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/p.db"
    argv = ["search", "--budget", "10k", "--plan", "--storage", storage]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "plan: tpe search of conv-shape, budget 10,000 (band 9,000..10,000)"
    assert out[2].split()[:6] == [
        "fidelity:",
        f"{CPU_DEFAULTS.subset:,}",
        "training",
        "images",
        "x",
        str(CPU_DEFAULTS.epochs),
    ]
    assert out[3].startswith("  trials:   as many as fit in 20 min")
    assert out[-1].startswith("  ETA:") and "min" in out[-1]
    assert not (tmp_path / "p.db").exists() and not (tmp_path / "studies").exists()
    t0 = time.time()
    assert main(argv) == 0  # the calibration is cached: seconds, not a new measurement
    assert "cached" in capsys.readouterr().out and time.time() - t0 < 5


def test_a_cpu_search_prunes_nothing_unless_asked(tmp_path, capsys, monkeypatch):
    """On a CPU the default search trains every trial to its last epoch (CPU_DEFAULTS.pruner);
    --pruner hyperband brings the pruning back, and the plan says which."""
    from nas.cli import build_parser
    from nas.options import search_config, search_settings

    monkeypatch.chdir(tmp_path)
    base = ["search", "--budget", "10k", "--device", "cpu"]
    for extra, pruner in (([], "none"), (["--pruner", "hyperband"], "hyperband")):
        args = build_parser().parse_args([*base, *extra])
        assert search_config(args, search_settings(args)).pruner == pruner
        assert main([*base, *extra, "--plan"]) == 0
        fidelity = next(line for line in capsys.readouterr().out.splitlines() if "fidelity:" in line)
        assert ("pruned at 1, 3 epoch(s) when behind" in fidelity) == (pruner == "hyperband")


def test_plan_arithmetic():
    space = load_space("conv-shape")
    g = project(default_start(space), space, 10_000)
    cal = calibrate(g, Recipe(epochs=1, batch_size=64), "cpu", images=256)
    assert cal.train_images_per_s > 0 and cal.eval_images_per_s > 0 and cal.params > 9000
    plan = plan_for_tests(cal, train_images=10_000, pruner="hyperband", time_limit_s=600)
    per = 4 * (10_000 / cal.train_images_per_s + 5_000 / cal.eval_images_per_s)
    assert plan.seconds_per_trial == pytest.approx(per)
    assert plan.expected_trials == max(1, int(600 // per))
    assert plan.eta_s == pytest.approx(600 + per / 4)  # no trial count: to the deadline, plus one epoch


def test_progress_eta_without_a_trial_count_runs_to_the_deadline():
    from nas.progress import SearchProgress as _Progress

    bar = _Progress(
        total=5, done=0, enabled=False, best=None, deadline=time.time() + 600, seconds_per_trial=1.0, counted=False
    )
    bar.done = 9  # more trials than the plan guessed: still 10 minutes to the deadline
    assert 590 < bar.eta_s() <= 600
    counted = _Progress(total=5, done=3, enabled=False, best=None, deadline=None, seconds_per_trial=10.0)
    assert counted.eta_s() == pytest.approx(20.0)
    bar.close()
    counted.close()


def test_noise_is_measured_only_when_the_time_limit_leaves_room(cifar_dir, tmp_path, monkeypatch):
    """The two extra trainings of the hand design cost two trials' time: a search whose time limit
    fits only a few trials (by the plan's calibrated estimate) skips them and says so; a long
    enough one measures them beside the hand design's own trial."""
    from conftest import PlantedTraining

    monkeypatch.setattr("nas.objective.train", PlantedTraining())
    recipe = Recipe(epochs=2)
    noise = {}
    for limit in (60.0, 365 * 86400.0):
        storage = f"sqlite:///{tmp_path}/n{limit:.0f}.db"
        r = search(
            "conv",
            5000,
            SearchConfig("random", trials=2, time_limit=limit, val_size=200, pruner="none"),
            storage=storage,
            data_dir=cifar_dir,
            recipe=recipe,
            progress=False,
        )
        noise[limit] = optuna.load_study(study_name=r.study_name, storage=storage).user_attrs["score_noise"]
    assert sorted(noise[60.0]["values"]) == ["0"] and noise[60.0]["sigma"] is None
    assert sorted(noise[365 * 86400.0]["values"]) == ["0", "1", "2"] and noise[365 * 86400.0]["sigma"] > 0


def test_a_sweeps_calibrations_run_jobs_at_a_time_and_all_reach_the_cache(monkeypatch):
    """calibrate_all measures `jobs` models at once (a cold `nas sweep --plan` calibrates 17 on a
    CPU), each model once however often it is listed, and every measurement reaches the cache
    file although they finish concurrently; its answers come in the order asked."""
    import threading

    import nas.plan
    from nas.plan import Calibration, calibrate_all

    running, most, lock = [0], [0], threading.Lock()
    measured = []

    def fake_measure(genome, recipe, dev, images):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            measured.append((str(genome), images))
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return Calibration(str(genome), 1, 1000.0 * len(str(genome)), 1.0, "cpu")

    monkeypatch.setattr(nas.plan, "_measure", fake_measure)
    monkeypatch.setattr(nas.plan, "_MEASURED", {})  # this test's measurements only, not the process's
    space = load_space("conv-shape")
    genomes = [project(default_start(space), space, b) for b in (1_000, 5_000, 10_000, 50_000)]
    recipe = Recipe(batch_size=64)
    models = [(g, recipe, 2048) for g in genomes] + [(genomes[2], recipe, 64)]  # 10k again: a baseline
    cals = calibrate_all(models, "cpu", jobs=2)
    assert most[0] == 2
    assert sorted(measured) == sorted((str(g), 2048) for g in genomes)  # 10k once, at its first size
    assert [c.genome for c in cals] == [str(g) for g, _, _ in models]
    monkeypatch.setattr(nas.plan, "_MEASURED", {})  # a new process: only the file remains
    with threads_per_job(2):  # the threads one of two jobs gets: part of the cache key
        assert all(calibrate(g, recipe, "cpu").cached for g in genomes)
