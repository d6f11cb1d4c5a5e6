"""The `nas` command line: a thin layer over the Python API.

Each command is a pair `add_<name>(subparsers)` / `cmd_<name>(args) -> int`. User errors are
raised as NasError and printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from nas.errors import NasError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like NasError
        self.exit(2, f"{self.prog}: error: {message}\n")


def _budget(text: str) -> int:
    from nas.budget import check_budget

    try:
        return check_budget(text.replace("_", "").replace(",", "") if isinstance(text, str) else text)
    except NasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tol(text: str) -> float:
    try:
        tol = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tolerance must be a number in [0, 1), got {text!r}") from None
    if not 0 <= tol < 1:
        raise argparse.ArgumentTypeError(f"tolerance must be in [0, 1), got {text!r}")
    return tol


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return n


def _print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns right-aligned, except the genome column, left-aligned."""
    left = head.index("genome")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) if c == left else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip())


def _print_dashboard_and_report(storage: str, out: str | None = None) -> None:
    """The closing lines of search and sweep: how to browse the study, and the refreshed report."""
    from nas.report import default_report_path, write_report
    from nas.study import dashboard_command

    print(f"dashboard: {dashboard_command(storage)}")
    print(f"report:    {write_report(storage, out or default_report_path(storage))}")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def genome_summary(genome) -> dict[str, Any]:
    """The JSON object `nas count --json` and `nas project --json` print."""
    from nas.counting import count_flops, count_params

    return {"params": count_params(genome), "flops": count_flops(genome), "genome": genome.to_dict(),
            "genome_str": str(genome)}


# ---------------------------------------------------------------- nas count

def add_count(sub) -> None:
    p = sub.add_parser("count", help="exact parameters and FLOPs of a genome, with a per-layer table",
                       description="Print the exact parameter count (analytic, equal to the built model's), "
                                   "the FLOPs of one 32x32 image (fvcore; one multiply-add = one FLOP), and "
                                   "fvcore's per-layer table.")
    p.add_argument("genome", metavar="GENOME", help="a preset name (e.g. seed-m4 or mbconv:seed-m4), "
                                                    "a path to a genome .json file, or inline JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object (params, flops, genome)")


def cmd_count(args) -> int:
    from nas.counting import layer_table
    from nas.spaces import parse_genome

    genome = parse_genome(args.genome)
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
    p = sub.add_parser("project", help="move a genome into a parameter budget",
                       description="Rescale a genome's widths (then depth, then other genes, only if needed) "
                                   "so that its parameter count lands in [(1 - tol) * B, B]. Never exceeds B.")
    p.add_argument("genome", metavar="GENOME", help="preset name, .json file or inline JSON")
    p.add_argument("--budget", "-b", type=_budget, required=True, metavar="B", help="parameter budget, e.g. 50000")
    p.add_argument("--tol", type=_tol, default=0.1, help="relative band under the budget (default 0.1)")
    p.add_argument("--space", help="space whose ranges to use (default: the genome's own space)")
    p.add_argument("--json", action="store_true", help="print one JSON object (params, flops, genome)")


def cmd_project(args) -> int:
    from nas.budget import project
    from nas.spaces import load_space, parse_genome

    genome = parse_genome(args.genome)
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
    p = sub.add_parser("space", help="list or show search spaces",
                       description="Search spaces are TOML files in ./search_spaces, the folders on "
                                   "NAS_SPACES_PATH, or nas's own search_spaces/. Copy one to make a variant.")
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
            print(f"{name:<16} {sp.family.name:<7} {min_params(sp):>10,} .. {max_params(sp):>12,} params  "
                  f"{sp.description}")
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
        rng = (f"choices {list(gene.choices)}" if gene.choices is not None
               else f"{gene.low}..{gene.high}" + (f" step {gene.step}" if gene.step > 1 else "")
               + (" (log)" if gene.log else ""))
        print(f"  {name:<12} {rng}{per}  [{gene.role}]")
    if sp.presets:
        from nas.counting import count_params

        print("presets:")
        for pname, g in sp.presets.items():
            print(f"  {pname:<12} {count_params(g):>10,} params  {g}")
    return 0


# ---------------------------------------------------------------- recipe options (train, search, sweep)

def add_recipe_options(p: argparse.ArgumentParser, epochs_default: int) -> None:
    from nas.training import Recipe

    d = Recipe()
    g = p.add_argument_group("training recipe")
    g.add_argument("--epochs", "-e", type=_positive, default=epochs_default, help=f"epochs per training (default {epochs_default})")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=d.optimizer, help="sgd = SGD, Nesterov momentum 0.9")
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    g.add_argument("--schedule", choices=["onecycle", "cosine"], default=d.schedule, help="learning-rate schedule")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to BatchNorm and biases")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--cutout", type=int, default=d.cutout, help="cutout square side in pixels, 0 = off")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    g.add_argument("--no-bf16", action="store_true",
                   help="train in float32 (default: bf16 autocast on CUDA and on CPUs with native bf16)")


