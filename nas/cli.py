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


# ---------------------------------------------------------------- entry point

COMMANDS: list[tuple[Callable, Callable]] = [
    (add_count, cmd_count),
    (add_project, cmd_project),
    (add_space, cmd_space),
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
