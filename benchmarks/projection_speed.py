"""Budget projection speed: time per `project()` call, against the 5 ms target.

Each call projects a fresh random genome (the count cache is cleared first, so nothing is
reused between calls) to a budget drawn log-uniformly from 1e3..1e7. Side by side, the
same counts taken the naive way (build the module, sum numel) show what analytic counting saves.

    python benchmarks/projection_speed.py [--calls 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from nas.budget import project
from nas.counting import _count_key, count_params
from nas.families import build_model
from nas.spaces import load_space

TARGET_MS = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(0)
    print(
        f"{'space':<14}{'median ms':>10}{'p99 ms':>9}{'max ms':>9}{'target/median':>15}"
        f"{'count µs':>10}{'build+numel µs':>16}{'speedup':>9}"
    )
    for name in ("conv", "mbconv", "conv-res", "mbconv-linear"):
        sp = load_space(name)
        times, analytic, naive = [], [], []
        for i in range(args.calls):
            g = sp.from_vector([rng.choice(sp.genes[n].values()) for n, _ in sp.coords])
            budget = int(10 ** rng.uniform(3.1, 7))
            _count_key.cache_clear()
            t = time.perf_counter()
            p = project(g, sp, budget)
            times.append((time.perf_counter() - t) * 1e3)
            if i < 30:  # the naive count builds real modules: sample a few
                _count_key.cache_clear()
                t = time.perf_counter()
                n = count_params(p)
                analytic.append((time.perf_counter() - t) * 1e6)
                t = time.perf_counter()
                assert n == sum(q.numel() for q in build_model(p).parameters())
                naive.append((time.perf_counter() - t) * 1e6)
        times.sort()
        med = statistics.median(times)
        a, b = statistics.median(analytic), statistics.median(naive)
        print(
            f"{name:<14}{med:>10.2f}{times[int(0.99 * len(times))]:>9.2f}{times[-1]:>9.2f}"
            f"{TARGET_MS / med:>14.1f}x{a:>10.0f}{b:>16.0f}{b / a:>8.0f}x"
        )


if __name__ == "__main__":
    main()
