"""How `nas sweep --time T` spends its time: by cost, so that the curve is set by the architectures
and not by the split.

Half of T (SWEEP_SEARCH_SHARE) goes to the searches, split across budgets in proportion to the
cost of one search trial at each budget, so every budget's search gets about the same number of
trials; the rest goes to the winners' final trainings, split in proportion to the cost of one
epoch at each budget, so every winner trains the same number of epochs. Where half of T would
train the winners fewer than MIN_FINAL_EPOCHS epochs, the winners take more of it (the searches
keep at least MIN_SEARCH_SHARE). Costs are calibrated on this machine on each budget's hand
design (`nas.plan.calibrate`, cached) and scaled by how much more a searched genome computes:
a typical one for the trials (`Plan.cost_factor`), one of the costlier ones for the winners
(`Plan.winner_cost_factor`), since the genomes that test best compute more: costed at the
typical genome, the 2026-12-06 curve's 50k and 100k winners took 2.2 and 2.1x their planned
minutes, and 500k's (4.5x the hand design's FLOPs) about 3x. The baselines train for the
winners' epochs, each with its own family's recipe; their time comes on top and is planned and
reported separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nas.budget import project
from nas.errors import NasError
from nas.plan import CALIBRATION_IMAGES, SWEEP_SEARCH_SHARE, Plan, calibrate, calibrate_all
from nas.search import TRAIN_IMAGES, SearchConfig, default_start, make_plan
from nas.spaces import Genome, Space, load_space
from nas.text import duration, plural
from nas.training import Recipe, space_recipe, threads_per_job

if TYPE_CHECKING:
    import torch

BASELINES = ("hand", "resnet", "reference")
FIT = ("fit",)  # --baselines fit: the kinds, in this order, that fit FIT_FACTOR x the winner's training time
FIT_FACTOR = 2.0
DEFAULT_FINAL_EPOCHS = 60
MAX_FINAL_EPOCHS = 200
# A winner trained for fewer epochs than this is ranked by its training time more than by its
# architecture (the first curve's 4-epoch 1M winner tested below its 9-epoch 500k one), so the
# winners take more than half of --time where half would not pay for this many; the searches keep
# at least MIN_SEARCH_SHARE of it.
MIN_FINAL_EPOCHS = 30
MIN_SEARCH_SHARE = 0.2
# The reference study's models 4-8 (mbconv presets) stand for the budgets they were built near.
REFERENCE_SPACE = "mbconv"
REFERENCE_MATCH = 1.15  # a reference model stands for budget B when its count is within B / 1.15 .. B * 1.15
# CIFAR ResNet-(6n+2) at widths 16-32-64 (He et al. 2016): blocks per stage n, deepest first.
RESNET_BLOCKS = (9, 5, 3, 2, 1)


@dataclass(frozen=True)
class Baseline:
    """A design trained beside the winner, with its own family's recipe."""

    kind: str  # "hand", "resnet" or "reference"
    label: str  # what the sweep prints, e.g. "reference seed-m5"
    genome: Genome
    recipe: Recipe
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with it (the reference's preset)

    @property
    def attr(self) -> str:
        """The study's user attr its record goes to ("seed" for the reference: the name records carry)."""
        return "baseline:" + ("seed" if self.kind == "reference" else self.kind)


@dataclass
class BudgetPlan:
    """One budget of a sweep: its search's time and the final trainings' epochs."""

    budget: int
    hand: Genome
    search: Plan  # the budget's search, as `nas search` plans it (its time limit unset)
    epoch_s: float  # one final epoch of a typical winner over all training images (see the module docstring)
    search_s: float | None  # None: the search runs by its trial count
    final_epochs: int
    baselines: list[Baseline]
    baseline_epoch_s: float  # one epoch of all the baselines together

    @property
    def trial_s(self) -> float:
        """One typical search trial at the search fidelity, `jobs` at a time."""
        return self.search.seconds_per_trial

    @property
    def expected_trials(self) -> int | None:
        """What the search's own plan expects in `search_s`: its noise measurement and finalists first."""
        return None if self.search_s is None else replace(self.search, time_limit_s=self.search_s).expected_trials

    @property
    def final_s(self) -> float:
        return self.final_epochs * self.epoch_s

    @property
    def baseline_s(self) -> float:
        return self.final_epochs * self.baseline_epoch_s


@dataclass
class SweepPlan:
    budgets: list[BudgetPlan]
    time_limit_s: float | None

    def lines(self) -> list[str]:
        """The plan as `nas sweep --plan` prints it: per budget the search minutes, expected trials,
        final epochs, and the ETA of the curve and of the baselines."""
        rows = [("budget", "search", "trials", "final epochs", "final", "baselines", "baseline time")]
        for b in self.budgets:
            trials = "-" if b.expected_trials is None else f"~{b.expected_trials}"
            search = "by count" if b.search_s is None else duration(b.search_s)
            kinds = ",".join(x.kind for x in b.baselines) or "none"
            rows.append(
                (
                    f"{b.budget:,}",
                    search,
                    trials,
                    str(b.final_epochs),
                    duration(b.final_s),
                    kinds,
                    duration(b.baseline_s),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = ["  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        curve = sum((b.search_s or 0) + b.final_s for b in self.budgets)
        extra = sum(b.baseline_s for b in self.budgets)
        head = f"sweep plan: {plural(len(self.budgets), 'budget')}"
        if self.time_limit_s is not None:
            head += f", {duration(self.time_limit_s)} for searches and winners (split by cost per trial and per epoch)"
        lines = [head, *table, f"  ETA: {duration(curve)} for the curve, then {duration(extra)} for the baselines"]
        if self.time_limit_s is not None and curve > 1.05 * self.time_limit_s:
            # only a resumed sweep's: a fresh split fits the time by construction
            lines.append("  (the plan kept from the studies' first run: at today's costs it takes longer)")
        elif self.time_limit_s is not None and min(b.final_epochs for b in self.budgets) < MIN_FINAL_EPOCHS:
            needed = time_for_final_epochs(MIN_FINAL_EPOCHS, {b.budget: b.epoch_s for b in self.budgets})
            lines.append(
                f"  (winners trained under {MIN_FINAL_EPOCHS} epochs are ranked by their training more than by "
                f"their architecture: on this machine --time {time_arg(needed)} gives them {MIN_FINAL_EPOCHS})"
            )
        return lines


def split_by_cost(total_s: float, costs: dict[int, float]) -> dict[int, float]:
    """`total_s` split across budgets in proportion to each one's cost (of a trial, of an epoch),
    so that each gets the same number of them: a budget whose unit costs 6x gets 6x the time."""
    whole = sum(costs.values())
    return {b: total_s * c / whole for b, c in costs.items()}


def equal_epochs(total_s: float, epoch_s: dict[int, float]) -> int:
    """The epochs every budget's winner can train within `total_s` together, 1..MAX_FINAL_EPOCHS."""
    return max(1, min(MAX_FINAL_EPOCHS, int(total_s / sum(epoch_s.values()) + 1e-9)))


def time_for_final_epochs(epochs: int, epoch_s: dict[int, float]) -> float:
    """The shortest --time whose split trains every winner `epochs` epochs: the winners' share is
    at most 1 - MIN_SEARCH_SHARE of it."""
    return epochs * sum(epoch_s.values()) / (1 - MIN_SEARCH_SHARE)


def time_arg(seconds: float) -> str:
    """`seconds` rounded up to the half hour, as --time takes it: '9h30m', '5h'."""
    h, m = divmod(30 * math.ceil(seconds / 1800), 60)
    return f"{h}h{m:02d}m" if m else f"{h}h"


def final_share(time_limit: float, epoch_s: dict[int, float]) -> float:
    """The share of `time_limit` for the winners' final trainings: 1 - SWEEP_SEARCH_SHARE, or what
    MIN_FINAL_EPOCHS epochs of every winner take where that is more, up to 1 - MIN_SEARCH_SHARE."""
    needed = MIN_FINAL_EPOCHS * sum(epoch_s.values()) / time_limit
    return min(1 - MIN_SEARCH_SHARE, max(1 - SWEEP_SEARCH_SHARE, needed))


def resnet_baseline(budget: int, tol: float) -> Genome:
    """The CIFAR ResNet shape (three stages, equal blocks per stage, widths doubling from 16) with
    the most blocks whose 16-32-64 version fits the budget (ResNet-8 at least), projected to it."""
    from nas.counting import count_params

    space = load_space("resnet")
    shapes = [space.genome({"depth": [n] * 3, "width": [16, 32, 64]}) for n in RESNET_BLOCKS]
    fits = next((g for g in shapes if count_params(g) <= budget), shapes[-1])
    return project(fits, space, budget, tol)


def reference_model(budget: int) -> tuple[str, Genome] | None:
    """The reference study's model built for about `budget` parameters, if there is one."""
    from nas.counting import count_params

    presets = load_space(REFERENCE_SPACE).presets
    near = [
        (abs(math.log(count_params(g) / budget)), name, g)
        for name, g in presets.items()
        if name.startswith("seed-") and abs(math.log(count_params(g) / budget)) <= math.log(REFERENCE_MATCH)
    ]
    return min(near, key=lambda x: x[0])[1:] if near else None


def baselines_for(space: Space, budget: int, tol: float, kinds: Sequence[str], epochs: int) -> list[Baseline]:
    """The baselines of `kinds` at `budget`, each with its own space's recipe for `epochs`. A kind
    the budget has none of (no reference model near it, a ResNet that cannot be made this small)
    is left out."""
    found = []
    for kind in kinds:
        try:
            if kind == "hand":
                g = project(default_start(space), space, budget, tol)
                found.append(Baseline(kind, "hand design", g, space_recipe(space, epochs=epochs)))
            elif kind == "resnet":
                g = resnet_baseline(budget, tol)
                found.append(Baseline(kind, "ResNet", g, space_recipe(load_space("resnet"), epochs=epochs)))
            elif kind == "reference" and (ref := reference_model(budget)) is not None:
                recipe = space_recipe(load_space(REFERENCE_SPACE), epochs=epochs)
                found.append(Baseline(kind, f"reference {ref[0]}", ref[1], recipe, {"preset": ref[0]}))
        except NasError:
            continue  # e.g. no ResNet fits 1,000 parameters
    return found


def check_baselines(text: str) -> tuple[str, ...]:
    """`--baselines` as given: 'hand,resnet,reference' (any of them), 'fit' or 'none'."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if kinds == ("none",):
        return ()
    if kinds == FIT:
        return FIT
    unknown = [k for k in kinds if k not in BASELINES]
    if unknown or not kinds:
        raise NasError(
            f"unknown baseline '{unknown[0] if unknown else text}' (known: {', '.join(BASELINES)}, or fit, or none)"
        )
    return kinds


def plan_sweep(
    space: Space,
    budgets: Sequence[int],
    config: SearchConfig,
    recipe: Recipe,
    *,
    time_limit: float | None,
    final_epochs: int | None,
    baselines: Sequence[str],
    device: str | torch.device | None = None,
) -> SweepPlan:
    """The sweep's plan: search seconds and final epochs per budget (see the module docstring).
    Without `time_limit` the searches run by their trial count and the winners train
    `final_epochs` (default DEFAULT_FINAL_EPOCHS)."""
    hands = {b: project(config.start or default_start(space), space, b, config.tol) for b in budgets}
    # One calibration per model, on the threads a search trial gets; a final training, with all of
    # them, is at least as fast, so the plan errs on the long side. All of them first, `jobs` at a
    # time: the searches' plans and the baselines below then find them cached.
    models = [(hands[b], recipe, CALIBRATION_IMAGES) for b in budgets]
    for b in budgets:
        models += [(x.genome, x.recipe, x.recipe.batch_size) for x in _candidates(space, b, config, baselines)]
    calibrate_all(models, device or config.device, jobs=config.jobs)
    searches = {
        b: make_plan(space, b, replace(config, time_limit=None, device=device or config.device), recipe)
        for b in budgets
    }
    trial_s = {b: p.seconds_per_trial for b, p in searches.items()}
    epoch_s = {b: p.winner_cost_factor * TRAIN_IMAGES / p.calibration.train_images_per_s for b, p in searches.items()}
    search_s: dict[int, float | None] = dict.fromkeys(budgets)
    if time_limit is not None:
        share = final_share(time_limit, epoch_s)
        search_s = split_by_cost((1 - share) * time_limit, trial_s)
        final_epochs = final_epochs or equal_epochs(share * time_limit, epoch_s)
    epochs = final_epochs or DEFAULT_FINAL_EPOCHS
    plans = []
    for b in budgets:
        base, base_s = choose_baselines(space, b, config, baselines, epochs, epoch_s[b], device)
        plans.append(BudgetPlan(b, hands[b], searches[b], epoch_s[b], search_s[b], epochs, base, base_s))
    return SweepPlan(plans, time_limit)


def _candidates(
    space: Space, budget: int, config: SearchConfig, kinds: Sequence[str], epochs: int = 1
) -> list[Baseline]:
    """The baselines `choose_baselines` calibrates: those of `kinds`, or all of them for FIT."""
    return baselines_for(space, budget, config.tol, BASELINES if tuple(kinds) == FIT else kinds, epochs)


def choose_baselines(
    space: Space,
    budget: int,
    config: SearchConfig,
    kinds: Sequence[str],
    epochs: int,
    winner_epoch_s: float,
    device: str | torch.device | None = None,
) -> tuple[list[Baseline], float]:
    """The baselines of `kinds` at `budget` and the seconds of one epoch of them all. `kinds` FIT:
    those of BASELINES, in this order, whose training together takes at most FIT_FACTOR x the
    winner's (`winner_epoch_s` an epoch)."""
    fit = tuple(kinds) == FIT
    base, base_s = [], 0.0
    for x in _candidates(space, budget, config, kinds, epochs):
        # one batch: their time is only reported, and 'fit' compares it with a factor of 2
        with threads_per_job(config.jobs):
            rate = calibrate(x.genome, x.recipe, device, images=x.recipe.batch_size).train_images_per_s
        cost = TRAIN_IMAGES / rate
        if fit and (base_s + cost) > FIT_FACTOR * winner_epoch_s:
            continue
        base.append(x)
        base_s += cost
    return base, base_s
