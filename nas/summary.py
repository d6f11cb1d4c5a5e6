"""The curve as data: per budget the winner, its final training and its baselines
(`reports/<name>.json`), the same as a Markdown table beside it, and the exported models copied
next to them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nas import reference
from nas.figures import scaling_fit
from nas.files import write_text_atomic
from nas.study_view import StudyView, count_str, load_studies, pct


def sweep_summary(studies: list[StudyView]) -> list[dict[str, Any]]:
    """Per study with a final training: what `reports/<name>.json` holds (issue: the curve)."""
    out = []
    for s in studies:
        if not s.final:
            continue
        f = s.final
        out.append(
            {
                "study": s.name,
                "budget": s.budget,
                "space": s.attrs.get("space"),
                "winner": {
                    "genome": json.loads(f["genome"]),
                    "genome_str": f.get("genome_str"),
                    "params": f.get("params"),
                    "flops": f.get("flops"),
                    "trial": f.get("trial"),
                    "search_score": f.get("search_val_acc"),
                    "val_acc": f.get("search_val_acc"),
                    "test_acc": f.get("test_acc"),
                },
                "final_epochs": f.get("epochs"),
                "final_train_images": f.get("train_size"),
                "search_minutes": round(s.search_seconds / 60, 2),
                "search_trials": len(s.trials),
                "final_training_minutes": round((f.get("wall_time_s") or 0) / 60, 2),
                "score_sigma": s.sigma,
                "finalists": [
                    {
                        "trial": x.trial,
                        "genome_str": x.genome_str,
                        "search_score": x.search_score,
                        "score": x.score,
                        "train_images": x.train_images,
                        **x.fidelity,
                    }
                    for x in s.finalists
                ],
                "baselines": {
                    k: {
                        "genome_str": b.get("genome_str"),
                        "params": b.get("params"),
                        "test_acc": b.get("test_acc"),
                        "preset": b.get("preset"),
                        "failure": b.get("failure"),
                    }
                    for k, b in s.baselines.items()
                },
                "final_recipe": f.get("recipe"),
                "device": f.get("device"),
            }
        )
    return out


def write_summary_json(
    storage: str, out: str | Path, *, previous: str | None = None, readme: str | Path | None = None
) -> Path:
    """Write `sweep_summary` of every study in `storage` (with the scaling fit) as JSON, and beside
    it the curve as a Markdown table (`curve_markdown`, .md) and a picture (.svg). `previous`: a
    storage holding an earlier run, whose winners the JSON and the picture keep as "previous".
    `readme`: a README whose curve block (nas.curve_image markers) gets the picture and table."""
    from nas.curve_image import update_readme, write_curve_image

    rows = sweep_summary(load_studies(storage))
    fit = scaling_fit([(r["winner"]["params"], r["winner"]["test_acc"]) for r in rows])
    doc: dict[str, Any] = {
        "storage": storage,
        "budgets": rows,
        "scaling_fit": None
        if fit is None
        else {"form": "test error = a * params^-alpha", "a": fit.a, "alpha": fit.alpha},
    }
    if previous:
        doc["previous_storage"] = previous
        doc["previous"] = [
            {
                "budget": r["budget"],
                "params": r["winner"]["params"],
                "test_acc": r["winner"]["test_acc"],
                "final_epochs": r["final_epochs"],
                "genome_str": r["winner"]["genome_str"],
            }
            for r in sweep_summary(load_studies(previous))
        ]
    table = curve_markdown(doc)
    write_text_atomic(Path(out).with_suffix(".md"), table, "summary table")
    image = write_curve_image(doc, Path(out).with_suffix(".svg"))
    if readme is not None:
        update_readme(readme, image, table)
    return write_text_atomic(out, json.dumps(doc, indent=2) + "\n", "summary file")


# What the curve aims at per budget (the curve issue's aims, set from the public points beside them).
AIMS = {1_000: 0.16, 5_000: 0.32, 10_000: 0.40, 50_000: 0.57, 100_000: 0.62, 500_000: 0.70, 1_000_000: 0.73}


def collect_models(storage: str, folder: str | Path) -> list[Path]:
    """Copy each study's exported winner (its ONNX file and model card, `final.onnx`) into
    `folder` as `<budget>.onnx` and `<budget>.card.json`, so a reader can use the best model at any
    budget without training it. Winners whose export is not on this machine are skipped."""
    import shutil

    from nas.files import card_path_for

    out, copied = Path(folder), []
    for s in load_studies(storage):
        onnx = Path((s.final or {}).get("onnx") or "")
        if not s.budget or not onnx.is_file() or not card_path_for(onnx).is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{s.budget}.onnx"
        shutil.copyfile(onnx, target)
        shutil.copyfile(card_path_for(onnx), card_path_for(target))
        copied.append(target)
    return copied


def nearest_reference_model(budget: int) -> reference.RefPoint:
    """The reference study's model whose parameter count is nearest the budget (by ratio)."""
    return min(reference.REFERENCE_STUDY, key=lambda p: abs(math.log(p.params / budget)))


def best_public_point(budget: int) -> reference.RefPoint | None:
    """The most accurate public point with between half the budget and the budget parameters."""
    near = [p for p in reference.PUBLIC_POINTS if budget / 2 <= p.params <= budget]
    return max(near, key=lambda p: p.test_acc, default=None)


def curve_markdown(doc: dict[str, Any]) -> str:
    """The summary (`write_summary_json`'s document) as a Markdown table: per budget the winner,
    its test accuracy beside the baselines trained for the same epochs, the reference study's
    published number and the best public point at or under the budget."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def baseline(b: dict[str, Any] | None) -> str:
        if not b:
            return "—"
        acc = pct(b["test_acc"]) if b.get("test_acc") is not None else f"failed: {cell(b.get('failure', '?'))}"
        return f"{acc} (`{cell(b['genome_str'])}`)" if not b.get("preset") else f"{acc} ({b['preset']})"

    lines = [
        "| budget | winner (short form) | params | test acc | aim | hand design | ResNet shape | "
        "reference model | reference study (published, 200 ep Adam) | "
        "best public point at or under the budget | final epochs | search min | final-training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    previous_acc = None
    for r in sorted(doc["budgets"], key=lambda r: r["budget"]):
        w, ref, pub = r["winner"], nearest_reference_model(r["budget"]), best_public_point(r["budget"])
        public = f"{pct(pub.test_acc)} ({pub.model}, ~{count_str(pub.params)})" if pub else "—"
        aim = AIMS.get(r["budget"])
        met = "—" if aim is None else f"{pct(aim, 0)} ({'met' if (w['test_acc'] or 0) >= aim else 'not met'})"
        drop = " ⚠ below the budget before" if previous_acc is not None and (w["test_acc"] or 0) < previous_acc else ""
        previous_acc = w["test_acc"]
        base = " | ".join(baseline(r["baselines"].get(k)) for k in ("hand", "resnet", "seed"))
        lines.append(
            f"| {count_str(r['budget'])} | `{cell(w['genome_str'])}` | {count_str(w['params'])} | "
            f"**{pct(w['test_acc'])}**{drop} | {met} | {base} | {pct(ref.test_acc)} ({ref.model}, "
            f"{count_str(ref.params)}) | {public} | {r['final_epochs']} | {r['search_minutes']:.1f} | "
            f"{r['final_training_minutes']:.1f} |"
        )
    fit = doc.get("scaling_fit")
    if fit:
        lines += ["", f"Scaling fit of the winners: test error = {fit['a']:.3f} × params^−{fit['alpha']:.3f}."]
    return "\n".join(lines) + "\n"
