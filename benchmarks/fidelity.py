"""Does the search fidelity rank genomes the way the final training does?

For each budget, `--genomes` distinct genomes are taken from a search study of that budget (the
best half by search score, the rest spread evenly over the other completed trials, so both the
top of the ranking and its full range are tested). Each is trained at every fidelity of
`--fidelities` (training images x epochs, scored on the 5,000 held-out validation images, as
`nas search` scores a trial), then trained on all 50,000 training images for `--final-epochs`
and tested once. The script prints, per budget and fidelity, Spearman's rank correlation between
the fidelity's score and the test accuracy, with the time a trial at that fidelity took, from
one run. Each genome's numbers are appended to `<out>/results.jsonl` as they arrive, and
`--summarize` prints the table from that file alone, so an interrupted run keeps what it did.

    python benchmarks/fidelity.py --data-dir ../shared/data --storage studies/cifar100-cpu-2026-11.log \
        --budgets 10000,50000 --genomes 8 --fidelities 15000x4,45000x2,15000x8 --final-epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import optuna
from scipy.stats import spearmanr

from nas.budget import parse_budgets
from nas.data import CifarSource
from nas.plan import device_defaults
from nas.spaces import Genome, load_space
from nas.storage import open_storage
from nas.study import in_budget, trial_genome
from nas.training import evaluate, space_recipe, train


def study_genomes(storage: str, space: str, budget: int, n: int) -> list[tuple[Genome, float]]:
    """`n` distinct completed genomes of the study of (`space`, `budget`) with their search scores:
    the best n//2, then n - n//2 spread evenly over the rest by rank."""
    st = open_storage(storage, create=False)
    names = [
        s.study_name
        for s in optuna.get_all_study_summaries(st)
        if s.user_attrs.get("space") == space and s.user_attrs.get("budget") == budget
    ]
    if not names:
        raise SystemExit(f"no study of space {space} at budget {budget:,} in {storage}: run the search first")
    seen: dict[str, tuple[Genome, float]] = {}
    for t in optuna.load_study(study_name=names[0], storage=st).get_trials(deepcopy=False):
        g = trial_genome(t)
        if t.state == optuna.trial.TrialState.COMPLETE and g is not None and in_budget(t, budget):
            seen.setdefault(g.key(), (g, t.value))
    ranked = sorted(seen.values(), key=lambda x: -x[1])
    if len(ranked) < n:
        raise SystemExit(f"the study {names[0]} has {len(ranked)} distinct completed genomes, fewer than {n}")
    top, rest = ranked[: n // 2], ranked[n // 2 :]
    k = n - len(top)
    return top + [rest[round(i * (len(rest) - 1) / max(1, k - 1))] for i in range(k)]


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarize(rows: list[dict]) -> None:
    for budget in sorted({r["budget"] for r in rows}):
        got = [r for r in rows if r["budget"] == budget]
        print(f"\nbudget {budget:,}: {len(got)} genomes, final {got[0]['final_epochs']} epochs on 50,000 images")
        print(
            f"  {'genome':<44} {'study score':>11} " + " ".join(f"{f:>12}" for f in got[0]["scores"]) + f" {'test':>7}"
        )
        for r in sorted(got, key=lambda r: -r["test_acc"]):
            print(
                f"  {r['genome']:<44} {100 * r['study_score']:>10.2f}% "
                + " ".join(f"{100 * v:>11.2f}%" for v in r["scores"].values())
                + f" {100 * r['test_acc']:>6.2f}%"
            )
        if len(got) < 3:
            continue
        test = [r["test_acc"] for r in got]
        print(
            "  Spearman with test accuracy (p-value), training images x epochs per trial, seconds per trial "
            "(wall clock: other work on the machine inflates it)"
        )
        rho = spearmanr([r["study_score"] for r in got], test)
        print(f"    {'study score (the search itself)':<34} {rho.statistic:+.2f} ({rho.pvalue:.3f})")
        for f in got[0]["scores"]:
            rho = spearmanr([r["scores"][f] for r in got], test)
            secs = sum(r["seconds"][f] for r in got) / len(got)
            images, epochs = (int(x) for x in f.split("x"))
            print(f"    {f:<34} {rho.statistic:+.2f} ({rho.pvalue:.3f})  {images * epochs:>9,}  {secs:6.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument(
        "--storage", default="studies/cifar100-cpu-2026-11.log", help="storage holding the searches' studies"
    )
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument("--genomes", type=int, default=8)
    ap.add_argument("--fidelities", default="15000x4,45000x2,15000x8", help="IMAGESxEPOCHS,...")
    ap.add_argument("--final-epochs", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/fidelity")
    ap.add_argument("--summarize", action="store_true", help="print the table from <out>/results.jsonl and stop")
    args = ap.parse_args()

    out = Path(args.out)
    results = out / "results.jsonl"
    if args.summarize:
        summarize(read_results(results))
        return
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(device_defaults("cpu").space)
    recipe = space_recipe(space)
    fidelities = [tuple(int(x) for x in f.split("x")) for f in args.fidelities.split(",")]
    cifar = CifarSource(args.data_dir, "cpu")  # read from disk once, every split derived from it
    full = cifar.split(val_size=0)
    splits = {images: cifar.split(subset=images if images < 45000 else None) for images, _ in fidelities}
    for budget in parse_budgets(args.budgets):
        done = {r["genome"] for r in read_results(results) if r["budget"] == budget}
        for genome, study_score in study_genomes(args.storage, space.name, budget, args.genomes):
            if str(genome) in done:
                continue
            scores, seconds = {}, {}
            for images, epochs in fidelities:
                t0 = time.perf_counter()
                r = train(genome, splits[images], replace(recipe, epochs=epochs), "cpu")
                scores[f"{images}x{epochs}"], seconds[f"{images}x{epochs}"] = r.val_acc, time.perf_counter() - t0
            final = train(genome, full, replace(recipe, epochs=args.final_epochs), "cpu")
            row = {
                "budget": budget,
                "genome": str(genome),
                "study_score": study_score,
                "scores": scores,
                "seconds": seconds,
                "final_epochs": args.final_epochs,
                "test_acc": evaluate(final.model, full.test_x, full.test_y, full),
            }
            print(json.dumps(row), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    summarize(read_results(results))


if __name__ == "__main__":
    main()
