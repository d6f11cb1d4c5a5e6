"""How a sweep spends its time (nas.sweep_plan): by cost per trial and per epoch, and baselines
that train with their own family's recipe."""

from __future__ import annotations

from dataclasses import replace

import pytest

import nas.runs
import nas.sweep_plan
from nas.plan import TIME_PER_FLOPS_EXPONENT, Calibration, parse_duration
from nas.search import SearchConfig
from nas.spaces import load_space
from nas.sweep import plan_resumed, sweep
from nas.sweep_plan import MIN_SEARCH_SHARE, baselines_for, equal_epochs, final_share, plan_sweep, split_by_cost
from nas.training import TrainResult, space_recipe


def test_a_budget_whose_epochs_cost_6x_gets_6x_the_final_training_time():
    epoch_s = {1_000: 10.0, 1_000_000: 60.0}
    shares = split_by_cost(700.0, epoch_s)
    assert shares[1_000_000] == pytest.approx(6 * shares[1_000]) and sum(shares.values()) == pytest.approx(700)
    assert equal_epochs(7000.0, epoch_s) == 100  # 7000 s / (10 + 60) s per epoch of both


def test_winners_take_more_than_half_the_time_where_half_would_train_them_under_30_epochs():
    epoch_s = {1_000: 10.0, 1_000_000: 60.0}  # 70 s per epoch of both winners
    assert final_share(4 * 3600.0, epoch_s) == 0.5  # half pays for 102 epochs: the searches keep half
    # 1 h: half would pay for 25 epochs; 30 take 2,100 s, 58% of the hour
    assert final_share(3600.0, epoch_s) == pytest.approx(2100 / 3600)
    assert equal_epochs(final_share(3600.0, epoch_s) * 3600, epoch_s) == 30
    # 30 min: 30 epochs would leave the searches 0%; they keep MIN_SEARCH_SHARE, the winners get 20 epochs
    assert final_share(1800.0, epoch_s) == pytest.approx(1 - MIN_SEARCH_SHARE)
    assert equal_epochs(final_share(1800.0, epoch_s) * 1800, epoch_s) == 20


def _plan_with_costs(monkeypatch, flops_ratios: tuple[float, ...] = (1.0,), slower: float = 1.0, hours: float = 4):
    """The 1k+1M plan of an `hours` sweep with a calibration in which a 1M model costs 6x a 1k
    one (on a machine `slower` times slower than 6000 and 1000 images/s), and the searches'
    random genomes `flops_ratios` times the hand design's FLOPs."""
    from nas.counting import count_params

    def fake_calibrate(genome, recipe, device=None, **_):
        rate = (6000.0 if count_params(genome) < 100_000 else 1000.0) / slower  # images/s
        return Calibration(str(genome), count_params(genome), rate, 10 * rate, "cpu")

    monkeypatch.setattr(nas.sweep_plan, "calibrate", fake_calibrate)
    monkeypatch.setattr("nas.plan.calibrate", fake_calibrate)  # the searches' own plans
    monkeypatch.setattr("nas.search.flops_ratios", lambda *a, **k: sorted(flops_ratios))
    space = load_space("conv-shape")
    config = SearchConfig(trials=None, subset=15_000, val_size=5_000, jobs=1)
    recipe = space_recipe(space, epochs=4)
    limit = hours * 3600
    return plan_sweep(
        space, [1_000, 1_000_000], config, recipe, time_limit=limit, final_epochs=None, baselines=(), device="cpu"
    )


def test_a_winners_epoch_is_planned_at_a_costly_searched_genomes_cost(monkeypatch):
    """Winners compute more than the hand design the plan calibrates, and more than a typical
    trial (the genomes that test best are the ones that compute more): a winner's epoch is costed
    at the 80th percentile of the random genomes' FLOPs, a trial at their median."""
    hand_cost = _plan_with_costs(monkeypatch).budgets[1]
    twice = 2 ** (1 / TIME_PER_FLOPS_EXPONENT)  # FLOPs that take twice the time
    searched = _plan_with_costs(monkeypatch, (1.0,) * 12 + (twice,) * 4).budgets[1]
    assert searched.epoch_s == pytest.approx(2 * hand_cost.epoch_s) == pytest.approx(2 * 50_000 / 1000.0)
    assert searched.search.seconds_per_trial == pytest.approx(hand_cost.search.seconds_per_trial)
    assert searched.final_epochs < hand_cost.final_epochs
    assert _plan_with_costs(monkeypatch, (1.0,) * 15 + (twice,)).budgets[1].epoch_s == pytest.approx(hand_cost.epoch_s)