def recipe_from_args(args, epochs: int | None = None):
    from nas.training import Recipe

    return Recipe(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule, batch_size=args.batch_size,
                  weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, cutout=args.cutout,
                  compile=args.compile, bf16=not args.no_bf16, epochs=epochs or args.epochs)


# ---------------------------------------------------------------- nas train

def add_train(sub) -> None:
    p = sub.add_parser("train", help="train one genome and save it",
                       description="Train one genome on CIFAR-100 (validation split carved from the training "
                                   "set), print val and test accuracy, and save model.pt + genome.json + "
                                   "result.json so the model can be rebuilt (nas.training.load_trained). "
                                   "On a CPU a 50k-parameter model takes minutes per epoch; a GPU, seconds.")
    p.add_argument("genome", metavar="GENOME", help="preset name, .json file or inline JSON")
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: $NAS_DATA_DIR, else a per-user cache)")
    p.add_argument("--out", help="output folder (default runs/<genome>-<time>/)")
    p.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: cuda if available)")
    p.add_argument("--val-size", type=int, default=5000, help="validation images carved from the training set")
    add_recipe_options(p, epochs_default=15)


def cmd_train(args) -> int:
    from nas.training import train_genome_command

    recipe = recipe_from_args(args)
    overrides = {k: v for k, v in recipe.to_dict().items() if k != "epochs"}
    s = train_genome_command(args.genome, recipe.epochs, args.data_dir, args.out, device=args.device,
                             val_size=args.val_size, **overrides)
    print(f"genome:   {s['genome_str']}  ({s['params']:,} params)")
    print(f"val acc:  {s['val_acc']:.2%}   test acc: {s['test_acc']:.2%}   "
          f"({s['epochs']} epochs, {s['wall_time_s']:.0f} s on {s['device']})")
    print(f"saved:    {s['run_dir']}/ (model.pt, genome.json, result.json)")
    return 0


# ---------------------------------------------------------------- nas search

def add_search(sub) -> None:
    p = sub.add_parser(
        "search", help="search a space for the best genome under a parameter budget",
        description="Search a space for the genome with the best validation accuracy under a parameter "
                    "budget. Every candidate is projected into the budget band before training and is a "
                    "trial of the Optuna study '{space}-b{budget}-{recipe tag}' in --storage; rerunning "
                    "the same command resumes it (completed trials count toward --trials, trials of a "
                    "crashed run are retried). Ctrl-C stops cleanly. "
                    "Time: the defaults (40 trials x 15 epochs) are meant for a GPU. On a CPU expect about a "
                    "minute per epoch of a 50k-parameter model over the 45,000 training images (measured "
                    "~1,000 images/s on 2 cores with bf16; several times slower on CPUs without native bf16), "
                    "so the defaults take hours there: use --subset, 2-3 --epochs and 10-20 --trials (budget "
                    "10k, --subset 5000, 3 epochs, 20 trials: about 2 minutes on 2 cores).",
        epilog="fdpg: finite-difference projected gradient (probes every gene around a centre, steps along "
               "the accuracy gradient projected onto N(q) = budget); tpe, cmaes, gp, random, nsga2: Optuna "
               "samplers with pruning on epochs. Open the study with: optuna-dashboard STORAGE.")
    p.add_argument("--budget", "-b", type=_budget, required=True, metavar="B", help="parameter budget, e.g. 50000")
    p.add_argument("--start", metavar="GENOME", help="fdpg start genome (default: one block per stage, widths doubling per stage, expansion 4), "
                                                    "projected to the budget")
    p.add_argument("--top", type=_positive, default=10, help="rows of the final table (default 10)")
    p.add_argument("--export", metavar="PATH.onnx",
                   help="at the end, export the best trial to ONNX (see nas export) if it has trained weights, "
                        "i.e. a sweep's final training of this study's winner; search trials keep no weights, "
                        "otherwise the error gives the 'nas train' command to run first")
    add_search_options(p)


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Options of `nas search` that `nas sweep` passes on to every budget's search."""
    from nas.searchers import PRUNERS, SEARCHERS

    p.add_argument("--space", default="mbconv", help="search space name or .toml file (default mbconv)")
    p.add_argument("--searcher", choices=SEARCHERS, default="tpe", help="default tpe")
    p.add_argument("--trials", type=_positive, default=40,
                   help="evaluations of this searcher in the study, including earlier runs' (default 40)")
    p.add_argument("--jobs", "-j", type=_positive, default=1,
                   help="trials trained at once (threads; fdpg: a step's probes) (default 1)")
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...) or a journal file "
                                     "path ending in .log (default sqlite:///studies/nas.db)")
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: $NAS_DATA_DIR, else a per-user cache)")
    p.add_argument("--score", choices=["val", "asymptote"], default="val",
                   help="trial value: last-epoch val accuracy, or the fitted learning-curve asymptote")
    p.add_argument("--pruner", choices=PRUNERS, default="hyperband", help="prune on epochs (samplers only; default hyperband)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--tol", type=_tol, default=0.1, help="budget band [(1 - tol) * B, B] (default 0.1)")
    p.add_argument("--subset", type=_positive, help="train on only this many training images (quick runs)")
    p.add_argument("--val-size", type=_positive, default=5000, help="validation images carved from the training set")
    p.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output, only the final table")
    add_recipe_options(p, epochs_default=15)


