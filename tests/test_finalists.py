"""Finalists (nas.finalists): a search retrains its best genomes on every training image of the
split and the best of them is the winner; recorded in the study, kept on a rerun, paid for out
of the time limit."""

import optuna
import pytest
from conftest import PlantedTraining, plan_for_tests

from nas.cli import main
from nas.evaluator import Outcome
from nas.finalists import ATTR_PREFIX, pick, recorded
from nas.plan import Calibration
from nas.report import write_report
from nas.search import FinalistTime, SearchConfig, search
from nas.spaces import parse_genome
from nas.study import top_trials, trial_genome
from nas.training import Recipe

RECIPE = Recipe(epochs=1)


class RanksFlipOnAllImages(PlantedTraining):
    """Planted training whose ranking turns over when a genome trains on more images than the
    trials' subset: the search's best genome is the worst finalist, as a short fidelity can err."""

    def __init__(self, subset: int):
        super().__init__()
        self.subset, self.sizes = subset, []

    def __call__(self, genome, data, recipe, device=None, callback=None, **kw):
        self.sizes.append(len(data.train_y))
        result = super().__call__(genome, data, recipe, device, callback, **kw)
        if len(data.train_y) > self.subset:
            result.val_acc = 1.0 - result.val_acc
            result.curve[-1]["val_acc"] = result.val_acc
        return result


def test_the_best_finalist_wins_and_a_rerun_keeps_the_finalists(cifar_dir, tmp_path, monkeypatch):
    planted = RanksFlipOnAllImages(subset=600)
    monkeypatch.setattr("nas.objective.train", planted)
    storage = f"sqlite:///{tmp_path}/f.db"
    config = SearchConfig(
        "random",
        trials=4,
        val_size=200,
        subset=600,
        pruner="none",
        finalists=3,
        plan=False,
        noise_seeds=False,
        finalist_pick="best",
    )
    result = search("conv", 5000, config, storage=storage, data_dir=cifar_dir, recipe=RECIPE, progress=False)

    top = top_trials(optuna.load_study(study_name=result.study_name, storage=storage), 5000, 3)
    assert len(top) == 3 and len(result.finalists) == 3
    # the three best trials were retrained on all 1,800 images left beside the 200 held out
    assert planted.sizes.count(1800) == 3 and planted.sizes.count(600) == 4
    assert {f.trial for f in result.finalists} == {t.number for t in top}
    for f in result.finalists:
        assert f.train_images == 1800 and f.fidelity == {"val_size": 200, "epochs": 1, "seed": 1}
        assert f.score == pytest.approx(1.0 - PlantedTraining.accuracy(optuna_genome(top, f.trial), 1))
    assert [f.score for f in result.finalists] == sorted((f.score for f in result.finalists), reverse=True)
    # flipped ranking: the third-best trial is the best finalist, and the winner
    assert result.best.number == top[2].number == result.finalists[0].trial
    assert result.best.number != result.top[0].number

    study = optuna.load_study(study_name=result.study_name, storage=storage)
    assert sorted(k for k in study.user_attrs if k.startswith(ATTR_PREFIX)) == sorted(
        f"{ATTR_PREFIX}{t.number}" for t in top
    )
    assert recorded(study.user_attrs) == result.finalists

    # the report shows the finalists, marks the winner, and its winners table names the winner's genome
    page = write_report(storage, tmp_path / "r.html").read_text()
    table = page[page.index('<table class="winners finalists">') :]
    table = table[: table.index("</table>")]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 3
    assert result.best.user_attrs["genome_str"] in rows[0] and "<b>winner</b>" in rows[0]
    assert all("<b>winner</b>" not in r for r in rows[1:])
    winners = page[page.index('<h2 id="winners">') : page.index('<h2 id="added">')]
    assert result.best.user_attrs["genome_str"] in winners and result.top[0].user_attrs["genome_str"] not in winners

    # the same search again: no new trial, no finalist retrained, the same winner
    calls = planted.calls
    again = search("conv", 5000, config, storage=storage, data_dir=cifar_dir, recipe=RECIPE, progress=False)
    assert planted.calls == calls
    assert again.best.number == result.best.number and again.finalists == result.finalists


def optuna_genome(top, number):
    return trial_genome(next(t for t in top if t.number == number))