def test_a_plan_too_short_for_30_epochs_says_what_time_gives_them(monkeypatch):
    """On a machine 10x slower 4 hours train the winners fewer than 30 epochs;
    the plan says so and names the --time that gives them 30, which it then does."""
    fast = _plan_with_costs(monkeypatch)
    assert not any("--time" in line for line in fast.lines())
    slow = _plan_with_costs(monkeypatch, slower=10)
    assert slow.budgets[0].final_epochs < 30
    hint = slow.lines()[-1]
    assert "gives them 30" in hint
    wanted = hint.split("--time ")[1].split()[0]
    enough = _plan_with_costs(monkeypatch, slower=10, hours=parse_duration(wanted) / 3600)
    assert all(b.final_epochs >= 30 for b in enough.budgets)
    shorter = _plan_with_costs(monkeypatch, slower=10, hours=parse_duration(wanted) / 3600 - 0.5)
    assert min(b.final_epochs for b in shorter.budgets) < 30  # half an hour less would not do


def test_the_plan_gives_equal_epochs_and_equal_trials(monkeypatch):
    """With a calibration in which a 1M model costs 6x a 1k one, every winner gets the same epochs
    (so the 1M one 6x the time) and every search about the same trials."""
    plan = _plan_with_costs(monkeypatch)
    small, large = plan.budgets
    assert small.final_epochs == large.final_epochs >= 30
    assert large.final_s == pytest.approx(6 * small.final_s)
    assert abs(small.expected_trials - large.expected_trials) <= 1
    assert large.search_s == pytest.approx(6 * small.search_s, rel=0.01)
    assert sum(b.search_s + b.final_s for b in plan.budgets) <= 4 * 3600
    text = "\n".join(plan.lines())
    assert "1,000,000" in text and "ETA" in text


def test_baselines_train_with_their_own_family_recipe():
    space = load_space("conv-shape")
    found = {b.kind: b for b in baselines_for(space, 50_000, 0.1, ("hand", "resnet", "reference"), epochs=30)}
    assert set(found) == {"hand", "resnet", "reference"}
    assert found["hand"].recipe.lr == space_recipe(space).lr == 0.8
    assert found["reference"].recipe.lr == 0.4 and found["reference"].genome.family == "mbconv"
    assert found["resnet"].genome.family == "resnet" and len(set(found["resnet"].genome.genes["depth"])) == 1
    assert all(b.recipe.epochs == 30 for b in found.values())


def test_a_baseline_that_diverges_under_the_winners_recipe_trains_under_its_own(cifar_dir, tmp_path, monkeypatch):
    """A stand-in trainer in which an MBConv model diverges above lr 0.5, as the reference models
    did at the conv spaces' lr 0.8: the reference baseline trains (at mbconv's 0.4), and would not
    have with the winner's recipe."""
    real_train = nas.runs.train

    def train(genome, data, recipe, *args, **kwargs):
        if genome.family == "mbconv" and recipe.lr > 0.5:
            return TrainResult([], 0.0, "failed", "loss became nan at epoch 1 step 3", 0, False, 0.0, 0.0, 0, "cpu", 0)
        return real_train(genome, data, recipe, *args, **kwargs)

    monkeypatch.setattr(nas.runs, "train", train)
    space = load_space("conv-shape")
    config = SearchConfig("random", trials=1, val_size=200, pruner="none", noise_seeds=False)
    recipe = space_recipe(space, epochs=1)
    ref = baselines_for(space, 50_000, 0.1, ("reference",), epochs=1)[0]
    assert not train(ref.genome, None, replace(ref.recipe, lr=recipe.lr)).ok  # the winner's recipe fails
    outcomes = sweep(
        space,
        [50_000],
        config,
        final_epochs=1,
        storage=f"sqlite:///{tmp_path}/s.db",
        data_dir=cifar_dir,
        recipe=recipe,
        objective=lambda genome, trial: 0.1,
        progress=False,
        runs_dir=tmp_path / "runs",
        baselines=["reference"],
        export=False,
    )
    record = outcomes[0].baselines["seed"]
    assert record["test_acc"] is not None and record["recipe"]["lr"] == 0.4
    assert outcomes[0].final["recipe"]["lr"] == 0.8


def test_fit_keeps_the_baselines_that_take_at_most_twice_the_winners_training(monkeypatch):
    from nas.counting import count_params

    def fake_calibrate(genome, recipe, device=None, **_):
        rate = 1000.0 if genome.family == "mbconv" else 6000.0  # the reference model costs 6x
        return Calibration(str(genome), count_params(genome), rate, 10 * rate, "cpu")

    monkeypatch.setattr(nas.sweep_plan, "calibrate", fake_calibrate)
    monkeypatch.setattr("nas.plan.calibrate", fake_calibrate)  # the searches' own plans
    monkeypatch.setattr("nas.search.flops_ratios", lambda *a, **k: [1.0])
    space = load_space("conv-shape")
    config = SearchConfig(trials=None, subset=15_000, val_size=5_000, jobs=1)
    plan = plan_sweep(
        space,
        [50_000],
        config,
        space_recipe(space, epochs=4),
        time_limit=3600,
        final_epochs=None,
        baselines=nas.sweep_plan.FIT,
        device="cpu",
    )
    (b,) = plan.budgets
    assert [x.kind for x in b.baselines] == ["hand", "resnet"]  # each as costly as the winner; the reference 6x
    assert b.baseline_s == pytest.approx(2 * b.final_s)