def cmd_search(args) -> int:
    import optuna

    from nas.searchers import search
    from nas.spaces import load_space, parse_genome

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines say what happens
    space = load_space(args.space)
    start = parse_genome(args.start, space) if args.start else None
    try:
        result = search(space, args.budget, args.searcher, trials=args.trials, jobs=args.jobs, storage=args.storage,
                        data_dir=args.data_dir, score=args.score, pruner=args.pruner, seed=args.seed, tol=args.tol,
                        recipe=recipe_from_args(args), progress=not args.quiet, subset=args.subset,
                        val_size=args.val_size, start=start, device=args.device)
    except KeyboardInterrupt:
        print(f"nas: interrupted: finished trials are kept in {args.storage or 'sqlite:///studies/nas.db'}; "
              f"rerun the same command to continue", file=sys.stderr)
        return 130
    score = "asymptote" if result.score == "asymptote" else "val acc"
    print(f"\nstudy {result.study_name}: {result.trials} {result.searcher} trials ({result.stopped}), "
          f"{result.wall_time_s:.0f} s")
    if result.top:
        rows = [(str(i), f"#{t.number}", t.user_attrs.get("genome_str", "?"), f"{t.user_attrs['params']:,}",
                 f"{t.user_attrs['flops']:,}",
                 f"{t.value:.2%}") for i, t in enumerate(result.top[:args.top], 1)]
        _print_table(("rank", "trial", "genome", "params", "FLOPs", score), rows)
    else:
        print("no completed trial within the budget yet")
    _print_dashboard_and_report(result.storage)
    if args.export:
        if result.best is None:
            raise NasError("nothing to export: no completed trial within the budget")
        _export_and_print(f"{result.study_name}#{result.best.number}", args.export, storage=result.storage)
    return 0


# ---------------------------------------------------------------- nas sweep

def add_sweep(sub) -> None:
    from nas.sweep import DEFAULT_BUDGETS, DEFAULT_FINAL_EPOCHS

    p = sub.add_parser(
        "sweep", help="search several budgets, then train each winner longer and test it",
        description="Run one search per budget (each its own study in --storage), then retrain each budget's "
                    "best genome with the same recipe for --final-epochs epochs and record its validation and "
                    "test accuracy in the study. Rerunning resumes: finished searches add no trials and final "
                    "trainings already recorded are not redone. Ends by writing the HTML report.")
    p.add_argument("--budgets", default=",".join(str(b) for b in DEFAULT_BUDGETS),
                   help="comma-separated budgets, searched in this order; 5k and 1M work too "
                        f"(default {','.join(str(b) for b in DEFAULT_BUDGETS)})")
    p.add_argument("--final-epochs", type=_positive, default=DEFAULT_FINAL_EPOCHS,
                   help=f"epochs of each winner's final training (default {DEFAULT_FINAL_EPOCHS})")
    p.add_argument("--out", help="report file (default reports/<storage name>.html)")
    p.add_argument("--no-export", action="store_true",
                   help="do not export each winner to ONNX (default: model.onnx + model.card.json in its run folder)")
    add_search_options(p)


