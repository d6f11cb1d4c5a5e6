"""Does the search beat a person's pick? The default searcher, random search and the hand design
at equal CPU time, on real CIFAR-100, each winner then trained with the same final recipe.

Per budget, arms:
- `tpe`: `nas search` as a user runs it (the device's default space, fidelity and searcher) for
  `--minutes` of search, with each of `--seeds`;
- `random`: the same search with Optuna's random sampler, same space, time and seeds;
- `hand`: the space's hand design (its default start projected to the budget), no search.
Every search is its own study (one journal file per arm and seed under `--out`, so arms never
share results). Each arm's winner is then trained on all 50,000 training images for
`--final-epochs` with the same recipe and tested; the hand design is trained with each seed of
`--seeds` too (the recipe's seed), which gives the seed-to-seed spread of one genome. The script
prints test accuracy per arm (mean ± std over seeds) and the differences, from one run.

    python benchmarks/search_value.py --data-dir ../shared/data --budgets 10000,50000 --minutes 10 \
        --seeds 0,1 --final-epochs 15 --out benchmarks/results/search_value
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from nas.budget import parse_budgets, project
from nas.data import load_cifar100
from nas.plan import device_defaults
from nas.searchers import SearchConfig, default_start, search
from nas.spaces import load_space
from nas.study import trial_genome
from nas.training import evaluate, space_recipe, train


def mean_std(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{100 * xs[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument("--minutes", type=float, default=10.0, help="search time per arm and seed")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--final-epochs", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/search_value", help="folder for the studies and results")
    args = ap.parse_args()

    d = device_defaults("cpu")
    space = load_space(d.space)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    search_recipe = space_recipe(space, epochs=d.epochs)  # the space's measured lr, as nas search uses
    final_recipe = replace(search_recipe, epochs=args.final_epochs)
    full = load_cifar100(args.data_dir, device="cpu", val_size=0)  # final trainings: every training image
    results = out / "results.jsonl"
    print(f"space {space.name}, search fidelity {d.subset:,} images x {d.epochs} epochs, {args.minutes:g} min per "
          f"search, final {args.final_epochs} epochs on {len(full.train_y):,} images, seeds {seeds}", flush=True)

    def final_test(genome, seed: int) -> float:
        r = train(genome, full, replace(final_recipe, seed=seed), "cpu")
        return evaluate(r.model, full.test_x, full.test_y, full)

    for budget in parse_budgets(args.budgets):
        rows: dict[str, list[float]] = {"tpe": [], "random": [], "hand": []}
        hand = project(default_start(space), space, budget)
        for seed in seeds:
            test = final_test(hand, seed)
            rows["hand"].append(test)
            line = {"budget": budget, "arm": "hand", "seed": seed, "genome": str(hand), "test_acc": test}
            print(json.dumps(line), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(line) + "\n")
        for searcher in ("tpe", "random"):
            for seed in seeds:
                config = SearchConfig(searcher, trials=None, time_limit=60 * args.minutes, seed=seed,
                                      subset=d.subset, noise_seeds=False)
                r = search(space, budget, config, storage=str(out / f"b{budget}-{searcher}-s{seed}.log"),
                           data_dir=args.data_dir, recipe=search_recipe, progress=False)
                if r.best is None:
                    raise SystemExit(f"the {searcher} search at {budget:,} finished no trial in {args.minutes:g} min; "
                                     f"give it more --minutes")
                winner = trial_genome(r.best)
                test = final_test(winner, 0)  # the final recipe's own seed: only the genome differs
                rows[searcher].append(test)
                line = {"budget": budget, "arm": searcher, "seed": seed, "genome": str(winner),
                        "search_score": r.best.value, "trials": r.trials, "test_acc": test}
                print(json.dumps(line), flush=True)
                with results.open("a") as f:
                    f.write(json.dumps(line) + "\n")
        print(f"\nbudget {budget:,}: test accuracy (%), mean ± std over seeds {seeds}")
        for arm, xs in rows.items():
            print(f"  {arm:<7} {mean_std(xs)}")
        for a, b in (("tpe", "hand"), ("tpe", "random"), ("random", "hand")):
            print(f"  {a} - {b}: {100 * (statistics.mean(rows[a]) - statistics.mean(rows[b])):+.2f} points")
        sigma = statistics.stdev(rows["hand"]) if len(rows["hand"]) > 1 else float("nan")
        print(f"  seed-to-seed σ of one genome (hand design, final training): {100 * sigma:.2f} points", flush=True)


if __name__ == "__main__":
    main()
