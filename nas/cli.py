"""The `nas` command line: a thin layer over the Python API.

Each command is a pair `add_<name>(subparsers)` / `cmd_<name>(args) -> int`. User errors are
raised as NasError and printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import NasError
from nas.options import (
    BUDGET_HELP,
    DATA_DIR_HELP,
    DEVICE_HELP,
    STORAGE_HELP,
    SUBSET_HELP,
    VAL_SIZE_HELP,
    add_genome_argument,
    add_recipe_options,
    add_search_options,
    baselines_arg,
    budget_arg,
    duration_arg,
    positive_arg,
    recipe_from_args,
    search_config,
    search_settings,
    space_of,
    sweep_settings,
    tol_arg,
)
from nas.plan import CPU_DEFAULTS, CUDA_DEFAULTS, SWEEP_SEARCH_SHARE
from nas.text import plural

if TYPE_CHECKING:
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like NasError
        self.exit(2, f"nas: error: {message} (see '{self.prog} --help')\n")


# One line per command for `nas --help`, also where a command's parser is not built (see build_parser).
COMMAND_HELP = {
    "count": "exact parameters and FLOPs of a genome, with a per-layer table",
    "project": "move a genome into a parameter budget",
    "space": "list or show search spaces",
    "train": "train one genome and save it",
    "search": "search a space for the best genome under a parameter budget",
    "sweep": "search several budgets, then train each winner longer and test it",
    "report": "write the HTML report of every study in a storage",
    "export": "export a trained model to ONNX, checked against PyTorch, with a model card",
}


def _print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns right-aligned, except the genome column, left-aligned."""
    left = head.index("genome")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) if c == left else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip())


def _print_dashboard_and_report(storage: str, out: str | None = None) -> None:
    """The closing lines of search and sweep: how to browse the study, and the refreshed report."""
    from nas.report import default_report_path, write_report
    from nas.storage import dashboard_command

    print(f"dashboard: {dashboard_command(storage)}")
    print(f"report:    {write_report(storage, out or default_report_path(storage))}")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def genome_summary(genome) -> dict[str, Any]:
    """The JSON object `nas count --json` and `nas project --json` print."""
    from nas.counting import count_flops, count_params

    return {
        "params": count_params(genome),
        "flops": count_flops(genome),
        "genome": genome.to_dict(),
        "genome_str": str(genome),
    }


# ---------------------------------------------------------------- nas count


def add_count(sub) -> None:
    p = sub.add_parser(
        "count",
        help=COMMAND_HELP["count"],
        description="Print the exact parameter count (analytic, equal to the built model's), "
        "the FLOPs of one 32x32 image (fvcore; one multiply-add = one FLOP), and "
        "fvcore's per-layer table.",
    )
    add_genome_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (params, flops, genome)")


def cmd_count(args) -> int:
    from nas.genome_args import parse_genome

    genome = parse_genome(args.genome, storage=args.storage)
    from nas.counting import layer_table  # after the genome is read: a bad one fails without loading torch

    summary = genome_summary(genome)
    if args.json:
        _print_json(summary)
        return 0
    print(f"genome: {genome}")
    print(f"params: {summary['params']:,}")
    print(f"flops:  {summary['flops']:,}  (one 32x32 image, fvcore)")
    print()
    print(layer_table(genome))
    return 0


# ---------------------------------------------------------------- nas project


def add_project(sub) -> None:
    p = sub.add_parser(
        "project",
        help=COMMAND_HELP["project"],
        description="Rescale a genome's widths (then depth, then other genes, only if needed) "
        "so that its parameter count lands in [(1 - tol) * B, B]. Never exceeds B.",
    )
    add_genome_argument(p)
    p.add_argument("--budget", "-b", type=budget_arg, required=True, metavar="B", help=BUDGET_HELP)
    p.add_argument("--tol", type=tol_arg, default=0.1, help="relative band under the budget (default 0.1)")
    p.add_argument("--space", help="space whose ranges to use (default: the genome's own space)")
    p.add_argument("--json", action="store_true", help="print one JSON object (params, flops, genome)")


