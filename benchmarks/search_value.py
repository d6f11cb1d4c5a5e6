"""Does the search beat a person's pick? The default searcher, random search and the hand design
at equal CPU time, on real CIFAR-100, each winner then trained with the same final recipe.

Per budget, arms:
- `default`: `nas search` as a user runs it (the device's default space, fidelity, searcher,
  pruning and finalists: TPE with no pruning, then the best trial of each topology retrained on
  every training image, see nas.finalists) for `--minutes` in all, with each of `--seeds`;
- `hyperband`: the same with Hyperband pruning (trials behind after 1 and 3 of their 4 epochs
  stop; the default until 2026-11-30). In its searches at 10k it stopped 84% of the trials of
  genomes deeper than the hand design against 47% of the others (`--summarize` counts them), and
  only complete trials become finalists;
- `k-best`: the same with the k best trials as finalists (the default before the diverse pick);
- `tpe`: TPE with Hyperband and no finalists (the best trial wins), same space, time and seeds;
- `random`: Optuna's random sampler run exactly as the default is (same space, fidelity, time,
  no pruning, the same diverse finalists), so that `default - random` is the sampler alone;
- `random-hb`: the random sampler with Hyperband and no finalists (the textbook baseline, and
  the `random` arm until 2026-12-04: its rows say `pruner` hyperband or nothing);
- `hand`: the space's hand design (its default start projected to the budget), no search.
The rows keep the arm names they were written with (`default` for the Hyperband searches,
`unpruned` for the first searches without pruning); `arm_of` reads them as the arms above.
Every search is its own study (one journal file per arm and seed under `--out`, so arms never
share results). Each arm's winner is then trained on all 50,000 training images for
`--final-epochs` with the same recipe and tested (`--recipe k=v,...` changes the space's recipe
for searches and final trainings alike; `--recipe bn_lr=1,whiten=false,tta=none` is the recipe
the rows before 2026-12 ran with, and the setup string names every recipe addition that is on);
`--space` searches another space than the CPU default (its rows have their own setup string,
and their own study files); the hand design is trained with each seed of
`--seeds` too (the recipe's seed), which gives the seed-to-seed spread of one genome. The script
prints test accuracy per arm (mean ± std over seeds) and the differences, from one run. Results
are appended to `<out>/results.jsonl` as they arrive; a rerun skips the arms already there, and
`--summarize` prints the tables from that file alone; `--arms` runs some arms only (several
processes may share one --out).

    python benchmarks/search_value.py --data-dir ../shared/data --budgets 10000,50000 --minutes 10 \
        --seeds 0,1 --final-epochs 15 --out benchmarks/results/search_value
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scipy.stats import ttest_ind, ttest_rel

from nas.budget import parse_budgets, project
from nas.data import CifarSource
from nas.plan import device_defaults
from nas.search import SearchConfig, default_start, search
from nas.spaces import FAMILIES, Genome, load_space
from nas.storage import open_storage
from nas.study import trial_genome
from nas.training import Recipe, evaluate, recipe_for, space_recipe, train

# The recipe fields added on 2026-12-04 at their neutral values (every row before ran with these).
ADDED_IN_2026_12 = {"ema": 0.0, "tta": "none", "alt_flip": False, "bn_lr": 1.0, "whiten": False, "kd_alpha": 0.0}

ARMS = ("default", "hyperband", "k-best", "tpe", "random", "random-hb", "hand")
# arm -> (searcher, finalist pick (None: no finalists), pruner, the stem of its study files)
SEARCH_ARMS = {
    "default": ("tpe", "diverse", "none", "unpruned"),
    "hyperband": ("tpe", "diverse", "hyperband", "default-diverse"),
    "k-best": ("tpe", "best", "hyperband", "default"),
    "tpe": ("tpe", None, "hyperband", "tpe"),
    "random": ("random", "diverse", "none", "random-fair"),
    "random-hb": ("random", None, "hyperband", "random"),
}
COMPARED = (
    ("default", "hand"),
    ("default", "random"),
    ("default", "random-hb"),
    ("default", "hyperband"),
    ("default", "k-best"),
    ("default", "tpe"),
    ("hyperband", "hand"),
    ("hyperband", "random"),
    ("hyperband", "k-best"),
    ("k-best", "hand"),
    ("k-best", "random"),
    ("tpe", "hand"),
    ("tpe", "random"),
    ("random", "hand"),
    ("random", "random-hb"),
    ("random-hb", "hand"),
)


def mean_std(xs: list[float]) -> str:
    return (
        f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{100 * xs[0]:.2f}"
    )


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def arm_of(row: dict) -> str:
    """A row's arm (see the module's docstring): a `default` row is the default of its day,
    which its `pruner` and `finalist_pick` say (absent: Hyperband, the k best)."""
    if row["arm"] == "unpruned" or (row["arm"] == "default" and row.get("pruner") == "none"):
        return "default"
    if row["arm"] == "default":
        return "hyperband" if row.get("finalist_pick") == "diverse" else "k-best"
    if row["arm"] == "random" and row.get("pruner", "hyperband") == "hyperband":
        return "random-hb"
    return row["arm"]


def difference(a: list[float], b: list[float], sigma: float, paired: bool = False) -> str:
    """Mean of `a` minus mean of `b` in points, in units of `sigma` (one genome's seed-to-seed
    σ), and a t-test's p-value (whether the two arms' means differ beyond their seed spread):
    Welch's, or the paired test when a[i] and b[i] come from one search."""
    d = statistics.mean(a) - statistics.mean(b)
    parts = [] if math.isnan(sigma) else [f"{abs(d) / sigma:.1f} σ"]
    if paired and len(a) == len(b) > 1:
        parts.append(f"paired t-test p {ttest_rel(a, b).pvalue:.3f}")
    elif len(a) > 1 and len(b) > 1:
        parts.append(f"Welch p {ttest_ind(a, b, equal_var=False).pvalue:.3f}")
    return f"{100 * d:+.2f} points" + (f" ({', '.join(parts)})" if parts else "")


