"""Which genomes should a search retrain as finalists? The k best trials, the best trial of
each topology (nas.finalists.pick), or those plus the hand design (the search's first trial)?

Each rule is replayed on the studies that `search_value.py` wrote for its `hyperband` and
`k-best` arms (TPE with Hyperband pruning and finalists, `--minutes` per search): the trials are
those the search ran, and the first two rules' finalists cost the same (k retrainings), so each
rule's winner is what `nas search` would have returned with that rule. The third, `diverse +
hand`, also retrains the hand design (the search's first trial) when the diverse pick leaves it
out, one finalist more: the winner, chosen at the finalist fidelity, can then never be below the
hand design at that fidelity, as the best trial cannot at the trials'. A finalist the study
already holds is read from it; any other is retrained exactly as `nas search` retrains finalists
(benchmarks/finalist_fidelity.py, which reproduces the studies' own finalist scores). Each rule's
winner is then tested after the final training of search_value.py (every training image,
`--final-epochs`, seed 0), reusing a test accuracy search_value.py measured for the same genome
and recipe. The script prints test
accuracy per rule (mean ± std over seeds) beside search_value's random search and hand design,
and the differences in units of one genome's seed-to-seed σ, from one run. Rows are appended to
`<out>/results.jsonl` as they arrive; a rerun skips what is there; `--summarize` prints from it.

    python benchmarks/finalist_pick.py --data-dir ../shared/data --budgets 10000,50000
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import optuna
from finalist_fidelity import finalist_objective
from search_value import arm_of, difference, final_tester, mean_std, read_results, search_study

from nas.budget import parse_budgets, project
from nas.data import CifarSource
from nas.finalists import FinalistFidelity, pick, recorded
from nas.plan import device_defaults
from nas.search import SearchConfig, default_start
from nas.spaces import Genome, load_space
from nas.study import DEFAULT_VAL_SIZE, top_trials
from nas.training import space_recipe

RULES = ("best", "diverse", "diverse + hand")  # see the docstring
REPLAYED = ("hyperband", "k-best")  # search_value's arms whose studies are replayed


def finalists_of(rule: str, top: list, k: int, hand: Genome) -> list:
    """The trials of `top` (best first) that `rule` retrains."""
    chosen = pick(top, k, diverse=rule != "best")
    if rule == "diverse + hand" and all(Genome.from_json(t.user_attrs["genome"]) != hand for t in chosen):
        chosen += [t for t in top if Genome.from_json(t.user_attrs["genome"]) == hand]
    return chosen


def summarize(rows: list[dict], search_value: list[dict], setup: str) -> None:
    picks = [r for r in rows if r["kind"] == "pick"]
    for budget in sorted({r["budget"] for r in picks}):
        print(f"\nbudget {budget:,} ({setup}): test accuracy (%) of the winner, mean ± std over seeds")
        arms = {
            f"hyperband, {rule}": [
                r["test_acc"]
                for r in sorted(picks, key=lambda r: r["seed"])
                if r["budget"] == budget and r["rule"] == rule
            ]
            for rule in RULES
        }
        seeds = {r["seed"] for r in picks if r["budget"] == budget}  # the other arms at the same seeds
        for arm in ("random", "hand"):
            arms[arm] = [
                r["test_acc"]
                for r in sorted(search_value, key=lambda r: r["seed"])
                if r["budget"] == budget and r["arm"] == arm and r.get("setup") == setup and r["seed"] in seeds
            ]
        for arm, xs in arms.items():
            if xs:
                print(f"  {arm:<25} {mean_std(xs)}   ({', '.join(f'{100 * x:.2f}' for x in xs)})")
        sigma = statistics.stdev(arms["hand"]) if len(arms["hand"]) > 1 else float("nan")
        for a, b in (("hyperband, diverse", "hyperband, best"), ("hyperband, diverse + hand", "hyperband, diverse")):
            if len(arms[a]) == len(arms[b]):  # the same searches: paired by seed
                print(f"  {a} - {b}: {difference(arms[a], arms[b], sigma, paired=True)}")
        for a, b in [(f"hyperband, {rule}", other) for rule in RULES for other in ("random", "hand")]:
            if arms[a] and arms[b]:
                print(f"  {a} - {b}: {difference(arms[a], arms[b], sigma)}")
        for r in sorted((r for r in picks if r["budget"] == budget), key=lambda r: (r["seed"], r["rule"])):
            chosen = ", ".join(f"{g} {100 * s:.2f}" for g, s in r["finalists"])
            print(
                f"  seed {r['seed']} {r['rule']:<14} winner {r['winner']} ({100 * r['test_acc']:.2f}); "
                f"finalists: {chosen}"
            )
        print(f"  seed-to-seed σ of one genome (hand design, final training): {100 * sigma:.2f} points", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument(
        "--search-value",
        default="benchmarks/results/search_value",
        help="search_value.py's --out: its default-arm studies and results.jsonl",
    )
    ap.add_argument(
        "--setup",
        default="conv-shape, 15000 images x 4 epochs, 15 min, final 15 epochs",
        help="the search_value setup whose default-arm studies are replayed",
    )
    ap.add_argument("--final-epochs", type=int, default=15, help="as search_value.py's (the setup says which)")
    ap.add_argument("--out", default="benchmarks/results/finalist_pick")
    ap.add_argument("--summarize", action="store_true", help="print the tables from <out>/results.jsonl and stop")
    args = ap.parse_args()

    source = Path(args.search_value)
    searched = read_results(source / "results.jsonl")
    out = Path(args.out)
    results = out / "results.jsonl"
    if args.summarize:
        summarize(read_results(results), searched, args.setup)
        return
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = device_defaults("cpu")
    space = load_space(d.space)  # the studies' space
    cifar = CifarSource(args.data_dir, "cpu")
    objective, fidelity = finalist_objective(cifar)
    final_test = final_tester(cifar, replace(space_recipe(space, epochs=d.epochs), epochs=args.final_epochs))

    def record(row: dict) -> dict:
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    for budget in parse_budgets(args.budgets):
        rows = [r for r in read_results(results) if r["budget"] == budget]
        scores = {r["genome"]: r["score"] for r in rows if r["kind"] == "finalist"}
        scores |= {g: s for r in rows if r["kind"] == "pick" for g, s in r["finalists"]}  # incl. the studies' own
        # the searcher arms' final training is seed 0, this script's too
        tests = {
            r["genome"]: r["test_acc"]
            for r in searched
            if r["budget"] == budget and r.get("setup") == args.setup and r["arm"] != "hand"
        }
        tests |= {r["genome"]: r["test_acc"] for r in rows if r["kind"] == "test"}
        picked = {(r["seed"], r["rule"]) for r in rows if r["kind"] == "pick"}
        for run in sorted(
            (r for r in searched if r["budget"] == budget and arm_of(r) in REPLAYED and r.get("setup") == args.setup),
            key=lambda r: r["seed"],
        ):
            study = search_study(source / run.get("study_file", f"b{budget}-default-s{run['seed']}.log"))
            top = top_trials(study, budget, n=len(study.trials))
            held = {
                f.genome_str: f.score
                for f in recorded(
                    study.user_attrs,
                    FinalistFidelity(val_size=DEFAULT_VAL_SIZE, epochs=fidelity["epochs"], seed=fidelity["seed"]),
                )
            }
            hand = project(default_start(space), space, budget, SearchConfig().tol)
            for rule in RULES:
                if (run["seed"], rule) in picked:
                    continue
                finalists = []  # (genome, finalist score, trial score)
                for t in finalists_of(rule, top, d.finalists, hand):
                    genome = Genome.from_json(t.user_attrs["genome"])
                    text = str(genome)
                    if text not in held and text not in scores:
                        scores[text] = record(
                            {
                                "kind": "finalist",
                                "budget": budget,
                                "genome": text,
                                "score": objective(genome, None),
                                "fidelity": fidelity,
                            }
                        )["score"]
                    finalists.append((genome, held.get(text, scores.get(text)), t.value))
                winner = str(max(finalists, key=lambda f: (f[1], f[2]))[0])
                if winner not in tests:
                    genome = next(g for g, _, _ in finalists if str(g) == winner)
                    tests[winner] = record(
                        {"kind": "test", "budget": budget, "genome": winner, "test_acc": final_test(genome, 0)}
                    )["test_acc"]
                record(
                    {
                        "kind": "pick",
                        "budget": budget,
                        "seed": run["seed"],
                        "rule": rule,
                        "winner": winner,
                        "finalists": [[str(g), s] for g, s, _ in finalists],
                        "test_acc": tests[winner],
                    }
                )
    summarize(read_results(results), searched, args.setup)


if __name__ == "__main__":
    main()
