"""`nas sweep`: one search per budget, then a longer final training of each budget's winner.

Every budget is its own study in one storage, so a rerun resumes each search where it stopped
(`nas.search.search` counts the trials already there) and skips final trainings already
recorded for the same winner and recipe. The final result lives in the study's user attr
`final`, which the report reads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from nas.budget import check_budget, parse_budgets, project
from nas.data import CifarSource, check_data, check_subset
from nas.errors import NasError
from nas.liveness import claimed, live_claims
from nas.runs import train_genome_command
from nas.search import SearchConfig, SearchResult, default_start, search
from nas.spaces import Genome, Space, load_space
from nas.storage import heartbeat_seconds, open_storage, storage_file, storage_url
from nas.study import Objective, open_study, search_seconds, study_name, trial_genome
from nas.sweep_plan import BASELINES, FIT, BudgetPlan, SweepPlan, choose_baselines
from nas.sweep_plan import plan_sweep as sweep_plan
from nas.text import duration, plural
from nas.training import Recipe, default_device, recipe_for, space_recipe, training_precision

if TYPE_CHECKING:
    from nas.data import CifarData

DEFAULT_BUDGETS = (1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)


@dataclass
class BudgetOutcome:
    budget: int
    search: SearchResult
    final: dict[str, Any] | None  # the study's `final` attr, None when no trial completed
    final_reused: bool  # True when an earlier run had already trained this winner
    # "hand", "resnet", "seed" (the reference model) -> final record
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    onnx: Path | None = None  # the winner's ONNX export, when exported


def export_final(study: optuna.Study, final: dict[str, Any], *, data: CifarSource, progress: bool) -> Path | None:
    """Export the final-trained winner into its run folder (model.onnx + model.card.json, checked
    against PyTorch) unless that is done already, and record the path as `final["onnx"]`. None
    when the run folder is not on this machine (a sweep resumed elsewhere)."""
    from nas.export import export_run

    run = Path(final["run_dir"])
    path = run / "model.onnx"
    if not _weights_here(final):
        if progress:
            print(
                f"not exported: the final training's weights are not in {run} (--retrain-missing trains it again)",
                flush=True,
            )
        return None
    if not (path.is_file() and path.stat().st_mtime >= (run / "model.pt").stat().st_mtime):
        export_run(run, path, data=data, source={"study": study.study_name, "trial": final.get("trial")})
        if progress:
            print(f"exported: {path}", flush=True)
    if final.get("onnx") != str(path):
        final["onnx"] = str(path)
        study.set_user_attr("final", final)
    return path


def earlier_final_epochs(study: optuna.Study, winner: Genome, recipe: Recipe) -> int | None:
    """The epochs of the winner's final training an earlier run recorded with this recipe, if
    any: a rerun with --time keeps them (and so reuses that training and its baselines') rather
    than recomputing them from how fast the machine happens to be now."""
    old = study.user_attrs.get("final")
    if not old or old.get("genome") != winner.to_json():
        return None
    if old.get("recipe") != replace(recipe, epochs=old["recipe"]["epochs"]).to_dict():
        return None
    return int(old["recipe"]["epochs"])


def final_train(
    study: optuna.Study,
    genome: Genome,
    recipe: Recipe,
    *,
    attr: str,
    data: CifarData,
    device: str | None,
    progress: bool,
    runs_dir: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Train `genome` with `recipe` on all training images, test it, record it as the study's user
    attr `attr` ("final" for the winner, "baseline:<kind>" for a baseline) and keep the weights
    under `runs_dir/<study>/<attr>/`."""
    out = runs_dir / study.study_name / attr.replace(":", "-")
    summary = train_genome_command(genome, recipe, out_dir=out, device=device, progress=progress, data=data)
    return record_final_training(study, attr, genome, recipe, summary, extra)


# What a final training's record holds besides the sweep's extras (the winner's trial and search
# score, a reference model's preset): what another row may share when it is the same training.
TRAINING_KEYS = (
    "genome", "genome_str", "params", "flops", "val_acc", "test_acc", "epochs", "train_size", "recipe",
    "wall_time_s", "device", "precision", "curve", "run_dir",
)  # fmt: skip


def record_final_training(
    study: optuna.Study, attr: str, genome: Genome, recipe: Recipe, summary: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """Record a final training as the study's user attr `attr` (docs/design.md, "Study and trial
    records"): `summary` is what `train_genome_command` returned, `extra` what the sweep adds
    (the winner's trial and search score, a baseline's preset). Returns the record."""
    from nas.counting import count_flops

    record = {
        **extra,
        "genome": genome.to_json(),
        "genome_str": str(genome),
        "params": summary["params"],
        "flops": count_flops(genome),
        "val_acc": summary["val_acc"],
        "test_acc": summary["test_acc"],
        "epochs": summary["epochs"],
        "train_size": summary["train_size"],
        "recipe": recipe.to_dict(),
        "wall_time_s": summary["wall_time_s"],
        "device": summary["device"],
        "precision": summary.get("precision"),
        "curve": summary["curve"],
        "run_dir": summary["run_dir"],
    }
    study.set_user_attr(attr, record)
    return record


def sweep(
    space: str | Space,
    budgets: str | list[int],
    config: SearchConfig | None = None,
    *,
    final_epochs: int | None = None,
    time_limit: float | None = None,
    storage: str | None = None,
    data_dir: str | Path | None = None,
    recipe: Recipe | None = None,
    objective: Objective | None = None,
    progress: bool = True,
    runs_dir: str | Path = "runs/final",
    baselines: Sequence[str] | bool = FIT,
    export: bool = True,
    retrain_missing: bool = False,
) -> list[BudgetOutcome]:
    """Search every budget (in the order given), then final-train each winner on all training images.
    `budgets` is a list, or a string as `--budgets` takes it ('1000,5k,1M').

    `time_limit` (seconds, the whole sweep's: searches and winners) is spent by cost
    (`nas.sweep_plan`): each budget's search gets a share proportional to its trial's cost (minus
    what its study has already used, so a rerun resumes), and every winner trains the same
    epochs, unless `final_epochs` is given. Winners of the budgets searched before are queued as
    trials of the next (budget transfer). `baselines` (kinds of `nas.sweep_plan.BASELINES`,
    `FIT`: those that fit twice the winner's training, or True/False for all/none) train for the
    winner's epochs, each with its own family's recipe, on top of the time limit. `recipe`
    (default: the space's) trains the searches' trials, its epochs included; the final trainings
    take it with their own epochs. `objective` replaces the searches' training (tests). CIFAR-100
    is read from disk once, when first needed. Work already recorded in a study (a final
    training of the same genome and recipe) is not redone. With `export`, each winner is
    exported to ONNX in its run folder right after its final training. With `retrain_missing`, a
    winner whose final training is recorded but whose weights are not on this machine (a journal
    resumed on another machine or in a fresh clone) is trained again, same recipe and seed, so it
    can be exported; the new record replaces the old one."""
    sp, config, url, recipe, plan = _planned(
        space, budgets, config, recipe, storage, data_dir, objective, time_limit, final_epochs, baselines, progress
    )
    cifar = CifarSource(data_dir, config.device or str(default_device()))
    outcomes: list[BudgetOutcome] = []
    winners: dict[int, Genome] = {}
    for i, bp in enumerate(plan.budgets, 1):
        if progress:
            print(f"== budget {bp.budget:,} ({i} of {len(budgets)}) ==", flush=True)
        result, study = _search_budget(sp, bp, config, recipe, url, cifar, winners, objective, progress)
        if result.best is None:
            if progress:
                print(f"budget {bp.budget:,}: no completed trial, nothing to train", flush=True)
            outcomes.append(BudgetOutcome(bp.budget, result, None, False))
            continue
        winners[bp.budget] = trial_genome(result.best)
        records, reused = _final_trainings(
            study,
            bp,
            result.best,
            recipe,
            cifar,
            config.device,
            progress,
            Path(runs_dir),
            final_epochs is None and time_limit is not None,
            retrain_missing,
        )
        onnx = export_final(study, records["final"], data=cifar, progress=progress) if export else None
        others = {k.split(":", 1)[1]: v for k, v in records.items() if k != "final"}
        outcomes.append(BudgetOutcome(bp.budget, result, records["final"], reused, others, onnx))
    return outcomes


def train_baselines(
    space: str | Space,
    budgets: str | list[int],
    config: SearchConfig | None = None,
    *,
    final_epochs: int | None = None,
    time_limit: float | None = None,
    storage: str | None = None,
    data_dir: str | Path | None = None,
    recipe: Recipe | None = None,
    progress: bool = True,
    runs_dir: str | Path = "runs/final",
    baselines: Sequence[str] | bool = FIT,
) -> dict[int, dict[str, dict[str, Any]]]:
    """The baselines `sweep` with these arguments would train, without searching: each budget's,
    for the epochs its plan gives the winners, recorded in the budget's study, where the sweep
    finds them trained and does not train them again. The budgets go largest first, so a
    process running this beside the sweep (which goes smallest first) does not train what the
    sweep is training. Returns per budget the records by kind ("hand", "resnet", "seed")."""
    sp, config, url, recipe, plan = _planned(
        space, budgets, config, recipe, storage, data_dir, None, time_limit, final_epochs, baselines, progress
    )
    cifar = CifarSource(data_dir, config.device or str(default_device()))
    st = open_storage(url)
    done: dict[int, dict[str, dict[str, Any]]] = {}
    for bp in sorted(plan.budgets, key=lambda b: -b.budget):
        study = open_study(
            st,
            sp,
            bp.budget,
            recipe,
            tol=config.tol,
            searcher=config.searcher,
            score=config.score,
            subset=config.subset,
            val_size=config.val_size,
        )
        _record_plan(study, bp)  # the sweep, when it gets here, trains its winner for the same epochs
        done[bp.budget] = {}
        for b in bp.baselines:
            arm = _FinalArm(b.attr, b.label, b.genome, replace(b.recipe, epochs=bp.final_epochs), b.extra)
            record = arm.recorded_in(study) or _same_training(study, bp.budget, arm, progress)
            if record is None:
                record = _train_or_await(study, bp.budget, arm, cifar, config.device, progress, Path(runs_dir))
            done[bp.budget][b.attr.split(":", 1)[1]] = record
    return dict(sorted(done.items()))


def _planned(
    space, budgets, config, recipe, storage, data_dir, objective, time_limit, final_epochs, baselines, progress
):
    """What `sweep` and `train_baselines` start from: the arguments checked, and the plan (printed)."""
    budgets = parse_budgets(budgets) if isinstance(budgets, str) else [check_budget(b) for b in budgets]
    config = config or SearchConfig()
    sp = load_space(space) if isinstance(space, (str, Path)) else space
    kinds = BASELINES if baselines is True else () if baselines is False else tuple(baselines)
    url = _check_sweep(sp, budgets, config, storage, data_dir, objective, time_limit)
    recipe = recipe or space_recipe(sp)
    plan = plan_resumed(
        sp, budgets, config, recipe, storage=url, time_limit=time_limit, final_epochs=final_epochs, baselines=kinds
    )
    if progress:
        print("\n".join(plan.lines()), flush=True)
    return sp, config, url, recipe, plan


def _check_sweep(sp: Space, budgets, config: SearchConfig, storage, data_dir, objective, time_limit) -> str:
    """Every argument checked before anything is written: the budgets the space must meet, the
    storage's name, and (last) the data folder."""
    replace(config, time_limit=config.time_limit if time_limit is None else time_limit).check()
    check_subset(config.subset)
    for budget in budgets:  # a budget the space cannot meet fails now, not after the searches before it
        project(config.start or default_start(sp), sp, budget, config.tol)
    url = storage_url(storage)  # created by the first search
    if objective is None:
        check_data(data_dir)
    return url


def _search_budget(
    sp,
    bp: BudgetPlan,
    config: SearchConfig,
    recipe: Recipe,
    url: str,
    cifar: CifarSource,
    winners: dict[int, Genome],
    objective,
    progress: bool,
) -> tuple[SearchResult, optuna.Study]:
    """The budget's search, with its share of the time (less what its study used before; none
    once its winner is trained) and the earlier budgets' winners projected here (budget transfer)."""
    transfer = []
    for b, g in winners.items():
        try:
            transfer.append((f"transfer:{b}", project(g, sp, bp.budget, config.tol)))
        except NasError:
            pass  # a shape that cannot be scaled into this budget
    earlier = _budget_study(open_storage(url), sp, bp.budget, config, recipe)
    limit = None
    if earlier is not None and "final" in earlier.user_attrs:
        limit = 0.0  # its winner is trained, so its search has ended: a rerun adds no trial
    elif bp.search_s is not None:
        used = search_seconds(earlier.get_trials(deepcopy=False), earlier.user_attrs) if earlier else 0.0
        limit = max(0.0, bp.search_s - used)
    step = replace(config, time_limit=limit, transfer=transfer)
    result = search(sp, bp.budget, step, storage=url, data=cifar, recipe=recipe, objective=objective, progress=progress)
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(url))
    _record_plan(study, bp)
    return result, study


def _record_plan(study: optuna.Study, bp: BudgetPlan) -> None:
    """The budget's plan, as the first timed run that touched its study made it (see `plan_resumed`)."""
    if PLAN_ATTR not in study.user_attrs and bp.search_s is not None:
        kinds = [b.kind for b in bp.baselines]
        study.set_user_attr(PLAN_ATTR, {"search_s": bp.search_s, "final_epochs": bp.final_epochs, "baselines": kinds})


PLAN_ATTR = "sweep_plan"  # a budget's search seconds and final epochs, as its first timed sweep planned them


def plan_resumed(
    sp: Space,
    budgets: Sequence[int],
    config: SearchConfig,
    recipe: Recipe,
    *,
    storage: str | None,
    time_limit: float | None,
    final_epochs: int | None,
    baselines: Sequence[str],
) -> SweepPlan:
    """The sweep's plan (`nas.sweep_plan.plan_sweep`) as a run on `storage` follows it: a budget
    whose study a timed sweep planned before keeps that search time and those final epochs,
    whichever budgets are run now and however fast the machine is today."""
    plan = sweep_plan(
        sp,
        budgets,
        config,
        recipe,
        time_limit=time_limit,
        final_epochs=final_epochs,
        baselines=baselines,
        device=config.device,
    )
    url = storage_url(storage)
    path = storage_file(url)
    if path is not None and not path.is_file():
        return plan  # nothing run yet (and --plan creates no file)
    st = open_storage(url)  # one read of a journal file for every budget
    kept = []
    for bp in plan.budgets:
        study = _budget_study(st, sp, bp.budget, config, recipe)
        bp = _kept_plan(study, bp)
        kinds = _kept_baselines(study) if tuple(baselines) == FIT else None
        if kinds is not None:  # the baselines 'fit' chose at first, though today's costs may differ
            chosen = choose_baselines(sp, bp.budget, config, kinds, bp.final_epochs, bp.epoch_s, config.device)
            bp = replace(bp, baselines=chosen[0], baseline_epoch_s=chosen[1])
        kept.append(bp)
    plan.budgets = kept
    return plan


def _budget_study(
    storage: optuna.storages.BaseStorage, sp: Space, budget: int, config: SearchConfig, recipe: Recipe
) -> optuna.Study | None:
    """The budget's study in the storage, if a search of it has run."""
    name = study_name(sp.name, budget, recipe, config.score, config.subset, config.val_size)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _kept_baselines(study: optuna.Study | None) -> list[str] | None:
    """The baseline kinds a sweep's `--baselines fit` chose for the budget when it first planned it
    (recorded with its plan; before that was recorded: the kinds trained so far), in BASELINES
    order; None where nothing was chosen yet."""
    if study is None:
        return None
    attrs = study.user_attrs
    kinds = (attrs.get(PLAN_ATTR) or {}).get("baselines")
    if kinds is None:
        recorded = [a.split(":", 1)[1] for a, record in attrs.items() if a.startswith("baseline:") and record]
        kinds = ["reference" if k == "seed" else k for k in recorded]  # the reference's records say "seed"
        if not kinds:
            return None
    return [k for k in BASELINES if k in kinds]


def _kept_plan(study: optuna.Study | None, bp: BudgetPlan) -> BudgetPlan:
    """A resumed timed sweep keeps what its first run planned for the budget (recorded in the
    study), however fast the machine happens to be now, so the winners' epochs do not drift."""
    kept = (study.user_attrs.get(PLAN_ATTR) if study is not None else None) or {}
    if bp.search_s is None or not kept:
        return bp
    return replace(bp, search_s=kept["search_s"], final_epochs=kept["final_epochs"])


@dataclass(frozen=True)
class _FinalArm:
    """One final training of a budget: the winner's or a baseline's."""

    attr: str  # the study's user attr its record goes to: "final", "baseline:<kind>"
    what: str  # what the sweep prints: "winner", "hand design", ...
    genome: Genome
    recipe: Recipe
    extra: dict[str, Any]  # recorded with it: the winner's trial and search score, a preset

    def is_training(self, record: dict[str, Any] | None) -> bool:
        """Whether `record` is a final training of this arm's genome and recipe (same seed, so the
        same model), whichever row it was recorded under."""
        if not record:
            return False
        return record.get("genome") == self.genome.to_json() and record.get("recipe") == self.recipe.to_dict()

    def recorded_in(self, study: optuna.Study) -> dict[str, Any] | None:
        """The study's record of this very training under the arm's own attr, if there is one."""
        old = study.user_attrs.get(self.attr)
        return old if self.is_training(old) else None


def _final_trainings(
    study: optuna.Study,
    bp: BudgetPlan,
    best,
    recipe: Recipe,
    cifar: CifarSource,
    device,
    progress: bool,
    runs_dir: Path,
    keep_earlier: bool,
    retrain_missing: bool = False,
) -> tuple[dict[str, dict], bool]:
    """The winner's final training and its baselines', each recorded in the study; a training
    already recorded with the same genome and recipe is reused. Returns the records and whether
    every one was reused."""
    winner = trial_genome(best)
    epochs = (earlier_final_epochs(study, winner, recipe) if keep_earlier else None) or bp.final_epochs
    # the winner with the lr its search chose, if it searched one
    arms = [
        _FinalArm(
            "final",
            "winner",
            winner,
            recipe_for(winner, replace(recipe, epochs=epochs)),
            {"trial": best.number, "search_val_acc": best.value},
        )
    ]
    arms += [_FinalArm(b.attr, b.label, b.genome, replace(b.recipe, epochs=epochs), b.extra) for b in bp.baselines]
    records: dict[str, dict] = {}
    reused, retrained = True, False
    for arm in arms:
        old = arm.recorded_in(study)
        if old is not None and retrain_missing and arm.attr == "final" and not _weights_here(old):
            if progress:
                print(
                    f"budget {bp.budget:,}: the winner's weights are not in {old.get('run_dir')}: training it again "
                    f"(recorded test accuracy {old['test_acc']:.2%}){_precision_change(old, arm.recipe, device)}",
                    flush=True,
                )
            old, retrained = None, True
        if old is not None and retrained and old.get("same_as") == "final":
            # it was the winner's training (the hand design won), which the new record replaces: on
            # another CPU the same seed need not give the same model, so the rows would disagree
            old = None
        with_weights = retrain_missing and arm.attr == "final"
        if old is None:  # e.g. the hand design won: its baseline is the same training, same seed
            old = _same_training(study, bp.budget, arm, progress, with_weights=with_weights)
        reused = reused and old is not None
        records[arm.attr] = old or _train_or_await(
            study, bp.budget, arm, cifar, device, progress, runs_dir, with_weights=with_weights
        )
    return records, reused


def _same_training(
    study: optuna.Study, budget: int, arm: _FinalArm, progress: bool, with_weights: bool = False
) -> dict[str, Any] | None:
    """If the study records another final training of `arm`'s genome and recipe (same seed, so the
    same model), record `arm` as that training, with `same_as` naming its attr, and return it.
    `with_weights`: only a training whose weights are on this machine (a winner to export)."""
    attrs = study.user_attrs
    twin = next(
        (
            attr
            for attr, r in attrs.items()
            if attr != arm.attr
            and (attr == "final" or attr.startswith("baseline:"))
            and r.get("test_acc") is not None
            and arm.is_training(r)
            and (_weights_here(r) or not with_weights)
        ),
        None,
    )
    if twin is None:
        return None
    copy = {**arm.extra, **{k: attrs[twin][k] for k in TRAINING_KEYS if k in attrs[twin]}, "same_as": twin}
    study.set_user_attr(arm.attr, copy)
    if progress:
        print(
            f"budget {budget:,}: the {arm.what} is {twin}'s genome and recipe: one training counts for both", flush=True
        )
    return copy


def _precision_change(record: dict[str, Any], recipe: Recipe, device) -> str:
    """A note when `record` was trained in another precision than this machine trains `recipe` in
    (bf16 autocast needs CUDA or a CPU with native bf16): the retrained model is then another
    model, and on a CPU without bf16 a slower training. Empty when they agree, or the record is
    older than the precision field."""
    then, now = record.get("precision"), training_precision(device, recipe.bf16)
    if then is None or then == now:
        return ""
    return f"; it trained in {then}, this machine trains in {now}: another model, with its own test accuracy"


def _weights_here(record: dict[str, Any]) -> bool:
    """Whether a final training's weights are on this machine (its run folder holds model.pt)."""
    return bool(record.get("run_dir")) and (Path(record["run_dir"]) / "model.pt").is_file()


def _train_or_await(
    study: optuna.Study,
    budget: int,
    arm: _FinalArm,
    cifar: CifarSource,
    device,
    progress: bool,
    runs_dir: Path,
    with_weights: bool = False,
) -> dict[str, Any]:
    """`arm`'s training: waited for where another live process is training the same model (its
    record is then this arm's too), else trained here under this process's claim. A claim whose
    process died goes silent and is ignored after twice the heartbeat."""
    waited = False
    while (other := next((c for c in live_claims(study) if arm.is_training(c)), None)) is not None:
        if progress and not waited:
            print(f"budget {budget:,}: {other['by']} is training the {arm.what}; waiting for its record", flush=True)
        waited = True
        time.sleep(min(5.0, heartbeat_seconds() / 2))
    if waited:
        record = arm.recorded_in(study)
        if record is not None and with_weights and not _weights_here(record):
            record = None  # the record --retrain-missing is here to bring the weights back for (a dead claim's)
        record = record or _same_training(study, budget, arm, progress, with_weights=with_weights)
        if record is not None:
            return record
    with claimed(study, arm.attr, {"genome": arm.genome.to_json(), "recipe": arm.recipe.to_dict()}):
        return _train_arm(study, budget, arm, cifar, device, progress, runs_dir)


def _train_arm(
    study: optuna.Study, budget: int, arm: _FinalArm, cifar: CifarSource, device, progress: bool, runs_dir: Path
) -> dict[str, Any]:
    """Train one arm on all training images and record it. A baseline that fails even with its
    own recipe is a result too: its record says why (the winner's failure is raised)."""
    data = cifar.split(val_size=0)  # all 50,000 training images
    epochs = arm.recipe.epochs
    if progress:
        print(
            f"budget {budget:,}: final training of the {arm.what} {arm.genome} for {plural(epochs, 'epoch')} on "
            f"{len(data.train_y):,} images",
            flush=True,
        )
    try:
        record = final_train(
            study,
            arm.genome,
            arm.recipe,
            attr=arm.attr,
            data=data,
            device=device,
            progress=progress,
            runs_dir=runs_dir,
            extra=arm.extra,
        )
        if progress:
            print(
                f"budget {budget:,}: the {arm.what} tests {record['test_acc']:.2%} after "
                f"{plural(epochs, 'epoch')} ({duration(record['wall_time_s'])})",
                flush=True,
            )
        return record
    except NasError as e:
        if arm.attr == "final":
            raise
        record = {
            **arm.extra,
            "genome": arm.genome.to_json(),
            "genome_str": str(arm.genome),
            "test_acc": None,
            "failure": str(e),
            "recipe": arm.recipe.to_dict(),
            "epochs": epochs,
        }
        study.set_user_attr(arm.attr, record)
        if progress:
            print(f"budget {budget:,}: the {arm.what} failed: {e}", flush=True)
        return record