def test_a_resumed_sweep_keeps_the_baselines_fit_chose_at_first(tmp_path, monkeypatch):
    """'fit' chooses baselines by today's costs; a resumed sweep keeps the kinds its first run
    chose (recorded with the budget's plan, or else the kinds trained so far), so a cheaper
    calibration on the rerun does not start baselines the curve never had."""
    from nas.counting import count_params
    from nas.study import open_study
    from nas.sweep import PLAN_ATTR

    def fake_calibrate(genome, recipe, device=None, **_):
        rate = 1000.0 if genome.family == "mbconv" else 6000.0
        return Calibration(str(genome), count_params(genome), rate, 10 * rate, "cpu")

    monkeypatch.setattr(nas.sweep_plan, "calibrate", fake_calibrate)
    monkeypatch.setattr("nas.plan.calibrate", fake_calibrate)
    monkeypatch.setattr("nas.search.flops_ratios", lambda *a, **k: [1.0])
    space = load_space("conv-shape")
    config = SearchConfig(trials=None, subset=15_000, val_size=5_000, jobs=1)
    recipe = space_recipe(space, epochs=4)
    storage = f"sqlite:///{tmp_path}/s.db"
    studies = {
        b: open_study(
            storage, space, b, recipe, tol=config.tol, searcher=config.searcher, subset=15_000, val_size=5_000
        )
        for b in (10_000, 50_000, 100_000)
    }
    studies[10_000].set_user_attr(PLAN_ATTR, {"search_s": 60.0, "final_epochs": 30, "baselines": ["hand"]})
    studies[50_000].set_user_attr("baseline:hand", {"test_acc": 0.5})  # before plans recorded the kinds
    args = {"storage": storage, "time_limit": 3600, "final_epochs": None}
    plan = plan_resumed(space, [10_000, 50_000, 100_000], config, recipe, baselines=nas.sweep_plan.FIT, **args)
    kinds = {b.budget: [x.kind for x in b.baselines] for b in plan.budgets}
    assert kinds == {10_000: ["hand"], 50_000: ["hand"], 100_000: ["hand", "resnet"]}  # 100k: chosen today
    assert plan.budgets[0].baseline_epoch_s == pytest.approx(plan.budgets[2].baseline_epoch_s / 2)
    # kinds the user names are trained whatever was chosen before
    named = plan_resumed(space, [10_000], config, recipe, baselines=["hand", "resnet"], **args)
    assert [x.kind for x in named.budgets[0].baselines] == ["hand", "resnet"]


def test_a_resumed_timed_sweep_keeps_what_its_first_run_planned(cifar_dir, tmp_path, monkeypatch):
    """The first run is stopped after the 8k search, before its final training; on the rerun the
    machine is faster (the plan would now give 9 epochs), but 8k keeps its recorded plan (3
    epochs), as 3k does, so the curve's winners keep equal epochs."""
    import optuna

    space = load_space("conv")
    config = SearchConfig("random", trials=None, val_size=200, pruner="none", noise_seeds=False, finalists=0)
    storage = f"sqlite:///{tmp_path}/s.db"
    common = dict(
        storage=storage,
        data_dir=cifar_dir,
        recipe=space_recipe(space, epochs=1),
        objective=lambda genome, trial: 0.1,
        progress=False,
        runs_dir=tmp_path / "runs",
        baselines=(),
        export=False,
        time_limit=30,
    )
    monkeypatch.setattr(nas.sweep_plan, "equal_epochs", lambda *args: 3)
    first = sweep(space, [3000, 8000], config, **common)
    assert [o.final["epochs"] for o in first] == [3, 3]
    stopped = optuna.load_study(study_name=first[1].search.study_name, storage=storage)
    stopped.set_user_attr("final", None)  # as if stopped before the 8k winner's final training
    monkeypatch.setattr(nas.sweep_plan, "equal_epochs", lambda *args: 9)
    again = sweep(space, [3000, 8000], config, **common)
    assert [o.final["epochs"] for o in again] == [3, 3] and again[0].final_reused and not again[1].final_reused
    # What `nas sweep --plan` prints for a resumed storage is what the run does, for any subset
    # of its budgets; a storage not yet written keeps the fresh plan and is not created.
    opts = dict(time_limit=30, final_epochs=None, baselines=())
    (resumed,) = plan_resumed(space, [8000], config, common["recipe"], storage=storage, **opts).budgets
    assert resumed.final_epochs == 3
    fresh = tmp_path / "new.log"
    (new,) = plan_resumed(space, [8000], config, common["recipe"], storage=str(fresh), **opts).budgets
    assert new.final_epochs == 9 and not fresh.exists()
