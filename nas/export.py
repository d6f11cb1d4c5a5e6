"""Export a trained model to ONNX, with a model card, checked against PyTorch.

A training run (`nas train`, or a sweep's final training) is a folder with model.pt, genome.json
and result.json. `export_run` rebuilds the model in eval mode and float32 on the CPU (BatchNorm
uses its running statistics), exports it with PyTorch's exporter (torch.export based, dynamic
batch size), and checks the file instead of trusting it: ONNX Runtime's logits on 100 images
must match PyTorch's within 1e-4 (max abs), on the real CIFAR-100 test images when they are
available, else on random images (the card says which). Only a checked file is written
(first to a temporary name, renamed when it passed). Next to it, `<name>.card.json` says what
the model is and what input it expects (the normalisation mean/std included).

A trial of a study (`STUDY#N`) has weights only where a training run was saved for its genome:
a sweep's final training of the study's winner (study user attr `final.run_dir`). Search trials
keep no weights; for any other trial the error says the `nas train` command that makes a run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from nas.errors import NasError
from nas.files import card_path_for

if TYPE_CHECKING:
    from nas.data import CifarSource
    from nas.spaces import Genome

CHECK_IMAGES = 100
CHECK_TOLERANCE = 1e-4  # max abs difference of logits, ONNX Runtime vs PyTorch
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    card: dict[str, Any]

    @property
    def max_abs_diff(self) -> float | None:
        return self.card["check"].get("max_abs_diff")


# ---------------------------------------------------------------- the ONNX file


def export_onnx(model: nn.Module, path: str | Path) -> None:
    """Write `model` (eval mode, float32, CPU) as one ONNX file whose batch dimension is dynamic."""
    model = model.float().cpu().eval()
    example = torch.zeros(2, 3, 32, 32)  # batch 2, not 1: a size-1 dimension would be specialised
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as e:  # the exporter's errors are long; the first line says what failed
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NasError(f"ONNX export failed: {reason}") from None


def _add_metadata(path: Path, props: dict[str, str]) -> int:
    """Write `props` into the file's metadata (so the file describes itself), validate it with
    onnx's checker; returns the opset."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_logits(path: str | Path, x: torch.Tensor) -> np.ndarray:
    """Logits of the ONNX file for a float32 batch, by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})[0]


def compare(model: nn.Module, path: str | Path, x: torch.Tensor) -> dict[str, Any]:
    """PyTorch (eval, float32) vs ONNX Runtime on the normalised batch `x`."""
    with torch.no_grad():
        ref = model.float().cpu().eval()(x.float()).numpy()
    got = onnx_logits(path, x)
    if got.shape != ref.shape:
        raise NasError(f"export check failed: ONNX output shape {got.shape}, PyTorch {ref.shape}")
    return {
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_agree": int((got.argmax(1) == ref.argmax(1)).sum()),
        "images": len(x),
    }


# ---------------------------------------------------------------- check inputs and normalisation


def _normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    from nas.data import normalize

    return normalize(x, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))


def check_batch(
    spec: dict[str, Any], data_dir: str | Path | None, n: int = CHECK_IMAGES, data: CifarSource | None = None
) -> tuple[torch.Tensor, str]:
    """`n` normalised images to compare on, and what they are: the first `n` CIFAR-100 test
    images when the data set is found (in `data` when the caller has read it, else in
    `data_dir`), else `n` random images (uniform pixels, seed 0)."""
    from nas.data import FOLDER, load_test_images, resolve_data_dir

    try:
        images, _ = data.test_images(n) if data is not None else load_test_images(data_dir, n)
        what = f"the first {len(images)} CIFAR-100 test images"
    except NasError as e:
        if "not found" not in str(e):
            raise  # a corrupt file is the user's to know about, not to work around
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        what = (
            f"{n} random images (uniform pixels, seed 0; CIFAR-100 not found in {resolve_data_dir(data_dir) / FOLDER})"
        )
    return _normalize(images, spec["mean"], spec["std"]), what


def input_spec_of(summary: dict[str, Any], data_dir: str | Path | None) -> dict[str, Any]:
    """The run's input spec from result.json; for runs saved before nas recorded it, the
    normalisation statistics are recomputed from the data set (same split, same subset)."""
    spec = summary.get("input")
    if isinstance(spec, dict) and "mean" in spec and "std" in spec:
        return spec
    from nas.data import load_cifar100
    from nas.runs import input_spec

    val_size = int(summary.get("val_size", 5000))
    subset = summary.get("subset")
    if subset is None and isinstance(summary.get("train_size"), int) and summary["train_size"] < 50_000 - val_size:
        subset = summary["train_size"]  # older runs recorded only the size of the training part
    try:
        data = load_cifar100(data_dir, device="cpu", val_size=val_size, subset=subset, download=False)
    except NasError as e:
        raise NasError(
            f"this run's result.json has no normalisation statistics (saved by an older nas) and "
            f"they cannot be recomputed: {e}"
        ) from None
    return input_spec(data)


def _tta_note(tta: str) -> str:
    if tta == "flip":
        return (
            "flip: the graph averages the logits of each image and its mirror image, "
            "so a prediction costs two forward passes (2x the FLOPs given)"
        )
    return "none"


# ---------------------------------------------------------------- runs and trials


def _write_checked_onnx(
    model: torch.nn.Module,
    genome: Genome,
    spec: dict[str, Any],
    out_path: Path,
    check: bool,
    data_dir: str | Path | None,
    data: CifarSource | None,
) -> tuple[int, dict[str, Any]]:
    """Export `model` with nas's metadata to `out_path` through a temporary file, which with
    `check` must first give PyTorch's logits on the check batch (else NasError, nothing written).
    Returns the opset and what the check found."""
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        export_onnx(model, tmp)
        opset = _add_metadata(
            tmp,
            {
                "nas.genome": genome.to_json(),
                "nas.genome_str": str(genome),
                "nas.input.mean": json.dumps(spec["mean"]),
                "nas.input.std": json.dumps(spec["std"]),
                "nas.input.normalize": spec.get("normalize", "(pixel / 255 - mean) / std"),
            },
        )
        if check:
            batch, what = check_batch(spec, data_dir, data=data)
            got = compare(model, tmp, batch)
            if not got["max_abs_diff"] <= CHECK_TOLERANCE:
                raise NasError(
                    f"export check failed: ONNX Runtime's logits differ from PyTorch's by up to "
                    f"{got['max_abs_diff']:.2e} (tolerance {CHECK_TOLERANCE:g}) on {what}; nothing written"
                )
            checked = {"inputs": what, "tolerance": CHECK_TOLERANCE, **got, "passed": True}
        else:
            checked = {"skipped": True, "inputs": None}
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return opset, checked


def model_card(
    model: torch.nn.Module,
    genome: Genome,
    summary: dict[str, Any],
    spec: dict[str, Any],
    file_name: str,
    opset: int,
    checked: dict[str, Any],
    source: dict[str, Any],
) -> dict[str, Any]:
    """What a user of the exported file needs: the architecture, how it was trained and how well
    it tests, the input it expects and the output it gives, the export check, the versions."""
    import onnx
    import onnxruntime

    from nas import __version__
    from nas.counting import count_flops, count_params
    from nas.training import output_classes

    num_classes = output_classes(model)
    return {
        "model": file_name,
        "format": "onnx",
        "opset": opset,
        "genome": genome.to_dict(),
        "genome_str": str(genome),
        "params": count_params(genome),
        "flops": count_flops(genome),
        "recipe": summary.get("recipe"),
        "epochs": summary.get("epochs"),
        "test_time_augmentation": _tta_note((summary.get("recipe") or {}).get("tta", "none")),
        "val_acc": summary.get("val_acc"),
        "test_acc": summary.get("test_acc"),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *spec.get("shape", [3, 32, 32])],
            "dtype": "float32",
            "layout": spec.get("layout", "NCHW"),
            "channels": spec.get("channels", "RGB"),
            "mean": spec["mean"],
            "std": spec["std"],
            "normalize": spec.get("normalize", "(pixel / 255 - mean) / std, per channel"),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", num_classes],
            "num_classes": num_classes,
            "what": "logits (softmax gives class probabilities)",
            "classes": spec.get("classes"),
        },
        "check": checked,
        "source": source,
        "exported": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "nas": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    check: bool = True,
    data_dir: str | Path | None = None,
    source: dict[str, Any] | None = None,
    data: CifarSource | None = None,
) -> ExportResult:
    """Export the training run in `run_dir` to `out` (default `run_dir/model.onnx`) and write the
    model card next to it. With `check`, the file is compared with PyTorch on CHECK_IMAGES images
    and not written unless the logits agree within CHECK_TOLERANCE. `data`: CIFAR-100 as the
    caller already read it (a sweep), else it is read from `data_dir`."""
    from nas.runs import load_trained, run_summary

    run = Path(run_dir)
    if not run.is_dir():
        raise NasError(
            f"{run}: no such training run folder (RUN is a folder written by nas train, or STUDY#N with --storage)"
        )
    genome, model = load_trained(run)
    summary = run_summary(run)
    spec = input_spec_of(summary, data_dir)
    out_path = Path(out) if out else run / "model.onnx"
    if out_path.suffix.lower() != ".onnx":
        raise NasError(f"output file must end in .onnx, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    opset, checked = _write_checked_onnx(model, genome, spec, out_path, check, data_dir, data)
    card = model_card(
        model, genome, summary, spec, out_path.name, opset, checked, {"run_dir": str(run), **(source or {})}
    )
    card_file = card_path_for(out_path)
    tmp_card = card_file.with_name(f".{card_file.name}.{os.getpid()}.tmp")
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp_card, card_file)
    return ExportResult(out_path, card_file, card)