def cmd_project(args) -> int:
    from nas.budget import project
    from nas.genome_args import parse_genome
    from nas.spaces import load_space

    genome = parse_genome(args.genome, storage=args.storage)
    space = load_space(args.space or genome.space)
    projected = project(genome, space, args.budget, args.tol)
    summary = genome_summary(projected)
    if args.json:
        _print_json(summary)
        return 0
    before = genome_summary(genome)
    print(f"from:   {genome}  ({before['params']:,} params)")
    print(f"to:     {projected}  ({summary['params']:,} params, {summary['flops']:,} FLOPs)")
    print(f"budget: {args.budget:,} (band {summary['params'] / args.budget:.1%} of budget)")
    print(projected.to_json())
    return 0


# ---------------------------------------------------------------- nas space


def add_space(sub) -> None:
    p = sub.add_parser(
        "space",
        help=COMMAND_HELP["space"],
        description="Search spaces are TOML files in ./search_spaces, the folders on "
        "NAS_SPACES_PATH, or nas's own search_spaces/. Copy one to make a variant.",
    )
    ssub = p.add_subparsers(dest="space_cmd", required=True, metavar="{list,show}")
    ssub.add_parser("list", help="list the spaces found")
    show = ssub.add_parser("show", help="show a space's options, gene ranges and presets")
    show.add_argument("name", help="space name or path to a .toml file")


def cmd_space(args) -> int:
    from nas.budget import max_params, min_params
    from nas.spaces import list_spaces, load_space

    if args.space_cmd == "list":
        for name, path in list_spaces().items():
            sp = load_space(path)
            print(
                f"{name:<16} {sp.family.name:<7} {min_params(sp):>10,} .. {max_params(sp):>12,} params  "
                f"{sp.description}"
            )
        return 0
    sp = load_space(args.name)
    print(f"space:   {sp.name}  ({sp.path})")
    print(f"family:  {sp.family.name}")
    if sp.description:
        print(f"about:   {sp.description}")
    print(f"params:  {min_params(sp):,} .. {max_params(sp):,}")
    print("options:")
    for k, v in sp.options.items():
        print(f"  {k} = {json.dumps(v)}")
    print("genes:")
    for name, gene in sp.genes.items():
        per = f" x {sp.stages} stages" if name in sp.family.per_stage else ""
        rng = (
            f"choices {list(gene.choices)}"
            if gene.choices is not None
            else f"{gene.low}..{gene.high}"
            + (f" step {gene.step}" if gene.step > 1 else "")
            + (" (log)" if gene.log else "")
        )
        print(f"  {name:<12} {rng}{per}  [{gene.role}]")
    if sp.presets:
        from nas.counting import count_params

        print("presets:")
        for pname, g in sp.presets.items():
            print(f"  {pname:<12} {count_params(g):>10,} params  {g}")
    return 0


# ---------------------------------------------------------------- nas train


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help=COMMAND_HELP["train"],
        description="Train one genome on CIFAR-100 (validation split carved from the training "
        "set), print val and test accuracy, and save model.pt + genome.json + "
        "result.json so the model can be rebuilt (nas.training.load_trained). "
        "On a CPU a 50k-parameter model takes minutes per epoch; a GPU, seconds.",
    )
    add_genome_argument(p)
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--out",
        help="output folder (default runs/<genome>-<time>/); the training saves its state there after every "
        "epoch, so the same command again after an interruption goes on from the last finished epoch",
    )
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--val-size", type=positive_arg, default=5000, help=VAL_SIZE_HELP)
    p.add_argument("--subset", type=positive_arg, help=SUBSET_HELP)
    p.add_argument(
        "--teacher",
        metavar="RUN",
        help="distil from a trained model: a run folder (nas train, a sweep's final training) or "
        "STUDY#N with weights; its classes and inputs must match. The loss mixes cross-entropy "
        "with the teacher's softened outputs (--kd-alpha, default 0.5 with a teacher; "
        "--kd-temperature); the budget counts the student only",
    )
    add_recipe_options(p, epochs_default=15)