def test_without_finalists_the_best_trial_wins(cifar_dir, tmp_path, monkeypatch):
    planted = RanksFlipOnAllImages(subset=600)
    monkeypatch.setattr("nas.objective.train", planted)
    config = SearchConfig("random", trials=3, val_size=200, subset=600, pruner="none", plan=False, noise_seeds=False)
    result = search(
        "conv", 5000, config, storage=f"sqlite:///{tmp_path}/n.db", data_dir=cifar_dir, recipe=RECIPE, progress=False
    )
    assert result.finalists == [] and planted.sizes == [600, 600, 600]
    assert result.best.number == result.top[0].number


def test_a_search_retrains_the_best_of_each_topology_and_its_winner_may_rank_low(cifar_dir, tmp_path, monkeypatch):
    """The default pick: the finalists are the best trials of distinct topologies; with the
    ranking flipped on all images, the winner is the finalist whose trial scored lowest, which
    may be far down the trials' ranking."""
    planted = RanksFlipOnAllImages(subset=600)
    monkeypatch.setattr("nas.objective.train", planted)
    config = SearchConfig(
        "random", trials=12, val_size=200, subset=600, pruner="none", finalists=3, plan=False, noise_seeds=False
    )
    assert config.finalist_pick == "diverse"
    result = search(
        "conv", 5000, config, storage=f"sqlite:///{tmp_path}/d.db", data_dir=cifar_dir, recipe=RECIPE, progress=False
    )
    topologies = [trial_genome(t).topology() for t in result.top]
    assert len(result.top) == 12 and len(set(topologies)) >= 3
    chosen = [next(t for t in result.top if t.number == f.trial) for f in result.finalists]
    assert len({trial_genome(t).topology() for t in chosen}) == 3
    # each finalist is the best trial of its topology
    assert all(topologies.index(trial_genome(t).topology()) == result.top.index(t) for t in chosen)
    lowest = min(chosen, key=lambda t: t.value)
    assert result.best.number == lowest.number == result.finalists[0].trial


def test_cli_prints_the_finalists_and_the_winner(cifar_dir, tmp_path, monkeypatch, capsys):
    """Two jobs: the trials and the two finalists train two at a time."""
    planted = RanksFlipOnAllImages(subset=600)
    monkeypatch.setattr("nas.objective.train", planted)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "search",
                "--budget",
                "5k",
                "--space",
                "conv",
                "--searcher",
                "random",
                "--trials",
                "3",
                "--subset",
                "600",
                "--val-size",
                "200",
                "--epochs",
                "1",
                "--pruner",
                "none",
                "--finalists",
                "2",
                "--finalist-epochs",
                "2",
                "--jobs",
                "2",
                "--storage",
                f"sqlite:///{tmp_path}/c.db",
                "--data-dir",
                str(cifar_dir),
                "-q",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "finalists, retrained on 1,800 images x 2 epochs (seed 1):" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[-3:] == ["finalist", "val", "acc"])
    first = lines[head + 1].split()
    assert first[0] == "1" and lines[head + 3].startswith("winner:")
    assert lines[head + 3].split()[1] == first[1]  # the winner is the best finalist's trial
    assert planted.sizes.count(1800) == 2


TWO_STAGES = """
family = "conv"
[options]
stages = 2
[genes]
depth = {low = 1, high = 2}
width = {low = 4, high = 64, log = true}
"""


@pytest.mark.parametrize("pick_rule", ["best", "diverse"])
def test_cli_finalist_pick_chooses_the_finalists(pick_rule, cifar_dir, tmp_path, monkeypatch):
    """In this run the two best trials share a topology: `best` retrains both, `diverse` the best
    and the best trial of another topology."""
    monkeypatch.setattr("nas.objective.train", PlantedTraining())
    monkeypatch.chdir(tmp_path)  # nas search writes its report under ./reports
    space, storage = tmp_path / "two.toml", f"sqlite:///{tmp_path}/b.db"
    space.write_text(TWO_STAGES)
    assert (
        main(
            [
                "search",
                "--budget",
                "8k",
                "--space",
                str(space),
                "--searcher",
                "random",
                "--trials",
                "8",
                "--subset",
                "600",
                "--val-size",
                "200",
                "--epochs",
                "1",
                "--pruner",
                "none",
                "--finalists",
                "2",
                "--finalist-pick",
                pick_rule,
                "--storage",
                storage,
                "--data-dir",
                str(cifar_dir),
                "-q",
            ]
        )
        == 0
    )
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    top = top_trials(study, 8000, None)
    topologies = [trial_genome(t).topology() for t in top]
    assert topologies[0] == topologies[1] != topologies[-1]
    other = next(t for t, topo in zip(top, topologies) if topo != topologies[0])
    expected = [top[0], top[1]] if pick_rule == "best" else [top[0], other]
    assert {f.trial for f in recorded(study.user_attrs)} == {t.number for t in expected}


