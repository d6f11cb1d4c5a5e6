"""Recipe ablation: each training addition on and off at equal wall-clock time, on real CIFAR-100.

For a space's hand design (--space, default conv-shape; or its --preset) projected to each
budget, every arm trains on all 50,000 training images and is tested on the 10,000 test images
in float32, the arithmetic of the exported ONNX model (bf16 is for training only). The arms:

  base        the space's [recipe] with every addition off (conv-shape: lr 0.8, crop + flip; the
              recipe before this benchmark)
  alt_flip    alternating flip instead of a random one
  bn_lr       BatchNorm parameters and biases at --bn-lr times the learning rate
  whiten      first conv initialised by whitening 3x3 patches
  cutout      --cutout px squares cut out
  combo       --combo's fields together
  NAME        --arm NAME=JSON: any recipe fields over base (repeatable)
  default     the additions the conv spaces' [recipe] took from this benchmark: bn_lr 4 + whiten
              (with flip TTA: the "last/flip" column); whitening where the family's first layer
              is a plain conv reading the image (every family's stem here)

Equal wall-clock time: before training, each arm's step time is measured against base's in this
process (alternating short runs), and an arm that is slower per step trains proportionally fewer
epochs (round(E * t_base / t_arm)); a slower addition pays for its cost. Evaluation-only
additions need no training of their own: every arm trains with an EMA of its weights, so each run
is tested four ways: last weights or EMA weights (`+ema`), each with and without flip TTA
(`+tta`). The EMA's own cost per step is measured and printed (it would cut the epochs of
every arm by the same factor). One JSON line per run goes to --out; --summarize prints the
table (mean and std over seeds per budget and arm, gain over base).

    python benchmarks/recipe_ablation.py --data-dir ../shared/data --preset hand-16-32-48-64 \
        --budgets 10k,50k --seeds 0 --out benchmarks/results/recipe_ablation.jsonl
    python benchmarks/recipe_ablation.py --summarize --out benchmarks/results/recipe_ablation.jsonl
    python benchmarks/recipe_ablation.py --data-dir ../shared/data --space resnet --budgets 50k \
        --arms base,default --seeds 0 --out benchmarks/results/recipe_ablation/resnet-s0.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from nas.budget import parse_budgets, project
from nas.data import load_cifar100
from nas.families import build_model
from nas.search import default_start
from nas.spaces import load_space
from nas.training import Recipe, evaluate, predictor, space_recipe, train

# What the arms add, off: a space's [recipe] without them is the base (for conv-shape, its
# [recipe] before this benchmark). TTA is not trained: every run is tested with and without it.
ADDITIONS_OFF = {"bn_lr": 1.0, "whiten": False, "alt_flip": False, "cutout": 0, "tta": "none"}
DEFAULT_EPOCHS = {10_000: 15, 50_000: 10, 500_000: 4}


def arms(args: argparse.Namespace) -> dict[str, dict]:
    return {
        "base": {},
        "alt_flip": {"alt_flip": True},
        "bn_lr": {"bn_lr": args.bn_lr},
        "whiten": {"whiten": True},
        "cutout": {"cutout": args.cutout},
        "combo": json.loads(args.combo),
        "default": {"bn_lr": 4.0, "whiten": True},  # the conv spaces' [recipe] since this benchmark
        **dict(_named_arm(a) for a in args.arm),
    }


def _named_arm(text: str) -> tuple[str, dict]:
    """--arm NAME=JSON: an arm of the given recipe fields over base, e.g. 'noreg={"weight_decay": 5e-5}'."""
    name, _, fields = text.partition("=")
    return name.strip(), json.loads(fields)


def step_seconds(genome, data, recipe: Recipe, steps: int = 24) -> float:
    """Seconds per training step of `recipe` on `steps` batches (after a warm-up run)."""
    n = steps * recipe.batch_size
    sub = dataclasses.replace(
        data, train_x=data.train_x[:n], train_y=data.train_y[:n], val_x=data.val_x[:0], val_y=data.val_y[:0]
    )
    r = train(genome, sub, dataclasses.replace(recipe, epochs=1))
    return r.train_time_s / steps


def relative_step_times(genome, data, recipes: dict[str, Recipe], rounds: int = 3) -> dict[str, float]:
    """Each recipe's step time over base's, medians of alternating measurements."""
    for r in recipes.values():  # warm-up
        step_seconds(genome, data, r, steps=4)
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for name, r in recipes.items():
            times[name].append(step_seconds(genome, data, r))
    base = statistics.median(times["base"])
    return {name: statistics.median(t) / base for name, t in times.items()}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    base = {**space_recipe(space).to_dict(), **ADDITIONS_OFF}
    hand = space.presets[args.preset] if args.preset else default_start(space)
    data = load_cifar100(args.data_dir, val_size=0)
    out = Path(args.out)
    done = set()
    if out.is_file():
        rows = map(json.loads, out.read_text().splitlines())
        done = {(r.get("space", "conv-shape"), r["budget"], r["arm"], r["seed"]) for r in rows}
    wanted = [a for a in args.arms.split(",")]
    for budget in parse_budgets(args.budgets):
        genome = project(hand, space, budget)
        epochs = args.epochs or DEFAULT_EPOCHS.get(budget, 10)
        recipes = {
            name: Recipe.from_dict({**base, **fields, "ema": args.ema})
            for name, fields in arms(args).items()
            if name in wanted or name == "base"
        }
        ratio = relative_step_times(genome, data, recipes)
        no_ema = relative_step_times(
            genome, data, {"base": dataclasses.replace(recipes["base"], ema=0.0), "ema": recipes["base"]}
        )["ema"]
        print(
            f"{genome}: step time over base "
            + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items())
            + f"; the EMA costs {no_ema:.3f}x per step",
            flush=True,
        )
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in wanted:
                if (args.space, budget, name, seed) in done:
                    continue
                arm_epochs = max(1, round(epochs / max(1.0, ratio[name]))) if name != "base" else epochs
                recipe = dataclasses.replace(recipes[name], epochs=arm_epochs, seed=seed)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = build_model(genome)
                t0 = time.perf_counter()
                result = train(model, data, recipe)
                row = {
                    "space": args.space,
                    "budget": budget,
                    "genome": str(genome),
                    "arm": name,
                    "seed": seed,
                    "epochs": arm_epochs,
                    "step_time_ratio": round(ratio[name], 4),
                    "ema_step_cost": round(no_ema, 4),
                    "recipe": recipe.to_dict(),
                    "status": result.status,
                    "failure": result.failure,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "test": {},
                }
                if result.ok:
                    for which, m in (("last", model), ("ema", result.model)):
                        for tta in ("none", "flip"):
                            acc = evaluate(predictor(m, tta), data.test_x, data.test_y, data, bf16=False)
                            row["test"][f"{which}/{tta}"] = round(acc, 5)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"  {budget:>7,} {name:9s} seed {seed} {arm_epochs:2d} epochs {row['wall_s']:6.0f} s: "
                    + " ".join(f"{k} {100 * v:.2f}" for k, v in row["test"].items()),
                    flush=True,
                )


def summarize(args: argparse.Namespace) -> None:
    out = Path(args.out)
    files = sorted(out.glob("*.jsonl")) if out.is_dir() else [out]  # a folder: one file per process
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    for r in rows:
        r.setdefault("space", "conv-shape")  # rows from before --space
    by: dict[tuple[str, int, str, str], list[float]] = defaultdict(list)
    for r in rows:
        for k, v in r["test"].items():
            by[(r["space"], r["budget"], r["arm"], k)].append(100 * v)
    for space, budget in sorted({(r["space"], r["budget"]) for r in rows}):
        mine = [r for r in rows if (r["space"], r["budget"]) == (space, budget)]
        epochs = {r["arm"]: r["epochs"] for r in mine}
        base = statistics.mean(by[(space, budget, "base", "last/none")])
        print(
            f"\nbudget {budget:,} ({mine[0]['genome']}): test accuracy %, "
            f"mean ± std over seeds (gain over base, last weights, no TTA)"
        )
        print(
            f"  {'arm':10s} {'epochs':>6s}  "
            + "  ".join(f"{k:>22s}" for k in ("last/none", "last/flip", "ema/none", "ema/flip"))
        )
        for arm in dict.fromkeys(r["arm"] for r in mine):
            cells = []
            for k in ("last/none", "last/flip", "ema/none", "ema/flip"):
                v = by[(space, budget, arm, k)]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):6.2f} ± {sd:4.2f} ({statistics.mean(v) - base:+5.2f})")
            print(
                f"  {arm:10s} {epochs[arm]:6d}  "
                + "  ".join(f"{c:>22s}" for c in cells)
                + f"   n={len(by[(space, budget, arm, 'last/none')])}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--space", default="conv-shape", help="the space whose hand design and [recipe] are measured")
    p.add_argument("--preset", help="the space's preset to project instead of its hand design (the search's start)")
    p.add_argument("--budgets", default="10k,50k,500k")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--arms", default="base,alt_flip,bn_lr,whiten,cutout,combo")
    p.add_argument("--epochs", type=int, help="base's epochs (default: 15 at 10k, 10 at 50k, 4 at 500k)")
    p.add_argument("--ema", type=float, default=0.99, help="EMA decay per step every arm trains with")
    p.add_argument("--bn-lr", type=float, default=4.0)
    p.add_argument("--cutout", type=int, default=8)
    p.add_argument("--combo", default='{"alt_flip": true, "whiten": true}')
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='one more arm: recipe fields over base, e.g. \'noreg={"bn_lr": 4, "label_smoothing": 0}\' (repeatable)',
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/recipe_ablation.jsonl")
    p.add_argument("--summarize", action="store_true")
    args = p.parse_args(argv)
    summarize(args) if args.summarize else run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