def cmd_train(args) -> int:
    from nas.genome_args import parse_genome
    from nas.runs import train_genome_command

    genome = parse_genome(args.genome, storage=args.storage)
    if args.teacher and args.kd_alpha is None:
        args.kd_alpha = 0.5
    recipe = recipe_from_args(args, space=space_of(genome))
    s = train_genome_command(
        genome,
        recipe,
        args.data_dir,
        args.out,
        device=args.device,
        val_size=args.val_size,
        subset=args.subset,
        teacher=args.teacher,
        storage=args.storage,
    )
    print(f"genome:   {s['genome_str']}  ({s['params']:,} params)")
    val = "-" if s["val_acc"] is None else f"{s['val_acc']:.2%}"
    print(
        f"val acc:  {val}   test acc: {s['test_acc']:.2%}   "
        f"({plural(s['epochs'], 'epoch')}, {s['wall_time_s']:.0f} s on {s['device']}, "
        f"{plural(s['train_size'], 'training image')})"
    )
    print(f"saved:    {s['run_dir']}/ (model.pt, genome.json, result.json)")
    return 0


# ---------------------------------------------------------------- nas search


def add_search(sub) -> None:
    p = sub.add_parser(
        "search",
        help=COMMAND_HELP["search"],
        description="Search a space for the genome with the best validation accuracy under a parameter "
        "budget. Every candidate is projected into the budget band before training and is a "
        "trial of the Optuna study '{space}-b{budget}-{recipe tag}' in --storage; rerunning "
        "the same command resumes it (completed trials count toward --trials, trials of a "
        "crashed run are retried). Ctrl-C stops cleanly. "
        "Time: the defaults fit the device. On a CPU the search runs for "
        f"{CPU_DEFAULTS.time_limit_s / 60:.0f} minutes ({CPU_DEFAULTS.describe()}; a 50k-parameter "
        "plain conv trains ~5,000 images/s on 2 cores with bf16); on CUDA it runs "
        f"{CUDA_DEFAULTS.trials} trials of {CUDA_DEFAULTS.epochs} epochs on all training images in "
        f"{CUDA_DEFAULTS.space}. --time, --trials, --epochs and --subset override them; --plan "
        "prints the plan with its ETA without training.",
        epilog="fdpg: finite-difference projected gradient (probes every gene around a centre, steps along "
        "the accuracy gradient projected onto N(q) = budget); tpe, cmaes, gp, random, nsga2: Optuna "
        "samplers with pruning on epochs. Open the study with: optuna-dashboard STORAGE.",
    )
    p.add_argument("--budget", "-b", type=budget_arg, required=True, metavar="B", help=BUDGET_HELP)
    p.add_argument(
        "--start",
        metavar="GENOME",
        help="the first genome evaluated, and fdpg's start; any GENOME form "
        "of 'nas count' (default: the space's hand design: one block "
        "per stage, widths doubling per stage, expansion 4), projected "
        "to the budget",
    )
    p.add_argument("--top", type=positive_arg, default=10, help="rows of the final table (default 10)")
    p.add_argument(
        "--time",
        type=duration_arg,
        metavar="DURATION",
        help="stop the search after this long (90s, 30m, 2h): no trial starts after it and the "
        "running one stops at its next epoch boundary (it is retried on a rerun)",
    )
    p.add_argument(
        "--export",
        metavar="PATH.onnx",
        help="at the end, export the best trial to ONNX (see nas export) if it has trained weights, "
        "i.e. a sweep's final training of this study's winner; search trials keep no weights, "
        "otherwise the error gives the 'nas train' command to run first",
    )
    add_search_options(p)


