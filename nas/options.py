"""The command line's options and what they become: argument types (one line on a bad value),
the help texts shared by several commands, the recipe options generated from Recipe's fields, and
the options `nas search` and `nas sweep` share, turned into a `SearchConfig`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from nas.errors import NasError
from nas.finalists import FINALIST_PICKS
from nas.plan import CPU_DEFAULTS, CUDA_DEFAULTS

if TYPE_CHECKING:
    from nas.search import SearchConfig
    from nas.spaces import Genome

GENOME_HELP = (
    "a preset (seed-m4, mbconv:seed-m4), a short form as nas prints it (conv:16x1|32x2|64x1|128x1), "
    "STUDY#N (trial N of a study in --storage), a .json file, or inline JSON"
)
STORAGE_HELP = "Optuna storage URL or journal file (default sqlite:///studies/nas.db)"
BUDGET_HELP = "parameter budget: 50000, 50_000, 50k, 1.5k, 1e5, 1M"
DATA_DIR_HELP = "folder holding cifar-100-python/ (default: $NAS_DATA_DIR, else a per-user cache)"
DEVICE_HELP = "cuda, cpu, cuda:1 ... (default: cuda if available)"
VAL_SIZE_HELP = "validation images carved from the training set (default 5000)"
SUBSET_HELP = "train on only this many training images, at least 500 (5 per class): quick runs"


def add_genome_argument(p: argparse.ArgumentParser) -> None:
    """GENOME, and the --storage its STUDY#N form reads trials from."""
    p.add_argument("genome", metavar="GENOME", help=GENOME_HELP)
    p.add_argument("--storage", help=f"where a STUDY#N genome is looked up: {STORAGE_HELP}")


def budget_arg(text: str) -> int:
    from nas.budget import check_budget

    try:
        return check_budget(text)
    except NasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def baselines_arg(text: str) -> tuple[str, ...]:
    from nas.sweep_plan import check_baselines

    try:
        return check_baselines(text)
    except NasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def tol_arg(text: str) -> float:
    try:
        tol = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tolerance must be a number in [0, 1), got {text!r}") from None
    if not 0 <= tol < 1:
        raise argparse.ArgumentTypeError(f"tolerance must be in [0, 1), got {text!r}")
    return tol


def whole_arg(text: str, minimum: int, what: str) -> int:
    """`text` as a whole number of at least `minimum`, else argparse's one-line error."""
    try:
        n = int(text)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return n


def positive_arg(text: str) -> int:
    return whole_arg(text, 1, "a positive whole number")


def count_arg(text: str) -> int:
    """A whole number, 0 included (0: none)."""
    return whole_arg(text, 0, "a whole number, 0 or more")


def duration_arg(text: str) -> float:
    from nas.plan import parse_duration

    try:
        return parse_duration(text)
    except NasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def subset_arg(text: str) -> int:
    """--subset N or 'all' (0 stands for all)."""
    return 0 if text.strip().lower() == "all" else positive_arg(text)


def add_recipe_options(p: argparse.ArgumentParser, epochs_default: int | None) -> None:
    """One option per Recipe field, as its metadata describes it (nas.training `_field`), so a
    new field is an option of train, search and sweep without an edit here. Defaults, but
    --epochs', are None: what the user did not set comes from the space file's [recipe] table
    (values measured for that family, e.g. conv-shape's lr), else from Recipe's defaults."""
    from nas.training import recipe_options

    g = p.add_argument_group("training recipe")
    # First, and by hand: the one option whose default depends on the command.
    g.add_argument(
        "--epochs",
        "-e",
        type=positive_arg,
        default=epochs_default,
        help=f"epochs per training (default {epochs_default})"
        if epochs_default
        else f"epochs per trial (default: {CPU_DEFAULTS.epochs} on a CPU, {CUDA_DEFAULTS.epochs} on CUDA)",
    )
    for f, flag in recipe_options():
        if f.name == "epochs":
            continue
        text = (f.metadata.get("help") or "default {default}").format(default=f.default).replace("%", "%%")
        if isinstance(f.default, bool) and f.metadata.get("flag"):  # a flag that sets the other value
            g.add_argument(flag, dest=f.name, action="store_const", const=not f.default, help=text)
        elif isinstance(f.default, bool):  # --x / --no-x: a space's [recipe] may have turned it on
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(flag, dest=f.name, type=type(f.default), choices=f.metadata.get("choices"), help=text)


def space_of(genome):
    """The space a genome names, or None when that file is not found (a genome from elsewhere)."""
    from nas.spaces import load_space

    try:
        return load_space(genome.space)
    except NasError:
        return None