@pytest.mark.parametrize("bad", ["-1", "x"])
def test_bad_finalists_is_one_line(bad, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--budget", "5k", "--finalists", bad, "--plan"])
    err = capsys.readouterr().err
    assert "--finalists" in err and "Traceback" not in err


def test_the_plan_keeps_time_for_the_finalists():
    cal = Calibration(
        genome="conv-shape:4x1|8x1|16x1|33x1",
        params=9_900,
        train_images_per_s=5_000,
        eval_images_per_s=20_000,
        device="cpu",
    )
    plain = plan_for_tests(cal, jobs=2)
    plan = plan_for_tests(cal, jobs=2, finalists=3, finalist_images=45_000, finalist_epochs=4)
    per = 4 * (45_000 / 5_000 + 5_000 / 20_000)
    assert plan.seconds_per_finalist == pytest.approx(per)
    trial = 4 * (15_000 / 5_000 + 5_000 / 20_000)  # one trial on one job
    # 3 finalists, 2 at a time: two rounds, after the trials running when the search stops
    assert plan.reserve_s == pytest.approx(2 * per + trial)
    assert plan.expected_trials == int((1200 - 2 * per - trial) // plan.seconds_per_trial) < plain.expected_trials
    assert any("winner:   the best of 3 finalists (the best trial of each topology first)" in x for x in plan.lines())
    # never more than half the time: a short search still searches
    short = plan_for_tests(cal, jobs=2, time_limit_s=60, finalists=3, finalist_images=45_000, finalist_epochs=4)
    assert short.reserve_s == 30


def test_no_trial_starts_in_the_time_kept_for_the_finalists(cifar_dir, tmp_path, monkeypatch):
    import time

    class Slow(RanksFlipOnAllImages):
        def __call__(self, *a, **kw):
            time.sleep(0.4)  # the calibrated time of one trial below
            result = super().__call__(*a, **kw)
            result.wall_time_s = 0.4  # as the training would measure it
            return result

    planted = Slow(subset=600)
    monkeypatch.setattr("nas.objective.train", planted)
    monkeypatch.setattr("nas.search.flops_ratios", lambda *a, **k: [1.0])  # trials cost what the hand design does
    monkeypatch.setattr("nas.search.TRAIN_IMAGES", 2000)  # the fixture's training images, as the plan counts them
    # a calibration that makes one finalist (1,800 images + 200 validated, 1 epoch) take 1 s and a
    # trial (600 + 200) 0.4 s, as the trials take: a 6-second search keeps at least its last 1.4 s
    # for the finalist and the trial running when the search stops (more when the trials, measured
    # on a busy machine, take longer)
    monkeypatch.setattr(
        "nas.plan.calibrate",
        lambda *a, **k: Calibration(
            genome="g", params=1, train_images_per_s=2000, eval_images_per_s=2000, device="cpu"
        ),
    )
    storage = f"sqlite:///{tmp_path}/t.db"
    config = SearchConfig(
        "random",
        trials=None,
        time_limit=6.0,
        val_size=200,
        subset=600,
        pruner="none",
        finalists=1,
        plan=False,
        noise_seeds=False,
    )
    t0 = time.time()
    result = search("conv", 5000, config, storage=storage, data_dir=cifar_dir, recipe=RECIPE, progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    starts = [t.datetime_start.timestamp() for t in study.trials]
    assert len(starts) >= 2
    assert max(starts) < t0 + 4.6 + 0.1  # none after the search's share (timestamps in whole ms, some slack)
    assert len(result.finalists) == 1 and planted.sizes.count(1800) == 1


def test_the_time_kept_follows_how_long_trials_really_take():
    """Trials twice as slow as calibrated (a busy machine): twice the time is kept for the finalists."""
    from optuna.trial import TrialState

    cal = Calibration(genome="g", params=1, train_images_per_s=1000, eval_images_per_s=1000, device="cpu")
    plan = plan_for_tests(cal, epochs=1, time_limit_s=600, finalists=2, finalist_images=45_000, finalist_epochs=1)
    assert plan.seconds_per_trial == 20 and plan.seconds_per_finalist == 50  # reserve: 2 x 50 + 20

    class Budget:
        deadline = None

    budget = Budget()
    keeper = FinalistTime(plan, 1000.0, budget, lambda: [])  # no trial is a candidate yet
    assert budget.deadline == 1000 - 120  # at the calibrated speed
    genome = None
    keeper.outcome(Outcome(1, TrialState.PRUNED, 0.1, genome, seconds=5))  # pruned: not a full trial
    keeper.outcome(Outcome(2, TrialState.COMPLETE, 0.2, genome, reused_from=1))  # reused: nothing trained
    assert budget.deadline == 880
    keeper.outcome(Outcome(3, TrialState.COMPLETE, 0.2, genome, seconds=40))
    assert keeper.slowdown() == 2 and budget.deadline == 1000 - 240
    for n in range(4, 8):  # many slow trials: never more than half the time limit
        keeper.outcome(Outcome(n, TrialState.COMPLETE, 0.2, genome, seconds=400))
    assert budget.deadline == 1000 - 300


def test_the_time_kept_is_that_of_the_genomes_that_will_be_the_finalists():
    """The finalists are rarely the hand design the plan was calibrated on: the reserve is made of
    the chosen genomes' own trial times, scaled to the finalist fidelity."""
    from types import SimpleNamespace

    from optuna.trial import TrialState

    cal = Calibration(genome="g", params=1, train_images_per_s=1000, eval_images_per_s=1000, device="cpu")
    plan = plan_for_tests(cal, epochs=1, time_limit_s=1000, finalists=3, finalist_images=45_000, finalist_epochs=1)
    assert plan.finalist_scale == 2.5  # (45,000 + 5,000) / (15,000 + 5,000) images
    chosen = [SimpleNamespace(user_attrs={"wall_time_s": s}) for s in (40.0, 10.0)]

    class Quota:
        deadline = None

    quota = Quota()
    keeper = FinalistTime(plan, 2000.0, quota, lambda: chosen)
    keeper.outcome(Outcome(1, TrialState.COMPLETE, 0.2, None, seconds=20))  # as calibrated: slowdown 1
    # two chosen: 2.5 x (40 + 10) s; the third not chosen yet: the calibrated 50 s; one trial running: 20 s
    assert quota.deadline == 2000 - (100 + 25 + 50 + 20)
    plan.jobs = 2  # two at a time, longest first: (100) and (25 + 50)
    keeper.outcome(Outcome(2, TrialState.COMPLETE, 0.2, None, seconds=20))
    assert quota.deadline == 2000 - (100 + 2 * 20 / 2)


def test_the_plan_counts_the_noise_measurement_and_the_genomes_typical_cost():
    cal = Calibration(genome="g", params=1, train_images_per_s=1000, eval_images_per_s=1000, device="cpu")
    hand_only = plan_for_tests(cal, epochs=1, time_limit_s=1000)
    assert hand_only.expected_trials == 50  # 1,000 s of 20 s trials
    typical = plan_for_tests(cal, epochs=1, time_limit_s=1000, cost_factor=1.25, noise_trials=2)
    # two hand-design trainings at 20 s first; then trials of 1.25 x 20 s
    assert typical.noise_s == 40 and typical.seconds_per_trial == 25
    assert typical.expected_trials == int((1000 - 40) // 25)
    assert any("a typical genome here trains 1.25x as long" in line for line in typical.lines())


def test_diverse_finalists_are_the_best_of_each_topology_then_the_next_best():
    """Genomes that differ only in widths share a topology; the diverse pick takes the best trial
    of each topology, best first, and fills the rest of k with the next best trials."""
    texts = [
        "conv:8x1|16x1|32x1|64x1",
        "conv:9x1|17x1|30x1|60x1",
        "conv:6x2|12x1|24x1|60x1",
        "conv:10x1|18x1|28x1|58x1",
        "conv:5x1|10x3|20x1|50x1",
        "conv:6x2|14x1|22x1|56x1",
    ]
    genomes = [parse_genome(t) for t in texts]
    assert genomes[0].topology() == genomes[1].topology() != genomes[2].topology() == genomes[5].topology()
    assert genomes[0].key() != genomes[1].key()
    study = optuna.create_study(direction="maximize")
    for value, g in zip([0.30, 0.29, 0.25, 0.24, 0.20, 0.19], genomes):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"genome": g.to_json()}))
    top = study.trials  # best first, as top_trials gives them

    def numbers(k, diverse=True):
        return [t.number for t in pick(top, k, diverse=diverse)]

    assert numbers(3, diverse=False) == [0, 1, 2]
    assert numbers(3) == [0, 2, 4]  # one of each of the three topologies
    assert numbers(2) == [0, 2]
    assert numbers(4) == [0, 1, 2, 4]  # three topologies, then the best trial left
    assert numbers(10) == [0, 1, 2, 3, 4, 5]


def test_several_jobs_start_the_longest_finalist_first():
    """The time kept for the finalists assumes the longest starts first; started in rank order,
    a slow finalist ranked last starts when a quick one ends and runs past the time limit."""
    import threading

    from nas.finalists import FinalistFidelity, retrain_finalists

    study = optuna.create_study(direction="maximize")
    texts = {"conv:8x1|16x1|32x1|64x1": 10.0, "conv:6x2|12x1|24x1|60x1": 30.0, "conv:5x1|10x3|20x1|50x1": 20.0}
    for value, (text, seconds) in zip([0.3, 0.2, 0.1], texts.items()):
        attrs = {"genome": parse_genome(text).to_json(), "wall_time_s": seconds}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    started, lock, both_running = [], threading.Lock(), threading.Barrier(2, timeout=30)

    def train_genome(genome):
        with lock:
            started.append(str(genome))
            first_two = len(started) <= 2
        if first_two:
            both_running.wait()  # the third starts only when one of these has ended
        return 0.5, 1.0, 100

    fidelity = FinalistFidelity(val_size=10, epochs=1, seed=1)
    done = retrain_finalists(study, study.trials, fidelity, train_genome, jobs=2)
    assert len(done) == 3
    assert set(started[:2]) == {"conv:6x2|12x1|24x1|60x1", "conv:5x1|10x3|20x1|50x1"}  # 30 s and 20 s
    assert started[2] == "conv:8x1|16x1|32x1|64x1"  # the best trial, but the quickest: last
    started.clear()
    study2 = optuna.create_study(direction="maximize")
    for t in study.trials:
        study2.add_trial(optuna.trial.create_trial(value=t.value, user_attrs=t.user_attrs))
    retrain_finalists(study2, study2.trials, fidelity, lambda g: started.append(str(g)) or (0.5, 1.0, 100), jobs=1)
    assert started == list(texts)  # one job: best first


def test_a_finalist_that_cannot_end_before_the_time_limit_is_not_started():
    """A finalist started with less time left than it needs is only cut at the limit, unranked;
    the time goes to the finalists that fit, and the note says why the other was left out."""
    import time

    from nas.finalists import FinalistFidelity, retrain_finalists

    study = optuna.create_study(direction="maximize")
    texts = {"conv:93x2|128x3|128x2|160x1": 600.0, "conv:8x1|16x1|32x1|64x1": 60.0}
    for value, (text, seconds) in zip([0.39, 0.35], texts.items()):
        attrs = {"genome": parse_genome(text).to_json(), "wall_time_s": seconds}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    started, notes = [], []
    fidelity = FinalistFidelity(val_size=10, epochs=1, seed=1)
    done = retrain_finalists(
        study,
        study.trials,
        fidelity,
        lambda g: started.append(str(g)) or (0.5, 1.0, 100),
        note=notes.append,
        deadline=time.time() + 540,  # 9 minutes: the 3x600 s finalist needs 30, the 3x60 s one 3
        finalist_scale=3.0,
    )
    assert started == ["conv:8x1|16x1|32x1|64x1"]
    assert [f.genome_str for f in done] == ["conv:8x1|16x1|32x1|64x1"]
    assert any("conv:93x2|128x3|128x2|160x1: needs about 30 min, 9 left; not started" in n for n in notes)
