"""`nas sweep`: one search per budget, then a longer final training of each budget's winner.

Every budget is its own study in one storage, so a rerun resumes each search where it stopped
(`nas.search.search` counts the trials already there) and skips final trainings already
recorded for the same winner and recipe. The final result lives in the study's user attr
`final`, which the report reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from nas.budget import check_budget, parse_budgets, project
from nas.data import CifarSource, check_subset
from nas.errors import NasError
from nas.plan import SWEEP_SEARCH_SHARE
from nas.runs import train_genome_command
from nas.search import (
    TRAIN_IMAGES,
    SearchConfig,
    SearchResult,
    default_start,
    search,
)
from nas.spaces import Genome, Space, load_space
from nas.study import Objective, open_storage, search_seconds, storage_url, study_name, trial_genome
from nas.text import plural
from nas.training import Recipe, default_device, space_recipe

if TYPE_CHECKING:
    from nas.data import CifarData

DEFAULT_BUDGETS = (1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
DEFAULT_FINAL_EPOCHS = 60


@dataclass
class BudgetOutcome:
    budget: int
    search: SearchResult
    final: dict[str, Any] | None  # the study's `final` attr, None when no trial completed
    final_reused: bool  # True when an earlier run had already trained this winner
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # "hand", "seed" -> final record
    onnx: Path | None = None  # the winner's ONNX export, when exported


def export_final(study: optuna.Study, final: dict[str, Any], *, data: CifarSource, progress: bool) -> Path | None:
    """Export the final-trained winner into its run folder (model.onnx + model.card.json, checked
    against PyTorch) unless that is done already, and record the path as `final["onnx"]`. None
    when the run folder is not on this machine (a sweep resumed elsewhere)."""
    from nas.export import export_run

    run = Path(final["run_dir"])
    path = run / "model.onnx"
    if not (run / "model.pt").is_file():
        if progress:
            print(f"not exported: the final training's weights are not in {run}", flush=True)
        return None
    if not (path.is_file() and path.stat().st_mtime >= (run / "model.pt").stat().st_mtime):
        export_run(run, path, data=data, source={"study": study.study_name, "trial": final.get("trial")})
        if progress:
            print(f"exported: {path}", flush=True)
    if final.get("onnx") != str(path):
        final["onnx"] = str(path)
        study.set_user_attr("final", final)
    return path


# The reference study's models 4-8 (mbconv presets) stand for the budgets they were built near.
SEED_SPACE = "mbconv"
SEED_MATCH = 1.15  # a seed model stands for budget B when its count is within B / 1.15 .. B * 1.15
MAX_FINAL_EPOCHS = 200


def seed_model(budget: int) -> tuple[str, Genome] | None:
    """The reference study's model built for about `budget` parameters, if there is one."""
    from nas.counting import count_params

    presets = load_space(SEED_SPACE).presets
    near = [
        (abs(math.log(count_params(g) / budget)), name, g)
        for name, g in presets.items()
        if name.startswith("seed-") and abs(math.log(count_params(g) / budget)) <= math.log(SEED_MATCH)
    ]
    return min(near, key=lambda x: x[0])[1:] if near else None


def split_time(total_s: float, budgets: int) -> tuple[float, float]:
    """(search seconds, final-training seconds) per budget: SWEEP_SEARCH_SHARE of the total goes to the
    searches and the rest to the final trainings (winner and baselines), equally per budget."""
    return SWEEP_SEARCH_SHARE * total_s / budgets, (1 - SWEEP_SEARCH_SHARE) * total_s / budgets


