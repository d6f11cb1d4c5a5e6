"""The curve as a static picture (SVG, matplotlib) and as the README's table, both from a sweep's
summary (`nas.summary.write_summary_json`'s document), so a reader sees it without a browser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nas import reference
from nas.errors import NasError
from nas.files import write_text_atomic

README_START, README_END = "<!-- curve:start -->", "<!-- curve:end -->"
BASELINE_STYLE = {
    "hand": ("hand design", "#1f77b4", "s"),
    "resnet": ("ResNet shape", "#2ca02c", "^"),
    "seed": ("reference study's model", "#7f7f7f", "D"),
}


def write_curve_image(doc: dict[str, Any], out: str | Path) -> Path:
    """Winners' test accuracy against parameters (log axis), the baselines, the previous run's
    winners (doc["previous"]) and the published points beside them, as an SVG file."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to a file
    import matplotlib.pyplot as plt

    rows = [r for r in doc["budgets"] if r["winner"].get("test_acc") is not None]
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=100)
    _plot_previous(ax, doc.get("previous") or [])
    _plot_baselines(ax, rows)
    ax.plot(
        [r["winner"]["params"] for r in rows],
        [100 * r["winner"]["test_acc"] for r in rows],
        "o-",
        color="#d62728",
        linewidth=2,
        label="search winners (this run)",
        zorder=4,
    )
    _plot_published(ax)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("CIFAR-100 test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    epochs = sorted({r["final_epochs"] for r in rows})
    ax.set_title(
        f"Best CNN under a parameter budget (winners trained {', '.join(map(str, epochs))} epochs)", fontsize=11
    )
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out.with_name(f".{out.name}.tmp"), format="svg", metadata={"Date": None})
    plt.close(fig)
    out.with_name(f".{out.name}.tmp").replace(out)
    return out


def _plot_previous(ax, previous: list[dict[str, Any]]) -> None:
    """An earlier run's winners, dashed, so a reader sees what changed."""
    if previous:
        prev = sorted(previous, key=lambda r: r["params"])
        ax.plot(
            [r["params"] for r in prev],
            [100 * r["test_acc"] for r in prev],
            "o--",
            color="#ff9896",
            label="previous run's winners",
            zorder=2,
        )


def _plot_baselines(ax, rows: list[dict[str, Any]]) -> None:
    """Each kind of baseline trained beside the winners, one marker per kind."""
    for kind, (label, color, marker) in BASELINE_STYLE.items():
        pts = [
            (b["params"], b["test_acc"])
            for r in rows
            if (b := r["baselines"].get(kind)) and b.get("test_acc") is not None and b.get("params")
        ]
        if pts:
            ax.scatter(*zip(*[(p, 100 * a) for p, a in pts]), marker=marker, color=color, label=label, zorder=3)


def _plot_published(ax) -> None:
    """The reference study's curve and the public points (nas.reference), for scale."""
    ref = reference.REFERENCE_STUDY
    ax.plot(
        [p.params for p in ref],
        [100 * p.test_acc for p in ref],
        "x:",
        color="#555555",
        label="reference study (200 ep Adam)",
        zorder=1,
    )
    public = reference.PUBLIC_POINTS
    ax.scatter(
        [p.params for p in public],
        [100 * p.test_acc for p in public],
        marker="+",
        color="#9467bd",
        label="public points (200+ GPU epochs)",
        zorder=1,
    )


def update_readme(readme: str | Path, image: str | Path, table: str) -> Path:
    """Replace what lies between README_START and README_END in `readme` with the picture (its
    path relative to the README) and the Markdown table of the curve."""
    path = Path(readme)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise NasError(f"{path} has no '{README_START}' ... '{README_END}' markers for the curve")
    rel = Path(image).resolve().relative_to(path.resolve().parent)
    block = f"{README_START}\n![accuracy vs parameters]({rel.as_posix()})\n\n{table.rstrip()}\n{README_END}"
    text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    return write_text_atomic(path, text, "README")