def cmd_search(args) -> int:
    import optuna

    from nas.genome_args import parse_genome
    from nas.search import make_plan, search
    from nas.spaces import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines say what happens
    settings = search_settings(args)
    space = load_space(settings["space"])
    start = parse_genome(args.start, space, storage=args.storage) if args.start else None
    recipe = recipe_from_args(args, settings["epochs"], space)
    config = search_config(args, settings, start)
    if args.plan:
        from nas.budget import project
        from nas.search import default_start

        project(start or default_start(space), space, args.budget, args.tol)  # an unreachable budget: one line
        print("\n".join(make_plan(space, args.budget, config, recipe).lines()))
        return 0
    try:
        result = search(
            space,
            args.budget,
            config,
            storage=args.storage,
            data_dir=args.data_dir,
            recipe=recipe,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        return _interrupted("finished trials are", args.storage or "sqlite:///studies/nas.db")
    _print_search_result(result, args.top)
    _print_dashboard_and_report(result.storage)
    if args.export:
        if result.best is None:
            raise NasError("nothing to export: no completed trial within the budget")
        _export_and_print(f"{result.study_name}#{result.best.number}", args.export, storage=result.storage)
    return 0


def _interrupted(kept: str, storage: str) -> int:
    """After Ctrl-C: what is kept where, and how to go on; exit status 130."""
    print(f"nas: interrupted: {kept} kept in {storage}; rerun the same command to continue", file=sys.stderr)
    return 130


def _print_search_result(result, top: int) -> None:
    """The search's closing table: its `top` best trials, then its finalists and the winner."""
    score = "asymptote" if result.score == "asymptote" else "val acc"
    print(
        f"\nstudy {result.study_name}: {plural(result.trials, result.searcher + ' trial')} "
        f"(stopped: {result.stopped}), {result.wall_time_s:.0f} s"
    )
    if result.top:
        rows = [
            (
                str(i),
                f"#{t.number}",
                t.user_attrs.get("genome_str", "?"),
                f"{t.user_attrs['params']:,}",
                f"{t.user_attrs['flops']:,}",
                f"{t.value:.2%}",
            )
            for i, t in enumerate(result.top[:top], 1)
        ]
        _print_table(("rank", "trial", "genome", "params", "FLOPs", score), rows)
    else:
        print("no completed trial within the budget yet")
    if result.finalists:
        f0 = result.finalists[0]
        print(
            f"\nfinalists, retrained on {f0.train_images:,} images x {plural(f0.fidelity['epochs'], 'epoch')} "
            f"(seed {f0.fidelity['seed']}):"
        )
        rows = [
            (str(i), f"#{f.trial}", f.genome_str, f"{f.search_score:.2%}", f"{f.score:.2%}")
            for i, f in enumerate(result.finalists, 1)
        ]
        _print_table(("rank", "trial", "genome", score, "finalist val acc"), rows)
    if result.best is not None:
        print(f"winner: #{result.best.number} {result.best.user_attrs.get('genome_str', '?')}")


# ---------------------------------------------------------------- nas sweep


def add_sweep(sub) -> None:
    from nas.sweep import DEFAULT_BUDGETS
    from nas.sweep_plan import DEFAULT_FINAL_EPOCHS, FIT, MAX_FINAL_EPOCHS, MIN_FINAL_EPOCHS

    p = sub.add_parser(
        "sweep",
        help=COMMAND_HELP["sweep"],
        description="Run one search per budget (each its own study in --storage), then retrain each budget's "
        "winner (the best of its finalists, see nas search --finalists) on all 50,000 training images "
        "and record its test accuracy in the study, beside "
        "two baselines trained with the same recipe and epochs: the space's hand design projected "
        "to the budget and the reference study's model for that budget (where there is one). "
        "Winners of the budgets searched first are tried at the next budget (budget transfer). "
        "Rerunning resumes: finished searches add no trials and final trainings already recorded "
        "are not redone (with --time, a winner keeps the epochs it was first trained for). "
        "Ends by writing the HTML report and its JSON summary.",
    )
    p.add_argument(
        "--budgets",
        default=",".join(str(b) for b in DEFAULT_BUDGETS),
        help="comma-separated budgets, searched in this order; 5k and 1M work too "
        f"(default {','.join(str(b) for b in DEFAULT_BUDGETS)})",
    )
    p.add_argument(
        "--time",
        type=duration_arg,
        metavar="DURATION",
        help=f"the time for the searches and the winners (e.g. 4h), spent by cost: {SWEEP_SEARCH_SHARE * 100:.0f}%% "
        "goes to the searches, in proportion to each budget's cost per trial (so each search gets about "
        "as many trials; a rerun counts the time its studies already used), the rest to the winners' "
        "final trainings, in proportion to each budget's cost per epoch, so every winner trains the same "
        f"epochs (calibrated on this machine, at most {MAX_FINAL_EPOCHS}; where half the time would give "
        f"fewer than {MIN_FINAL_EPOCHS}, the winners take more of it); --plan prints the split",
    )
    p.add_argument(
        "--final-epochs",
        type=positive_arg,
        help=f"epochs of each final training (default: from --time, else {DEFAULT_FINAL_EPOCHS})",
    )
    p.add_argument(
        "--baselines",
        type=baselines_arg,
        default=FIT,
        metavar="KINDS",
        help="designs trained beside each winner for its epochs, each with its own family's recipe, their "
        "time on top of --time and planned separately: any of hand (the space's hand design), resnet "
        "(the CIFAR ResNet shape projected to the budget), reference (the reference study's model near "
        "the budget); fit (the default): those of them, in that order, whose training takes at most twice "
        "the winner's at each budget; or none",
    )
    p.add_argument("--out", help="report file (default reports/<storage name>.html; the JSON summary goes beside it)")
    p.add_argument(
        "--no-export",
        action="store_true",
        help="do not export each winner to ONNX (default: model.onnx + model.card.json in its run folder)",
    )
    p.add_argument(
        "--baselines-only",
        action="store_true",
        help="train only the baselines this sweep would train (same options: the plan's epochs, each "
        "baseline's own recipe), largest budget first, without searching, into the same storage: run it "
        "beside the sweep (another core or machine) and the sweep finds them trained",
    )
    p.add_argument(
        "--retrain-missing",
        action="store_true",
        help="train again, with the same recipe and seed, each recorded winner whose weights are not on "
        "this machine (a journal resumed in a fresh clone or on another machine), so it can be exported; "
        "its new record replaces the old one (trained in another precision, bf16 or float32, the same seed "
        "gives another model: the sweep says so)",
    )
    add_search_options(p)


def cmd_sweep(args) -> int:
    import optuna

    from nas.budget import parse_budgets
    from nas.report import default_report_path
    from nas.spaces import load_space
    from nas.storage import storage_url
    from nas.summary import write_summary_json
    from nas.sweep import sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budgets = parse_budgets(args.budgets)
    storage = storage_url(args.storage)
    settings = sweep_settings(args, len(budgets))
    space = load_space(settings["space"])
    recipe = recipe_from_args(args, settings["epochs"], space)
    config = search_config(args, settings)
    # what the sweep and its --baselines-only both take
    common = {
        "final_epochs": args.final_epochs,
        "time_limit": settings["time_limit"],
        "storage": storage,
        "data_dir": args.data_dir,
        "recipe": recipe,
        "progress": not args.quiet,
        "baselines": args.baselines,
    }
    if args.baselines_only and not args.plan:
        return _train_baselines_only(space, budgets, config, common)
    if args.plan:
        from nas.sweep import plan_resumed

        plan = plan_resumed(
            space,
            budgets,
            config,
            recipe,
            storage=storage,
            time_limit=settings["time_limit"],
            final_epochs=args.final_epochs,
            baselines=args.baselines,
        )
        print("\n".join(plan.lines()))
        return 0
    try:
        outcomes = sweep(
            space, budgets, config, **common, export=not args.no_export, retrain_missing=args.retrain_missing
        )
    except KeyboardInterrupt:
        return _interrupted("finished trials and final trainings are", storage)
    _print_sweep_outcomes(outcomes)
    out = args.out or str(default_report_path(storage))
    _print_dashboard_and_report(storage, out)
    summary = write_summary_json(storage, Path(out).with_suffix(".json"))
    print(f"summary:   {summary} (the curve as a Markdown table: {summary.with_suffix('.md')})")
    return 0


def _train_baselines_only(space, budgets, config, common: dict) -> int:
    """`nas sweep --baselines-only`: the sweep's baselines, largest budget first, no search."""
    from nas.sweep import train_baselines

    storage = common["storage"]
    try:
        done = train_baselines(space, budgets, config, **common)
    except KeyboardInterrupt:
        return _interrupted("finished baseline trainings are", storage)
    for budget, records in done.items():
        accs = ", ".join(
            f"{kind} {'failed' if r.get('test_acc') is None else format(r['test_acc'], '.2%')}"
            for kind, r in records.items()
        )
        print(f"budget {budget:,}: {accs or 'no baseline'}")
    print(f"recorded in {storage}: the same nas sweep command without --baselines-only finds them trained")
    return 0


def _print_sweep_outcomes(outcomes) -> None:
    """Per budget the winner's test accuracy beside the baselines', then the exported models."""

    def acc(record: dict | None) -> str:
        return "-" if not record or record.get("test_acc") is None else f"{record['test_acc']:.2%}"

    rows = [
        (f"{o.budget:,}", "-", "-", "-", "-", "-", "no completed trial")
        if o.final is None
        else (
            f"{o.budget:,}",
            f"{o.final['params']:,}",
            acc(o.final),
            acc(o.baselines.get("hand")),
            acc(o.baselines.get("resnet")),
            acc(o.baselines.get("seed")),
            o.final["genome_str"],
        )
        for o in outcomes
    ]
    print()
    _print_table(("budget", "params", "test acc", "hand design", "ResNet", "reference", "genome"), rows)
    for o in outcomes:
        if o.onnx is not None:
            print(f"onnx:      {o.onnx}")


# ---------------------------------------------------------------- nas export


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help=COMMAND_HELP["export"],
        description="Export a training run (a runs/... folder written by 'nas train' or by a sweep's final "
        "training) to one ONNX file with a dynamic batch size, in eval mode, float32, and write "
        "<name>.card.json next to it (genome, params, FLOPs, recipe, test accuracy, the input's "
        "normalisation mean/std, input shape, classes). The file is checked before it is written: "
        "ONNX Runtime's logits on 100 images must match PyTorch's within 1e-4 (the CIFAR-100 test "
        "images when found, else random images; the card says which).",
        epilog="RUN may also be STUDY#N (with --storage): trial N of a study, which has weights when a sweep "
        "final-trained it as the study's winner. Other trials: nas train GENOME --out DIR, then nas export DIR.",
    )
    p.add_argument("run", metavar="RUN", help="training run folder, or STUDY#N")
    p.add_argument("--output", "-o", metavar="PATH.onnx", help="ONNX file to write (default RUN/model.onnx)")
    p.add_argument("--storage", help="Optuna storage of STUDY#N (default sqlite:///studies/nas.db)")
    p.add_argument(
        "--data-dir",
        help="folder holding cifar-100-python/, for the check's test images "
        "(default: $NAS_DATA_DIR, else a per-user cache)",
    )
    p.add_argument("--no-check", action="store_true", help="do not compare ONNX Runtime with PyTorch")