def final_epochs_for(genomes: list[Genome], recipe: Recipe, seconds: float, device: str | None) -> int:
    """The most epochs over all 50,000 training images that `genomes` can each be trained for in
    `seconds` together (calibrated on this machine, see nas.plan), between 1 and MAX_FINAL_EPOCHS."""
    from nas.plan import calibrate

    per_epoch = sum(TRAIN_IMAGES / calibrate(g, recipe, device).train_images_per_s for g in genomes)
    return max(1, min(MAX_FINAL_EPOCHS, int(seconds // per_epoch)))


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
    baselines: bool = True,
    export: bool = True,
) -> list[BudgetOutcome]:
    """Search every budget (in the order given), then final-train each winner on all training images.
    `budgets` is a list, or a string as `--budgets` takes it ('1000,5k,1M').

    Every budget's search runs as `config` says (`nas.search.search`), with its own time limit
    and transfer genomes: `time_limit` (seconds, the whole sweep's) is split by `split_time`: each
    budget's search gets its share (minus what its study has already used, so a rerun resumes),
    and its final trainings get theirs, as many epochs as fit (`final_epochs_for`) unless
    `final_epochs` is given. Winners of the budgets searched before are queued as trials of the
    next (budget transfer). With `baselines`, the space's hand design and the reference study's
    model for the budget are trained with the same final recipe and epochs. `recipe` (default: the
    space's) trains the searches' trials, its epochs included; the final trainings take it with
    their own epochs. `objective` replaces the searches' training (tests). CIFAR-100 is read from
    disk once, when first needed: the searches' split, all training images for the final trainings
    and the exports' test images come from it. Work already recorded in a study (a final training
    of the same genome and recipe) is not redone. With `export`, each winner is exported to ONNX
    in its run folder right after its final training, before the next budget, so an interrupted
    sweep leaves every finished winner exported."""
    budgets = parse_budgets(budgets) if isinstance(budgets, str) else [check_budget(b) for b in budgets]
    config = config or SearchConfig()
    check_subset(config.subset)  # before the storage is created
    sp = load_space(space) if isinstance(space, (str, Path)) else space
    for budget in budgets:  # a budget the space cannot meet fails now, not after the searches before it
        project(config.start or default_start(sp), sp, budget, config.tol)
    recipe = recipe or space_recipe(sp)
    if final_epochs is None and time_limit is None:
        final_epochs = DEFAULT_FINAL_EPOCHS
    search_s, final_s = split_time(time_limit, len(budgets)) if time_limit is not None else (None, None)
    tol, device = config.tol, config.device
    url = storage_url(storage)  # created by the first search, once its arguments are checked
    cifar = CifarSource(data_dir, device or str(default_device()))
    outcomes: list[BudgetOutcome] = []
    winners: dict[int, Genome] = {}
    for i, budget in enumerate(budgets, 1):
        if progress:
            print(f"== budget {budget:,} ({i} of {len(budgets)}) ==", flush=True)
        transfer = []
        for b, g in winners.items():
            try:
                transfer.append((f"transfer:{b}", project(g, sp, budget, tol)))
            except NasError:
                pass  # a shape that cannot be scaled into this budget
        limit = None
        if search_s is not None:
            name = study_name(sp.name, budget, recipe, config.score, config.subset, config.val_size)
            try:
                earlier = optuna.load_study(study_name=name, storage=open_storage(url))
                used = search_seconds(earlier.get_trials(deepcopy=False), earlier.user_attrs)
            except KeyError:
                used = 0.0
            limit = max(0.0, search_s - used)
        result = search(
            sp,
            budget,
            replace(config, time_limit=limit, transfer=transfer),
            storage=url,
            data=cifar,
            recipe=recipe,
            objective=objective,
            progress=progress,
        )
        study = optuna.load_study(study_name=result.study_name, storage=open_storage(url))
        best = result.best
        if best is None:
            if progress:
                print(f"budget {budget:,}: no completed trial, nothing to train", flush=True)
            outcomes.append(BudgetOutcome(budget, result, None, False))
            continue
        winner = trial_genome(best)
        winners[budget] = winner
        arms: dict[str, tuple[str, Genome, dict[str, Any]]] = {
            "final": ("winner", winner, {"trial": best.number, "search_val_acc": best.value})
        }
        if baselines:
            hand = project(default_start(sp), sp, budget, tol)
            arms["baseline:hand"] = ("hand design", hand, {})
            seed = seed_model(budget)
            if seed is not None:
                arms["baseline:seed"] = (f"reference {seed[0]}", seed[1], {"preset": seed[0]})
        epochs = (
            final_epochs
            or earlier_final_epochs(study, winner, recipe)
            or final_epochs_for([g for _, g, _ in arms.values()], recipe, final_s, device)
        )
        final_recipe = replace(recipe, epochs=epochs)
        records: dict[str, dict[str, Any]] = {}
        reused = True
        for attr, (what, genome, extra) in arms.items():
            old = study.user_attrs.get(attr)
            if old and old.get("genome") == genome.to_json() and old.get("recipe") == final_recipe.to_dict():
                records[attr] = old
                continue
            reused = False
            data = cifar.split(val_size=0)  # all 50,000 training images
            if progress:
                print(
                    f"budget {budget:,}: final training of the {what} {genome} for {plural(epochs, 'epoch')} on "
                    f"{len(data.train_y):,} images",
                    flush=True,
                )
            try:
                records[attr] = final_train(
                    study,
                    genome,
                    final_recipe,
                    attr=attr,
                    data=data,
                    device=device,
                    progress=progress,
                    runs_dir=Path(runs_dir),
                    extra=extra,
                )
            except NasError as e:
                if attr == "final":
                    raise
                # A baseline that fails under the winner's recipe (e.g. diverges) is a result too.
                records[attr] = {
                    **extra,
                    "genome": genome.to_json(),
                    "genome_str": str(genome),
                    "test_acc": None,
                    "failure": str(e),
                    "recipe": final_recipe.to_dict(),
                    "epochs": epochs,
                }
                study.set_user_attr(attr, records[attr])
                if progress:
                    print(f"budget {budget:,}: the {what} failed: {e}", flush=True)
        onnx = export_final(study, records["final"], data=cifar, progress=progress) if export else None
        outcomes.append(
            BudgetOutcome(
                budget,
                result,
                records["final"],
                reused,
                {k.split(":", 1)[1]: v for k, v in records.items() if k != "final"},
                onnx,
            )
        )
    return outcomes
