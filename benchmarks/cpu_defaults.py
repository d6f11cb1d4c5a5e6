"""What the CPU defaults rest on, measured side by side in one run on real CIFAR-100.

1. Accuracy per CPU-second by family: each space's hand design (its default start projected to
   the budget) is trained for the same wall time (`--seconds`, converted to whole epochs over
   `--subset` images by a calibration of its own throughput) and the validation accuracy it
   reached is printed with its throughput.
2. Concurrency: two different models trained one after the other with all threads, against the
   same two trained at once on two threads of one process with one torch thread each (what
   `nas search --jobs 2` does). Printed as the ratio of wall times.

    python benchmarks/cpu_defaults.py --data-dir ../shared/data --budgets 10000,50000
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from nas.budget import parse_budgets, project
from nas.data import load_cifar100
from nas.plan import calibrate
from nas.search import default_start
from nas.spaces import load_space
from nas.training import space_recipe, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--budgets", default="10000,50000")
    ap.add_argument("--spaces", default="conv-shape,conv-res,mbconv-shape")
    ap.add_argument("--seconds", type=float, default=60.0, help="training time per family and budget")
    ap.add_argument("--subset", type=int, default=15_000)
    ap.add_argument("--parts", default="1,2", help="which measurements to run (1: accuracy per second, 2: concurrency)")
    args = ap.parse_args()

    data = load_cifar100(args.data_dir, device="cpu", subset=args.subset)
    threads = torch.get_num_threads()
    print(f"cpu, {threads} threads, {len(data.train_y):,} training images, {len(data.val_y):,} validation")
    parts = set(args.parts.split(","))
    print("\n1. accuracy per CPU-second: each hand design trained for about the same wall time")
    print(
        f"{'budget':>8}  {'space':<14} {'genome':<40} {'params':>8} {'img/s':>7} {'epochs':>6} "
        f"{'seconds':>7} {'val acc':>8}"
    )
    for budget in parse_budgets(args.budgets) if "1" in parts else []:
        for name in args.spaces.split(","):
            space = load_space(name)
            genome = project(default_start(space), space, budget)
            recipe = space_recipe(space)  # each family with its own measured recipe, as nas search trains it
            cal = calibrate(genome, recipe, "cpu", use_cache=False)
            epochs = max(1, round(args.seconds / cal.seconds(len(data.train_y), 1, len(data.val_y))))
            r = train(genome, data, replace(recipe, epochs=epochs), "cpu")
            print(
                f"{budget:>8,}  {name:<14} {str(genome):<40} {r.params:>8,} {cal.train_images_per_s:>7,.0f} "
                f"{epochs:>6} {r.wall_time_s:>7.0f} {r.val_acc:>8.2%}",
                flush=True,
            )

    print("\n2. two trials: one after the other with all threads vs both at once, one thread each")
    space = load_space(args.spaces.split(",")[0])
    recipe = space_recipe(space)
    for budget in parse_budgets(args.budgets) if "2" in parts else []:
        a = project(default_start(space), space, budget)
        b = (
            project(space.from_vector([2, 1, 1, 1, 16, 150, 150, 150]), space, budget)
            if space.growth and space.stages == 4 and "expand" not in space.genes
            else a
        )
        one = replace(recipe, epochs=2)
        t0 = time.perf_counter()
        for g in (a, b):
            train(g, data, one, "cpu")
        sequential = time.perf_counter() - t0
        torch.set_num_threads(max(1, threads // 2))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda g, r=one: train(g, data, r, "cpu"), (a, b)))
        concurrent = time.perf_counter() - t0
        torch.set_num_threads(threads)
        print(
            f"{budget:>8,}: 1 trial x {threads} threads, twice: {sequential:.0f} s; 2 trials x "
            f"{max(1, threads // 2)} thread at once: {concurrent:.0f} s; sequential / concurrent = "
            f"{sequential / concurrent:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