def _export_and_print(
    run: str, output: str | None, *, storage: str | None = None, check: bool = True, data_dir: str | None = None
) -> None:

    from nas.export import export_run
    from nas.runs import resolve_run

    run_dir, source = resolve_run(run, storage)
    r = export_run(run_dir, output, check=check, data_dir=data_dir, source=source)
    c = r.card
    test = f", test acc {c['test_acc']:.2%}" if isinstance(c.get("test_acc"), (int, float)) else ""
    print(f"exported: {r.onnx_path}  ({c['genome_str']}, {c['params']:,} params{test})")
    print(f"card:     {r.card_path}")
    if c["check"].get("skipped"):
        print("check:    skipped (--no-check)")
    else:
        k = c["check"]
        print(
            f"check:    ONNX Runtime = PyTorch on {k['inputs']}: max |diff| {k['max_abs_diff']:.1e} "
            f"(tolerance {k['tolerance']:g}), same top-1 on {k['top1_agree']}/{k['images']}"
        )


def cmd_export(args) -> int:
    _export_and_print(args.run, args.output, storage=args.storage, check=not args.no_check, data_dir=args.data_dir)
    return 0


# ---------------------------------------------------------------- nas report


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help=COMMAND_HELP["report"],
        description="Write one self-contained HTML file (plotly inlined, opens offline): accuracy vs "
        "parameters with the reference curves, per-budget search progress and learning curves, "
        "the fdpg path, and a table of winners; and beside it <name>.json, the per-budget summary "
        "of the final trainings (winner, baselines, epochs, minutes, scaling fit).",
    )
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--out", help="output file (default reports/<storage name>.html)")
    p.add_argument("--title", help="page title")
    p.add_argument(
        "--previous",
        metavar="STORAGE",
        help="an earlier run's storage: its winners are drawn as 'previous run' in the picture and kept "
        "in the JSON summary",
    )
    p.add_argument(
        "--readme",
        metavar="FILE",
        help="also put the picture and the curve's table into FILE, between its "
        "'<!-- curve:start -->' and '<!-- curve:end -->' lines",
    )
    p.add_argument(
        "--models",
        action="store_true",
        help="also copy each budget's exported winner (ONNX + card) to <out without .html>/<budget>.onnx",
    )


