"""fdpg, tpe and random search at equal trial counts on a cheap stand-in objective (no training).

The stand-in is a smooth concave function of the log-coordinates of a real space with a known
optimum inside the budget band: score(q) = 0.5 - sum_i w_i (log q_i - log t_i)^2 + noise, where
t is a genome projected onto the band (widths growing with depth, as the brief's ReXNet notes
found best) and w weighs widths more than depth, expansion and kernel. The noise (sd 0.005, like
seed-to-seed accuracy noise of short trainings) is what the searchers see; the table reports the
noise-free score of the genome each searcher ranked best, so luck in the noise does not count.

    python benchmarks/searchers_standin.py [--budget 50000] [--trials 40] [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.budget import project  # noqa: E402
from nas.search import SearchConfig, search  # noqa: E402
from nas.spaces import Genome, load_space  # noqa: E402

WEIGHTS = {"stem": 0.05, "width": 0.05, "depth": 0.03, "expand": 0.02, "kernel": 0.01}
TARGET = {"stem": 24, "depth": [1, 2, 2, 1], "width": [24, 40, 64, 96], "expand": [3, 4, 4, 6], "kernel": [3, 3, 5, 5]}


class StandIn:
    def __init__(self, space, budget: int, noise: float, seed: int):
        self.space = space
        self.target_genome = project(space.genome(TARGET), space, budget)
        self.target = np.log(np.array(space.vector(self.target_genome), dtype=float))
        self.w = np.array([WEIGHTS[name] for name, _ in space.coords])
        self.noise, self.rng = noise, np.random.default_rng(seed)

    def exact(self, genome: Genome) -> float:
        u = np.log(np.array(self.space.vector(genome), dtype=float))
        return float(0.5 - np.sum(self.w * (u - self.target) ** 2))

    def __call__(self, genome: Genome, trial) -> float:
        return self.exact(genome) + float(self.rng.normal(0, self.noise))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbconv")
    ap.add_argument("--budget", type=int, default=50_000)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--noise", type=float, default=0.005)
    ap.add_argument("--searchers", default="fdpg,tpe,random")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    searchers = args.searchers.split(",")
    probe = StandIn(space, args.budget, args.noise, 0)
    print(
        f"space {space.name}, budget {args.budget:,}, {args.trials} trials, noise sd {args.noise}, "
        f"{args.seeds} seeds; optimum {probe.exact(probe.target_genome):.4f} at {probe.target_genome}"
    )
    results: dict[str, list[float]] = {s: [] for s in searchers}
    times: dict[str, float] = {s: 0.0 for s in searchers}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name in searchers:
                objective = StandIn(space, args.budget, args.noise, seed)
                t0 = time.perf_counter()
                r = search(
                    space,
                    args.budget,
                    SearchConfig(name, trials=args.trials, seed=seed, pruner="none"),
                    storage=f"sqlite:///{tmp}/{name}-{seed}.db",
                    objective=objective,
                    progress=False,
                )
                times[name] += time.perf_counter() - t0
                best = Genome.from_json(r.best.user_attrs["genome"])
                results[name].append(objective.exact(best))
                print(
                    f"  seed {seed} {name:<6} best {results[name][-1]:.4f}  {best}  ({r.trials} trials, {r.stopped})",
                    flush=True,
                )
    print(
        f"\n{'searcher':<8} {'mean best':>9} {'min':>7} {'max':>7}  "
        "per-seed (noise-free score of the best-ranked genome)"
    )
    for name in searchers:
        v = np.array(results[name])
        print(
            f"{name:<8} {v.mean():>9.4f} {v.min():>7.4f} {v.max():>7.4f}  "
            + " ".join(f"{x:.4f}" for x in v)
            + f"   ({times[name] / args.seeds:.0f} s per search)"
        )


if __name__ == "__main__":
    main()