def recipe_from_args(args, epochs: int | None = None, space=None):
    """The recipe: the options given (`epochs` over --epochs), over the space's [recipe] table,
    over Recipe's defaults."""
    from nas.training import recipe_options, space_recipe

    given = {f.name: getattr(args, f.name) for f, _ in recipe_options() if getattr(args, f.name) is not None}
    if epochs:
        given["epochs"] = epochs
    return space_recipe(space, **given)


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Options of `nas search` that `nas sweep` passes on to every budget's search."""
    from nas.samplers import PRUNERS, SEARCHERS

    p.add_argument(
        "--space",
        help=f"search space name or .toml file (default: {CPU_DEFAULTS.space} on a CPU, {CUDA_DEFAULTS.space} on CUDA)",
    )
    p.add_argument("--searcher", choices=SEARCHERS, default="tpe", help="default tpe")
    p.add_argument(
        "--trials",
        type=positive_arg,
        help="evaluations of this searcher in the study, including earlier runs' (default: as many as "
        f"--time allows on a CPU, {CUDA_DEFAULTS.trials} on CUDA)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print what the run would do (device, space, fidelity, trials, seconds per trial from a "
        "short calibration on this machine, ETA) and exit without training or creating trials",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=positive_arg,
        help=f"trials trained at once, the CPU threads split between them (fdpg: a step's probes) "
        f"(default: {CPU_DEFAULTS.jobs} on a CPU with at least {CPU_DEFAULTS.jobs} threads, measured "
        f"faster than one trial on all threads; 1 on CUDA)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage URL (sqlite:///..., postgresql://...) or a journal file "
        "path ending in .log (default sqlite:///studies/nas.db)",
    )
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--score",
        choices=["val", "asymptote"],
        default="val",
        help="trial value: last-epoch val accuracy, or the fitted learning-curve asymptote",
    )
    p.add_argument(
        "--pruner",
        choices=PRUNERS,
        help=f"stop trials that are behind after some epochs (samplers only; default: "
        f"{CPU_DEFAULTS.pruner} on a CPU, where pruning 4-epoch trials steers the search away "
        f"from deeper genomes, {CUDA_DEFAULTS.pruner} on CUDA)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument(
        "--finalists",
        type=count_arg,
        metavar="K",
        help=f"at the end, retrain the K best genomes on every training image of the split (the "
        f"validation images held out as before) with a seed no trial used, and make the best of "
        f"them the winner: a short trial's score ranks genomes only roughly, and the best of many "
        f"noisy scores is lucky. Their time comes out of --time. 0: the best trial wins "
        f"(default {CPU_DEFAULTS.finalists})",
    )
    p.add_argument(
        "--finalist-epochs",
        type=positive_arg,
        metavar="E",
        help="epochs of the finalists' training (default: the trials' --epochs)",
    )
    p.add_argument(
        "--finalist-pick",
        choices=FINALIST_PICKS,
        default=FINALIST_PICKS[0],
        help="which genomes are the finalists: 'diverse', the best trial of each topology (the genome "
        "without its widths) in turn, then the next best; 'best', the K best trials "
        f"(default {FINALIST_PICKS[0]})",
    )
    p.add_argument("--tol", type=tol_arg, default=0.1, help="budget band [(1 - tol) * B, B] (default 0.1)")
    p.add_argument(
        "--subset",
        type=subset_arg,
        metavar="N|all",
        help=f"train each trial on N of the training images (at least 5 per class), or 'all' "
        f"(default: {CPU_DEFAULTS.subset:,} on a CPU, all on CUDA)",
    )
    p.add_argument("--val-size", type=positive_arg, default=5000, help=VAL_SIZE_HELP)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output, only the final table")
    add_recipe_options(p, epochs_default=None)


def search_settings(args) -> dict[str, Any]:
    """The search's space, fidelity, trials and time limit: what the user gave, the device's
    defaults (nas.plan.device_defaults) for the rest."""
    from nas.plan import device_defaults

    d = device_defaults(args.device)
    limit = getattr(args, "time", None)
    trials = args.trials
    if trials is None and limit is None:
        trials, limit = (None, d.time_limit_s) if d.time_limit_s is not None else (d.trials, None)
    subset = d.subset if args.subset is None else (args.subset or None)
    return {
        "space": args.space or d.space,
        "trials": trials,
        "time_limit": limit,
        "subset": subset,
        "epochs": args.epochs or d.epochs,
        "jobs": args.jobs or d.jobs,
        "finalists": d.finalists if args.finalists is None else args.finalists,
        "pruner": args.pruner or d.pruner,
    }


def search_config(args, settings: dict[str, Any], start: Genome | None = None) -> SearchConfig:
    """The SearchConfig of `nas search` and `nas sweep` options (`settings`: see search_settings)."""
    from nas.search import SearchConfig

    return SearchConfig(
        searcher=args.searcher,
        trials=settings["trials"],
        jobs=settings["jobs"],
        score=args.score,
        pruner=settings["pruner"],
        seed=args.seed,
        tol=args.tol,
        subset=settings["subset"],
        val_size=args.val_size,
        start=start,
        device=args.device,
        time_limit=settings["time_limit"],
        finalists=settings["finalists"],
        finalist_epochs=args.finalist_epochs,
        finalist_pick=args.finalist_pick,
    )


def sweep_settings(args, budgets: int) -> dict[str, Any]:
    """`search_settings` for `nas sweep` over `budgets` budgets: with --time the sweep spends it
    budget by budget (no trial count); with neither --time nor --trials, the device's search time
    for every budget and as much again for the final trainings."""
    from nas.plan import SWEEP_SEARCH_SHARE

    settings = search_settings(args)
    if args.time is not None and args.trials is None:
        settings["trials"] = None
    if args.time is None and args.trials is None and settings["time_limit"] is not None:
        settings["time_limit"] = settings["time_limit"] * budgets / SWEEP_SEARCH_SHARE
    return settings
