"""Do the finalists' scores rank genomes the way the final training does?

The genomes are those whose final test accuracy `search_value.py` has measured (every arm's
winner at every seed, the hand design; a genome tested more than once counts with its mean),
and the winners `finalist_pick.py` tested (it replays search_value's searches).
Each is trained once more at the finalist fidelity of `nas search` (every training image but the
5,000 held out, `--epochs`, the recipe's seed + 1; see nas.finalists) and scored on the held-out
images. Per budget the script prints each genome's search score (its trial's, where it won a
search), its finalist score and its test accuracy, and Spearman's rank correlation of both scores
with the test accuracy, from one run. Rows are appended to `<out>/results.jsonl` as they arrive;
a rerun skips the genomes done, `--summarize` prints the table from that file alone.

    python benchmarks/finalist_fidelity.py --data-dir ../shared/data --budgets 10000,50000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from scipy.stats import spearmanr
from search_value import read_results  # one JSONL reader for its rows and these

from nas.budget import parse_budgets
from nas.data import CifarSource
from nas.objective import TrainingObjective, training_objective
from nas.plan import device_defaults
from nas.spaces import load_space, parse_genome
from nas.study import DEFAULT_VAL_SIZE
from nas.training import space_recipe


def tested_genomes(rows: list[dict], budget: int, setup: str) -> dict[str, dict]:
    """genome -> its mean test accuracy, test count and best search score, over search_value's rows."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["budget"] != budget or r.get("setup") != setup:
            continue
        g = out.setdefault(r["genome"], {"tests": [], "search_score": None, "arms": set()})
        g["tests"].append(r["test_acc"])
        g["arms"].add(r["arm"])
        if r.get("search_score") is not None:
            g["search_score"] = max(r["search_score"], g["search_score"] or 0.0)
    return out


def with_current_tests(rows: list[dict], source: list[dict], setup: str) -> list[dict]:
    """`rows` with each genome's test accuracy, test count, arms and best search score as the
    sources hold them now (a genome tested again after its row was written counts every test)."""
    tested = {b: tested_genomes(source, b, setup) for b in {r["budget"] for r in rows}}
    out = []
    for r in rows:
        g = tested[r["budget"]].get(r["genome"])
        out.append(
            r
            if g is None
            else {
                **r,
                "test_acc": statistics.mean(g["tests"]),
                "tests": len(g["tests"]),
                "arms": sorted(g["arms"]),
                "search_score": g["search_score"],
            }
        )
    return out


def summarize(rows: list[dict]) -> None:
    for budget in sorted({r["budget"] for r in rows}):
        got = sorted((r for r in rows if r["budget"] == budget), key=lambda r: -r["test_acc"])
        f = got[0]["fidelity"]
        print(
            f"\nbudget {budget:,}: {len(got)} genomes; finalist fidelity {f['train_images']:,} images x "
            f"{f['epochs']} epochs, seed {f['seed']}; test accuracy after the final training (mean over tests)"
        )
        print(f"  {'genome':<40} {'arms':<22} {'search':>7} {'finalist':>9} {'test':>7}")
        for r in got:
            search = f"{100 * r['search_score']:.2f}" if r["search_score"] is not None else "-"
            print(
                f"  {r['genome']:<40} {','.join(r['arms']):<22} {search:>7} {100 * r['finalist_score']:>9.2f} "
                f"{100 * r['test_acc']:>7.2f}"
            )
        if len(got) >= 3:
            rho = spearmanr([r["finalist_score"] for r in got], [r["test_acc"] for r in got])
            print(
                f"  Spearman with test accuracy: finalist score {rho.statistic:+.2f} (p {rho.pvalue:.3f}, "
                f"{len(got)} genomes)"
            )
        scored = [r for r in got if r["search_score"] is not None]
        if len(scored) >= 3:
            rho = spearmanr([r["search_score"] for r in scored], [r["test_acc"] for r in scored])
            print(
                f"  Spearman with test accuracy: search score {rho.statistic:+.2f} (p {rho.pvalue:.3f}, "
                f"{len(scored)} search winners)"
            )


def finalist_objective(cifar: CifarSource, epochs: int | None = None) -> tuple[TrainingObjective, dict[str, int]]:
    """The CPU default search's finalist training (every training image but the 5,000 held out,
    `epochs` or the search's, the recipe's seed + 1), and its fidelity as the results record it."""
    d = device_defaults("cpu")
    search_recipe = space_recipe(load_space(d.space), epochs=d.epochs)
    recipe = replace(search_recipe, epochs=epochs or search_recipe.epochs, seed=search_recipe.seed + 1)
    objective = training_objective(recipe, data=cifar, val_size=DEFAULT_VAL_SIZE)  # as nas search holds out
    return objective, {"train_images": len(objective.data.train_y), "epochs": recipe.epochs, "seed": recipe.seed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument("--epochs", type=int, default=None, help="finalist epochs (default: the search's, as nas search)")
    ap.add_argument("--search-value", default="benchmarks/results/search_value/results.jsonl")
    ap.add_argument(
        "--finalist-pick",
        default="benchmarks/results/finalist_pick/results.jsonl",
        help="finalist_pick.py's results: the winners it tested are rescored too",
    )
    ap.add_argument(
        "--setup",
        default="conv-shape, 15000 images x 4 epochs, 15 min, final 15 epochs",
        help="the search_value setup whose genomes are rescored",
    )
    ap.add_argument("--out", default="benchmarks/results/finalist_fidelity")
    ap.add_argument("--summarize", action="store_true", help="print the table from <out>/results.jsonl and stop")
    args = ap.parse_args()

    out = Path(args.out)
    results = out / "results.jsonl"
    source = read_results(Path(args.search_value)) + [
        {
            "budget": r["budget"],
            "genome": r["genome"],
            "test_acc": r["test_acc"],
            "arm": "finalist_pick",
            "setup": args.setup,
        }
        for r in read_results(Path(args.finalist_pick))
        if r["kind"] == "test"
    ]
    if args.summarize:
        summarize(with_current_tests(read_results(results), source, args.setup))
        return
    out.mkdir(parents=True, exist_ok=True)
    objective, fidelity = finalist_objective(CifarSource(args.data_dir, "cpu"), args.epochs)
    for budget in parse_budgets(args.budgets):
        done = {r["genome"] for r in read_results(results) if r["budget"] == budget and r["fidelity"] == fidelity}
        for text, g in tested_genomes(source, budget, args.setup).items():
            if text in done:
                continue
            t0 = time.perf_counter()
            score = objective(parse_genome(text), None)
            row = {
                "budget": budget,
                "genome": text,
                "arms": sorted(g["arms"]),
                "search_score": g["search_score"],
                "finalist_score": score,
                "test_acc": statistics.mean(g["tests"]),
                "tests": len(g["tests"]),
                "fidelity": fidelity,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(row), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    summarize(with_current_tests(read_results(results), source, args.setup))


if __name__ == "__main__":
    main()