def summarize(rows: list[dict]) -> None:
    """Per budget and setup: test accuracy per arm (mean ± std over seeds), the differences, and
    the seed-to-seed σ of one genome (the hand design trained with each seed)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        groups.setdefault((r["budget"], r.get("setup", "")), {a: [] for a in ARMS})[arm_of(r)].append(r)
    for (budget, setup), arms in groups.items():
        print(f"\nbudget {budget:,} ({setup}): test accuracy (%), mean ± std over seeds")
        acc = {arm: [r["test_acc"] for r in got] for arm, got in arms.items()}
        for arm, got in arms.items():
            if got:
                each = ", ".join(f"{100 * r['test_acc']:.2f} s{r['seed']}" for r in got)
                print(f"  {arm:<9} {mean_std(acc[arm])}   ({each})")
        sigma = statistics.stdev(acc["hand"]) if len(acc["hand"]) > 1 else float("nan")
        for a, b in COMPARED:
            if acc[a] and acc[b]:
                line = f"  {a} - {b}: {difference(acc[a], acc[b], sigma)}"
                by_seed = [{r["seed"]: r["test_acc"] for r in arms[arm]} for arm in (a, b)]
                shared = sorted(by_seed[0].keys() & by_seed[1].keys())
                # the same seeds only, paired (not the hand design: its seed is its final training's)
                if "hand" not in (a, b) and 1 < len(shared):
                    line += f"; at the {len(shared)} seeds both ran, paired: " + difference(
                        [by_seed[0][s] for s in shared], [by_seed[1][s] for s in shared], sigma, paired=True
                    )
                print(line)
        print(f"  seed-to-seed σ of one genome (hand design, final training): {100 * sigma:.2f} points", flush=True)


def blocks(genome: Genome) -> int:
    """How many blocks a genome stacks: the sum of its depth genes."""
    roles = FAMILIES[genome.family].gene_roles
    depths = [v for k, v in genome.to_dict()["genes"].items() if roles.get(k) == "depth"]
    return sum(sum(v) if isinstance(v, list) else int(v) for v in depths)


def search_study(path: Path) -> optuna.Study:
    """The study of one search: each arm and seed has its own journal file, holding one study."""
    storage = open_storage(str(path))
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def pruned_by_depth(rows: list[dict], out: Path) -> None:
    """Per budget, of the trials of the searches with Hyperband: the share it stopped, for
    genomes of the hand design's depth and for deeper ones (read from the arms' studies)."""
    for budget in sorted({r["budget"] for r in rows}):
        counts: dict[tuple[bool, bool], int] = {}  # (deeper, pruned) -> trials
        hand_blocks = None
        for r in rows:
            arm = arm_of(r)
            if r["budget"] != budget or arm not in SEARCH_ARMS or SEARCH_ARMS[arm][2] != "hyperband":
                continue
            study = search_study(out / r.get("study_file", f"b{budget}-{SEARCH_ARMS[arm][3]}-s{r['seed']}.log"))
            if hand_blocks is None:
                hand_blocks = blocks(default_start(load_space(study.user_attrs["space"])))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
                if "genome" in t.user_attrs and "reused_from" not in t.user_attrs:
                    key = (blocks(trial_genome(t)) > hand_blocks, t.state == TrialState.PRUNED)
                    counts[key] = counts.get(key, 0) + 1
        for deeper in (False, True):
            n = counts.get((deeper, False), 0) + counts.get((deeper, True), 0)
            if n:
                print(
                    f"  {budget:,}: Hyperband stopped {counts.get((deeper, True), 0) / n:.0%} of the {n} trials of "
                    f"genomes {'deeper than' if deeper else 'as deep as'} the hand design ({hand_blocks} blocks)"
                )


def recipe_overrides(text: str) -> dict[str, object]:
    """`bn_lr=1,whiten=false,tta=none` as Recipe fields (Recipe.from_dict checks names and types)."""
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, value = (part.strip() for part in item.partition("=")[::2])
        try:
            out[key] = json.loads(value)  # numbers and true/false
        except json.JSONDecodeError:
            out[key] = value  # words: tta=flip
    return out


def additions_on(recipe: Recipe) -> str:
    """The recipe additions of 2026-12 that are on, for the setup string: empty for the recipe
    all rows before them ran with, so those rows stay comparable with reruns of that recipe."""
    on = {k: v for k, v in recipe.to_dict().items() if k in ADDED_IN_2026_12 and v != ADDED_IN_2026_12[k]}
    return "".join(f", {k} {v}" for k, v in sorted(on.items()))


def final_tester(cifar: CifarSource, final_recipe: Recipe) -> Callable[[Genome, int], float]:
    """Test accuracy of a genome after the final training (every training image, `final_recipe`
    with the given seed): how every arm's winner is judged."""
    full = cifar.split(val_size=0)

    def final_test(genome: Genome, seed: int) -> float:
        r = train(genome, full, recipe_for(genome, replace(final_recipe, seed=seed)), "cpu")
        return evaluate(r.model, full.test_x, full.test_y, full)

    return final_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument(
        "--space",
        help="the space every arm searches and whose hand design is the hand arm (default: the CPU default, "
        "conv-shape); e.g. mixed-shape (block type per stage) or conv-shape-lr (the learning rate as a gene)",
    )
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument("--minutes", type=float, default=10.0, help="search time per arm and seed")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--final-epochs", type=int, default=15)
    ap.add_argument(
        "--recipe",
        default="",
        help="recipe fields over the space's, e.g. bn_lr=1,whiten=false,tta=none (the rows before 2026-12)",
    )
    ap.add_argument("--out", default="benchmarks/results/search_value", help="folder for the studies and results")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (default {','.join(ARMS)})")
    ap.add_argument("--summarize", action="store_true", help="print the tables from <out>/results.jsonl and stop")
    args = ap.parse_args()

    out = Path(args.out)
    results = out / "results.jsonl"
    if args.summarize:
        summarize(read_results(results))
        print("\npruning by depth:")
        pruned_by_depth(read_results(results), out)
        return
    d = device_defaults("cpu")
    space = load_space(args.space or d.space)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    if set(arms) - set(ARMS):
        raise SystemExit(f"unknown arms {sorted(set(arms) - set(ARMS))} (known: {', '.join(ARMS)})")
    out.mkdir(parents=True, exist_ok=True)
    # the space's measured recipe, as nas search uses, with --recipe over it
    search_recipe = space_recipe(space, epochs=d.epochs, **recipe_overrides(args.recipe))
    final_recipe = replace(search_recipe, epochs=args.final_epochs)
    # Rows of another setup in the same file are never mixed with this one's (nor skipped for it).
    setup = (
        f"{space.name}, {d.subset} images x {d.epochs} epochs, {args.minutes:g} min, final {args.final_epochs} epochs"
        + additions_on(search_recipe)
    )
    cifar = CifarSource(args.data_dir, "cpu")
    print(
        f"space {space.name}, search fidelity {d.subset:,} images x {d.epochs} epochs, {args.minutes:g} min per "
        f"search, final {args.final_epochs} epochs on every training image, seeds {seeds}",
        flush=True,
    )
    final_test = final_tester(cifar, final_recipe)

    def record(line: dict) -> None:
        line = {"setup": setup, **line}
        print(json.dumps(line), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(line) + "\n")

    budgets = parse_budgets(args.budgets)
    for budget in budgets:
        # a rerun resumes: an arm and seed already in the results file is not run again
        done = {
            (arm_of(r), r["seed"]) for r in read_results(results) if r["budget"] == budget and r.get("setup") == setup
        }
        # Searches first, the arms interleaved by seed (tpe 0, random 0, tpe 1, ...), so that a
        # change in what else runs on the machine falls on both searchers alike; then the hand
        # design's fixed-length trainings.
        for seed in seeds:
            for arm in [a for a in ARMS if a in SEARCH_ARMS and a in arms]:
                if (arm, seed) in done:
                    continue
                searcher, pick, pruner, stem = SEARCH_ARMS[arm]
                config = SearchConfig(
                    searcher,
                    trials=None,
                    time_limit=60 * args.minutes,
                    seed=seed,
                    subset=d.subset,
                    noise_seeds=False,
                    finalists=d.finalists if pick else 0,
                    finalist_pick=pick or "best",
                    pruner=pruner,
                )
                # one arm's studies are never another's, nor another space's
                study_file = ("" if space.name == d.space else f"{space.name}-") + f"b{budget}-{stem}-s{seed}.log"
                cpu = time.process_time()
                r = search(
                    space,
                    budget,
                    config,
                    storage=str(out / study_file),
                    data=cifar,
                    recipe=search_recipe,
                    progress=False,
                )
                if r.best is None:
                    raise SystemExit(
                        f"the {arm} search at {budget:,} finished no trial in {args.minutes:g} min; "
                        f"give it more --minutes"
                    )
                winner = trial_genome(r.best)
                record(
                    {
                        "budget": budget,
                        "arm": arm,
                        "seed": seed,
                        "genome": str(winner),
                        "study_file": study_file,
                        "finalist_pick": pick,
                        "pruner": pruner,
                        "search_score": r.best.value,
                        "trials": r.trials,
                        "finalists": [
                            {"genome": f.genome_str, "search_score": f.search_score, "score": f.score}
                            for f in r.finalists
                        ],
                        "search_cpu_minutes": round((time.process_time() - cpu) / 60, 2),
                        "test_acc": final_test(winner, 0),
                    }
                )  # the final recipe's own seed: only the genome differs
        hand = project(default_start(space), space, budget)
        for seed in seeds if "hand" in arms else ():
            if ("hand", seed) not in done:
                record(
                    {
                        "budget": budget,
                        "arm": "hand",
                        "seed": seed,
                        "genome": str(hand),
                        "test_acc": final_test(hand, seed),
                    }
                )
    summarize([r for r in read_results(results) if r["budget"] in budgets and r.get("setup") == setup])


if __name__ == "__main__":
    main()
