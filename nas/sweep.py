"""`nas sweep`: one search per budget, then a longer final training of each budget's winner.

Every budget is its own study in one storage, so a rerun resumes each search where it stopped
(`nas.searchers.search` counts the trials already there) and skips final trainings already
recorded for the same winner and recipe. The final result lives in the study's user attr
`final`, which the report reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from nas.budget import check_budget
from nas.errors import NasError
from nas.searchers import SearchResult, search
from nas.spaces import Space, load_space
from nas.study import open_storage, resolve_storage, trial_genome
from nas.training import Recipe, train_genome_command

DEFAULT_BUDGETS = (1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
DEFAULT_FINAL_EPOCHS = 60


def parse_budgets(text: str) -> list[int]:
    """'1000,5k,1M' -> [1000, 5000, 1000000], in the order given, without repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1].lower(), 1)
        number = part[:-1] if scale > 1 else part
        try:
            value = float(number) * scale
        except ValueError:
            raise NasError(f"budgets: {part!r} is not a number (use e.g. 1000,5k,1M)") from None
        budget = check_budget(value)
        if budget not in out:
            out.append(budget)
    if not out:
        raise NasError("budgets: give at least one budget, e.g. --budgets 10000,50000")
    return out


@dataclass
class BudgetOutcome:
    budget: int
    search: SearchResult
    final: dict[str, Any] | None  # the study's `final` attr, None when no trial completed
    final_reused: bool            # True when an earlier run had already trained this winner
    onnx: Path | None = None      # the winner's ONNX export, when exported


def export_final(study: optuna.Study, final: dict[str, Any], *, data_dir: str | Path | None,
                 progress: bool) -> Path | None:
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
        export_run(run, path, data_dir=data_dir, source={"study": study.study_name, "trial": final.get("trial")})
        if progress:
            print(f"exported: {path}", flush=True)
    if final.get("onnx") != str(path):
        final["onnx"] = str(path)
        study.set_user_attr("final", final)
    return path


def final_train(study: optuna.Study, trial: optuna.trial.FrozenTrial, recipe: Recipe, *,
                data_dir: str | Path | None, val_size: int, device: str | None, progress: bool,
                runs_dir: Path) -> dict[str, Any]:
    """Retrain the winner `trial` with `recipe` on the full training split, record val and test
    accuracy as the study's `final` attr, and keep the weights under `runs_dir/<study>/`."""
    genome = trial_genome(trial)
    if genome is None:
        raise NasError(f"trial {trial.number} of study '{study.study_name}' has no genome")
    overrides = {k: v for k, v in recipe.to_dict().items() if k != "epochs"}
    summary = train_genome_command(genome, recipe.epochs, data_dir, runs_dir / study.study_name, device=device,
                                   val_size=val_size, progress=progress, **overrides)
    final = {
        "trial": trial.number, "genome": genome.to_json(), "genome_str": str(genome),
        "params": trial.user_attrs.get("params", summary["params"]), "flops": trial.user_attrs.get("flops"),
        "search_val_acc": trial.value, "val_acc": summary["val_acc"], "test_acc": summary["test_acc"],
        "epochs": summary["epochs"], "recipe": recipe.to_dict(), "wall_time_s": summary["wall_time_s"],
        "device": summary["device"], "curve": summary["curve"], "run_dir": summary["run_dir"],
    }
    study.set_user_attr("final", final)
    return final


def sweep(space: str | Space, budgets: list[int], *, final_epochs: int = DEFAULT_FINAL_EPOCHS,
          storage: str | None = None, data_dir: str | Path | None = None, recipe: Recipe | None = None,
          val_size: int = 5000, device: str | None = None, progress: bool = True,
          runs_dir: str | Path = "runs/final", export: bool = True, **search_options: Any) -> list[BudgetOutcome]:
    """Search every budget (in the order given), then final-train each winner for `final_epochs`
    and (with `export`) export it to ONNX in its run folder, before the next budget, so an
    interrupted sweep leaves every finished winner exported.

    `search_options` go to `nas.searchers.search` (searcher, trials, jobs, score, pruner, seed, tol,
    subset, objective, ...). A budget whose study already holds a final result for its current
    winner and final recipe is not trained again (only exported, if it is not yet)."""
    sp = load_space(space) if isinstance(space, (str, Path)) else space
    recipe = recipe or Recipe()
    final_recipe = replace(recipe, epochs=final_epochs)
    url = resolve_storage(storage)
    outcomes = []
    for i, budget in enumerate(budgets, 1):
        if progress:
            print(f"== budget {budget:,} ({i} of {len(budgets)}) ==", flush=True)
        result = search(sp, budget, storage=url, data_dir=data_dir, recipe=recipe, val_size=val_size,
                        device=device, progress=progress, **search_options)
        study = optuna.load_study(study_name=result.study_name, storage=open_storage(url))
        best = result.best
        if best is None:
            if progress:
                print(f"budget {budget:,}: no completed trial, nothing to train", flush=True)
            outcomes.append(BudgetOutcome(budget, result, None, False))
            continue
        old = study.user_attrs.get("final")
        reused = bool(old and old.get("genome") == best.user_attrs.get("genome")
                      and old.get("recipe") == final_recipe.to_dict())
        if reused:
            final = old
        else:
            if progress:
                print(f"budget {budget:,}: final training of {best.user_attrs.get('genome_str')} "
                      f"for {final_epochs} epochs", flush=True)
            final = final_train(study, best, final_recipe, data_dir=data_dir, val_size=val_size, device=device,
                                progress=progress, runs_dir=Path(runs_dir))
        onnx = export_final(study, final, data_dir=data_dir, progress=progress) if export else None
        outcomes.append(BudgetOutcome(budget, result, final, reused, onnx))
    return outcomes