def cmd_sweep(args) -> int:
    import optuna

    from nas.study import resolve_storage
    from nas.sweep import parse_budgets, sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budgets = parse_budgets(args.budgets)
    storage = resolve_storage(args.storage)
    try:
        outcomes = sweep(args.space, budgets, final_epochs=args.final_epochs, storage=storage,
                         data_dir=args.data_dir, recipe=recipe_from_args(args), val_size=args.val_size,
                         device=args.device, progress=not args.quiet, searcher=args.searcher,
                         trials=args.trials, jobs=args.jobs, score=args.score, pruner=args.pruner,
                         seed=args.seed, tol=args.tol, subset=args.subset, export=not args.no_export)
    except KeyboardInterrupt:
        print(f"nas: interrupted: finished trials and final trainings are kept in {storage}; "
              f"rerun the same command to continue", file=sys.stderr)
        return 130
    rows = [(f"{o.budget:,}", "-", "-", "-", "no completed trial") if o.final is None else
            (f"{o.budget:,}", f"{o.final['params']:,}", f"{o.final['val_acc']:.2%}", f"{o.final['test_acc']:.2%}",
             o.final["genome_str"]) for o in outcomes]
    print()
    _print_table(("budget", "params", "val acc", "test acc", "genome"), rows)
    for o in outcomes:
        if o.onnx is not None:
            print(f"onnx:      {o.onnx}")
    _print_dashboard_and_report(storage, args.out)
    return 0


# ---------------------------------------------------------------- nas export

def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trained model to ONNX, checked against PyTorch, with a model card",
        description="Export a training run (a runs/... folder written by 'nas train' or by a sweep's final "
                    "training) to one ONNX file with a dynamic batch size, in eval mode, float32, and write "
                    "<name>.card.json next to it (genome, params, FLOPs, recipe, test accuracy, the input's "
                    "normalisation mean/std, input shape, classes). The file is checked before it is written: "
                    "ONNX Runtime's logits on 100 images must match PyTorch's within 1e-4 (the CIFAR-100 test "
                    "images when found, else random images; the card says which).",
        epilog="RUN may also be STUDY#N (with --storage): trial N of a study, which has weights when a sweep "
               "final-trained it as the study's winner. Other trials: nas train GENOME --out DIR, then nas export DIR.")
    p.add_argument("run", metavar="RUN", help="training run folder, or STUDY#N")
    p.add_argument("--output", "-o", metavar="PATH.onnx", help="ONNX file to write (default RUN/model.onnx)")
    p.add_argument("--storage", help="Optuna storage of STUDY#N (default sqlite:///studies/nas.db)")
    p.add_argument("--data-dir", help="folder holding cifar-100-python/, for the check's test images "
                                      "(default: $NAS_DATA_DIR, else a per-user cache)")
    p.add_argument("--no-check", action="store_true", help="do not compare ONNX Runtime with PyTorch")


def _export_and_print(run: str, output: str | None, *, storage: str | None = None, check: bool = True,
                      data_dir: str | None = None) -> None:
    from pathlib import Path

    from nas.export import export_run, parse_trial_ref, trial_run_dir

    ref = None if Path(run).is_dir() else parse_trial_ref(run)
    if ref is None:
        run_dir, source = Path(run), {}
    else:
        run_dir, source = trial_run_dir(*ref, storage=storage)
    r = export_run(run_dir, output, check=check, data_dir=data_dir, source=source)
    c = r.card
    test = f", test acc {c['test_acc']:.2%}" if isinstance(c.get("test_acc"), (int, float)) else ""
    print(f"exported: {r.onnx_path}  ({c['genome_str']}, {c['params']:,} params{test})")
    print(f"card:     {r.card_path}")
    if c["check"].get("skipped"):
        print("check:    skipped (--no-check)")
    else:
        k = c["check"]
        print(f"check:    ONNX Runtime = PyTorch on {k['inputs']}: max |diff| {k['max_abs_diff']:.1e} "
              f"(tolerance {k['tolerance']:g}), same top-1 on {k['top1_agree']}/{k['images']}")


def cmd_export(args) -> int:
    _export_and_print(args.run, args.output, storage=args.storage, check=not args.no_check, data_dir=args.data_dir)
    return 0


# ---------------------------------------------------------------- nas report

def add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="write the HTML report of every study in a storage",
        description="Write one self-contained HTML file (plotly inlined, opens offline): accuracy vs "
                    "parameters with the reference curves, per-budget search progress and learning curves, "
                    "the fdpg path, and a table of winners.")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default sqlite:///studies/nas.db)")
    p.add_argument("--out", help="output file (default reports/<storage name>.html)")
    p.add_argument("--title", help="page title")


def cmd_report(args) -> int:
    from nas.report import default_report_path, write_report
    from nas.study import resolve_storage

    storage = resolve_storage(args.storage)
    print(write_report(storage, args.out or default_report_path(storage), title=args.title))
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas", description="Parameter-budget neural architecture search for CIFAR-100. "
                                             "Run 'nas COMMAND --help' for each command.")
    from nas import __version__

    parser.add_argument("--version", action="version", version=f"nas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, cmd in COMMANDS:
        add(sub)
        for name, p in sub.choices.items():
            if p.get_default("func") is None and name == add.__name__.removeprefix("add_"):
                p.set_defaults(func=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NasError as e:
        print(f"nas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
