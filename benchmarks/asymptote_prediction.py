"""How well does the learning-curve asymptote after E/3 epochs predict the accuracy after E epochs?

Trains several small genomes (about 5k-20k parameters) for E epochs each with the default
recipe, fits acc(t) = alpha - exp(-beta (t - t0)) to the first E/3 epochs of each validation
curve, and compares two early scores against the final validation accuracy: the fitted
asymptote alpha, and the raw accuracy at epoch E/3. Prints per-genome rows, mean absolute
errors, mean signed errors and Spearman rank correlations, and writes them as JSON (--out).

    python benchmarks/asymptote_prediction.py --data-dir /path/holding/cifar-100-python --epochs 12
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy.stats import spearmanr

from nas.counting import count_params
from nas.curves import fit_asymptote
from nas.data import load_cifar100
from nas.spaces import Genome
from nas.training import Recipe, default_device, train


def _conv(depth, width, **options) -> Genome:
    return Genome.from_dict({"family": "conv", "genes": {"depth": depth, "width": width}, "options": options})


def _mbconv(stem, width, expand, **options) -> Genome:
    genes = {
        "stem": stem,
        "depth": [1] * len(width),
        "width": width,
        "expand": [expand] * len(width),
        "kernel": [3] * len(width),
    }
    return Genome.from_dict(
        {
            "family": "mbconv",
            "genes": genes,
            "options": {"activation": "silu", "bias": False, "stem_kernel": 3, **options},
        }
    )


GENOMES = [
    _conv([1, 1, 1, 1], [4, 8, 16, 16]),
    _conv([1, 1, 1, 1], [8, 8, 16, 24]),
    _conv([1, 1, 1, 1], [8, 16, 24, 32]),
    _conv([1, 2, 2, 1], [8, 16, 16, 16], residual=True, activation="silu", bias=False),
    _mbconv(8, [8, 8, 16, 32], 2),
    _mbconv(8, [8, 16, 24, 48], 2),
]


def summarize(rows: list[dict], epochs: int) -> dict:
    """Errors and rank correlations of the early scores against the final accuracy, for fits on
    the first E/3 epochs (the question asked) and, for context, on the first E/2 and 2E/3."""
    final = np.array([r["curve"][-1] for r in rows])
    summary = {}
    for k in sorted({epochs // 3, epochs // 2, 2 * epochs // 3}):
        fits = [fit_asymptote(range(1, k + 1), r["curve"][:k]) for r in rows]
        for name, pred in ((f"alpha@{k}", [f.alpha for f in fits]), (f"raw@{k}", [r["curve"][k - 1] for r in rows])):
            pred = np.array(pred)
            summary[name] = {
                "mae": float(np.mean(np.abs(pred - final))),
                "mean_signed_error": float(np.mean(pred - final)),
                "spearman": float(spearmanr(pred, final).statistic),
                **({"fits_converged": sum(f.converged for f in fits)} if name.startswith("alpha") else {}),
            }
            s = summary[name]
            print(
                f"{name:>9} vs final@{epochs}: mean abs error {s['mae']:.4f}, mean signed error "
                f"{s['mean_signed_error']:+.4f}, Spearman {s['spearman']:+.3f}"
                + (f", fits converged {s['fits_converged']}/{len(rows)}" if "fits_converged" in s else "")
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=12, help="E (E/3 must be at least 4 for a fit)")
    p.add_argument("--subset", type=int, default=10000, help="training images used (the val split stays 5000)")
    p.add_argument("--out", default="asymptote_prediction.json")
    p.add_argument("--from-json", help="re-summarise the curves saved by an earlier run instead of training")
    args = p.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        summarize(saved["rows"], saved["epochs"])
        return 0
    device = default_device()
    data = load_cifar100(args.data_dir, device=device, subset=args.subset)
    recipe = Recipe(epochs=args.epochs)
    k = args.epochs // 3
    print(
        f"E={args.epochs}, fit on the first {k} epochs; {len(data.train_y)} training / {len(data.val_y)} "
        f"validation images; recipe {recipe.tag}; device {device}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: list[dict] = []
    start = time.perf_counter()

    def save(rows: list[dict], summary: dict | None) -> None:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "epochs": args.epochs,
                    "k": k,
                    "subset": args.subset,
                    "recipe": recipe.to_dict(),
                    "rows": rows,
                    "summary": summary,
                },
                f,
                indent=2,
            )

    for genome in GENOMES:
        r = train(genome, data, recipe, device)
        accs = [c["val_acc"] for c in r.curve]
        a = fit_asymptote(range(1, k + 1), accs[:k])
        rows.append(
            {
                "genome": str(genome),
                "params": count_params(genome),
                "curve": accs,
                "alpha": a.alpha,
                "alpha_std": a.alpha_std,
                "method": a.method,
                "reason": a.reason,
                "wall_time_s": r.wall_time_s,
            }
        )
        print(
            f"{rows[-1]['genome']:<48} {rows[-1]['params']:>6} params  final {accs[-1]:.4f}  "
            f"raw@{k} {accs[k - 1]:.4f}  alpha@{k} {a.alpha:.4f} +- {a.alpha_std:.4f} ({a.method} {a.reason})  "
            f"{r.wall_time_s:.0f}s",
            flush=True,
        )
        save(rows, None)  # after every genome: a long run that dies keeps what it measured
    save(rows, summarize(rows, args.epochs))
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
