"""Learning rate x weight decay for a family's hand design at several budgets, on real CIFAR-100.

The recipe's defaults (nas.training.Recipe) come from this table: each cell trains the space's
default start projected to the budget, on the 45k training split, and prints the validation
accuracy (the test set is not touched). One process, one run after another, so every cell sees
the same machine.

    python benchmarks/recipe_tuning.py --data-dir ../shared/data --space conv --budgets 10000,50000 \
        --lrs 0.1,0.2,0.4,0.8 --wds 5e-4,5e-5 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from nas.budget import parse_budgets, project
from nas.data import load_cifar100
from nas.search import default_start
from nas.spaces import load_space
from nas.training import Recipe, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--space", default="conv")
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument("--lrs", default="0.1,0.2,0.4,0.8")
    ap.add_argument("--wds", default="5e-4,5e-5")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--subset", type=int)
    ap.add_argument("--json", help="append one JSON line per cell to this file")
    args = ap.parse_args()

    space = load_space(args.space)
    data = load_cifar100(args.data_dir, device="cpu", subset=args.subset)
    lrs = [float(x) for x in args.lrs.split(",")]
    wds = [float(x) for x in args.wds.split(",")]
    base = Recipe(epochs=args.epochs)
    for budget in parse_budgets(args.budgets):
        genome = project(default_start(space), space, budget)
        print(f"\n{args.space} budget {budget:,}: {genome}, {len(data.train_y):,} images x {args.epochs} epochs")
        print("lr \\ wd  " + "  ".join(f"{wd:>8g}" for wd in wds))
        for lr in lrs:
            cells = []
            for wd in wds:
                t0 = time.perf_counter()
                r = train(genome, data, replace(base, lr=lr, weight_decay=wd), "cpu")
                cells.append(f"{r.val_acc:8.2%}")
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(
                            json.dumps(
                                {
                                    "space": args.space,
                                    "budget": budget,
                                    "genome": str(genome),
                                    "params": r.params,
                                    "lr": lr,
                                    "weight_decay": wd,
                                    "epochs": args.epochs,
                                    "val_acc": r.val_acc,
                                    "status": r.status,
                                    "seconds": time.perf_counter() - t0,
                                }
                            )
                            + "\n"
                        )
            print(f"{lr:<8g} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
