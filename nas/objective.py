"""The search objective: a genome's score, from training it with `nas.training.train` on the
search's split of CIFAR-100, reported to its Optuna trial epoch by epoch.

It sits between the training loop (which knows nothing of Optuna) and the study records
(`nas.evaluator.Evaluator`, which calls any `Objective` and knows nothing of training).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from nas.curves import fit_asymptote
from nas.data import CifarData, CifarSource
from nas.evaluator import DeadlineReached, EvaluationFailed
from nas.spaces import Genome
from nas.study import DEFAULT_VAL_SIZE
from nas.training import Recipe, default_device, recipe_for, train


@dataclass
class TrainingObjective:
    """Trains a genome with `recipe` on `data`; scores it by the last-epoch validation accuracy
    (`score="val"`) or the fitted learning-curve asymptote (`score="asymptote"`). Reports every
    epoch to the trial, stops early when the trial's pruner says so, and records the curve."""

    data: CifarData
    recipe: Recipe
    score: str = "val"
    device: str | None = None
    progress: bool = False
    deadline: float | None = None  # time.time() at which a running trial stops after its epoch

    def __call__(self, genome: Genome, trial: optuna.Trial | None = None) -> float:
        pruned = late = False

        def on_epoch(epoch: int, val_acc: float) -> bool | None:
            nonlocal pruned, late
            if trial is not None:
                trial.report(val_acc, epoch)
                if trial.should_prune():
                    pruned = True
                    return False
            if self.deadline is not None and epoch < self.recipe.epochs and time.time() >= self.deadline:
                late = True
                return False
            return None

        label = f"#{trial.number} " if trial is not None else ""
        result = train(
            genome,
            self.data,
            recipe_for(genome, self.recipe),
            self.device,
            callback=on_epoch,
            progress=self.progress,
            desc=f"{label}{genome}",
        )
        epochs = [c["epoch"] for c in result.curve]
        accs = [c["val_acc"] for c in result.curve]
        asym = fit_asymptote(epochs, accs) if result.curve else None
        attrs = {
            "curve": result.curve,
            "val_acc": result.val_acc,
            "asymptote": asym.alpha if asym else None,
            "asymptote_std": asym.alpha_std if asym else None,
            "wall_time_s": result.wall_time_s,
            "device": result.device,
        }
        if trial is not None:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
        if not result.ok:
            raise EvaluationFailed(result.failure or "training failed")
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs}")
        if late:
            raise DeadlineReached(f"stopped at the time limit after epoch {result.epochs} of {self.recipe.epochs}")
        return asym.alpha if self.score == "asymptote" and asym is not None else result.val_acc


def training_objective(
    recipe: Recipe,
    *,
    data: CifarSource | None = None,
    data_dir: str | Path | None = None,
    score: str = "val",
    subset: int | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
    device: str | None = None,
    progress: bool = False,
    deadline: float | None = None,
) -> TrainingObjective:
    """The objective that trains on the search's split (`val_size` held out, `subset` training
    images) of `data`, CIFAR-100 as the command read it once; without `data`, read from
    `data_dir` onto the training device."""
    dev = str(device or default_device())
    source = data if data is not None else CifarSource(data_dir, dev)
    return TrainingObjective(
        source.split(val_size=val_size, subset=subset),
        recipe,
        score=score,
        device=dev,
        progress=progress,
        deadline=deadline,
    )