def cmd_report(args) -> int:
    from nas.report import default_report_path, write_report
    from nas.storage import resolve_storage
    from nas.summary import write_summary_json

    storage = resolve_storage(args.storage, create=False)  # a report never creates a storage
    out = write_report(storage, args.out or default_report_path(storage), title=args.title)
    print(out)
    previous = resolve_storage(args.previous, create=False) if args.previous else None
    summary = write_summary_json(storage, out.with_suffix(".json"), previous=previous, readme=args.readme)
    for path in (summary, summary.with_suffix(".md"), summary.with_suffix(".svg")):
        print(path)
    if args.readme:
        print(args.readme)
    if args.models:
        from nas.summary import collect_models

        for path in collect_models(storage, out.with_suffix("")):
            print(path)
    return 0


# ---------------------------------------------------------------- entry point

COMMANDS: list[tuple[Callable, Callable]] = [
    (add_count, cmd_count),
    (add_project, cmd_project),
    (add_space, cmd_space),
    (add_train, cmd_train),
    (add_search, cmd_search),
    (add_sweep, cmd_sweep),
    (add_export, cmd_export),
    (add_report, cmd_report),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only` set, of that command alone (the others are
    listed with their help line but have no options): building the options of train, search and
    sweep imports torch, which a `nas count` or a mistyped command need not wait for."""
    parser = _Parser(
        prog="nas",
        description="Parameter-budget neural architecture search for CIFAR-100. "
        "Run 'nas COMMAND --help' for each command.",
    )
    from nas import __version__

    parser.add_argument("--version", action="version", version=f"nas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, cmd in COMMANDS:
        name = add.__name__.removeprefix("add_")
        if only is not None and name != only:
            sub.add_parser(name, help=COMMAND_HELP[name])
            continue
        add(sub)
        sub.choices[name].set_defaults(func=cmd)
    return parser


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler ending a job) stops nas as Ctrl-C does: running trials are
    marked interrupted and claims withdrawn at once, rather than left to go silent."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level parser has no option that takes a value: the first other word is the command.
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    try:
        with _terminate_as_interrupt():
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a closed pipe is noticed below and not at interpreter exit
        return code
    except NasError as e:
        print(f"nas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`nas count ... | head -1`): stop quietly, as Unix tools do. Output
        # still buffered would fail again at exit, so stdout now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
