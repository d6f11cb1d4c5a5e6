"""Training throughput on a GPU: images/s of each space's hand design at each budget, with the
space's default recipe (bf16 autocast, channels_last, its [recipe] additions), with and without
torch.compile. The first epoch (compilation, kernel choice) is not counted: each model trains
three epochs on every training image and img/s is measured over epochs 2-3.

    python benchmarks/gpu_throughput.py --data-dir /tmp/data --spaces conv-shape,mbconv-shape \
        --budgets 10k,50k,500k --compile no,yes
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nas.budget import parse_budgets, project
from nas.data import load_cifar100
from nas.spaces import load_space
from nas.training import default_device, describe_device, space_recipe, train


def images_per_s(genome, data, recipe, device) -> float:
    stamps: list[float] = []
    result = train(genome, data, recipe, device, callback=lambda epoch, _: stamps.append(time.perf_counter()))
    if not result.ok:
        raise RuntimeError(result.failure)
    return 2 * len(data.train_y) / (stamps[2] - stamps[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--spaces", default="conv-shape,mbconv-shape")
    p.add_argument("--budgets", default="10k,50k,500k")
    p.add_argument("--compile", default="no,yes", help="which of no,yes to measure")
    p.add_argument("--recipe", default="{}", help="JSON of recipe fields over the space's, e.g. '{\"ema\": 0.99}'")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    device = default_device()
    data = load_cifar100(args.data_dir, device=device, val_size=0)
    print(
        f"device {describe_device(device)}, torch {torch.__version__}, {len(data.train_y):,} images per epoch",
        flush=True,
    )
    rows = []
    for name in args.spaces.split(","):
        space = load_space(name)
        hand = space.family.default_start(space)
        for budget in parse_budgets(args.budgets):
            genome = project(hand, space, budget)
            for compiled in args.compile.split(","):
                recipe = space_recipe(space, **{**json.loads(args.recipe), "epochs": 3, "compile": compiled == "yes"})
                rate = images_per_s(genome, data, recipe, device)
                rows.append(
                    {
                        "space": name,
                        "budget": budget,
                        "genome": str(genome),
                        "compile": compiled == "yes",
                        "recipe_tag": recipe.tag,
                        "ema": recipe.ema,
                        "tta": recipe.tta,
                        "alt_flip": recipe.alt_flip,
                        "img_per_s": round(rate),
                    }
                )
                print(f"{name:13s} {budget:>9,}  compile {compiled:3s}  {rate:9.0f} img/s  {genome}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
