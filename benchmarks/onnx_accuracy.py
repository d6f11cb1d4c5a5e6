"""Does an exported model give the accuracy that was reported for it? Runs each ONNX file with
ONNX Runtime on the 10,000 CIFAR-100 test images, normalised as its model card says, and
compares the top-1 accuracy with the card's test accuracy (what `nas train` or a sweep reported).

    python benchmarks/onnx_accuracy.py --data-dir ../shared/data runs/distillation/teacher/model.onnx
    python benchmarks/onnx_accuracy.py --data-dir ../shared/data reports/cifar100-cpu/*.onnx
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort

from nas.data import load_test_images
from nas.export import card_path_for


def onnx_accuracy(path: str, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> tuple[float, dict]:
    card = json.loads(card_path_for(path).read_text())
    mean = np.asarray(card["input"]["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(card["input"]["std"], np.float32).reshape(1, 3, 1, 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    for i in range(0, len(images), batch):
        x = ((images[i : i + batch].astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
        correct += int((session.run(None, {name: x})[0].argmax(1) == labels[i : i + batch]).sum())
    return correct / len(images), card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="ONNX files written by nas export (their .card.json beside them)")
    p.add_argument("--data-dir")
    p.add_argument("--tolerance", type=float, default=0.001, help="allowed |ONNX - reported| (default 0.1 point)")
    args = p.parse_args(argv)
    x, y = load_test_images(args.data_dir)
    images, labels = x.numpy(), y.numpy()
    worst = 0.0
    for path in args.models:
        acc, card = onnx_accuracy(path, images, labels)
        reported = card.get("test_acc")
        diff = None if reported is None else abs(acc - reported)
        worst = max(worst, diff or 0.0)
        print(
            f"{path}: ONNX Runtime {100 * acc:.2f}% on {len(labels):,} test images, reported "
            f"{'-' if reported is None else f'{100 * reported:.2f}%'}"
            + ("" if diff is None else f", difference {100 * diff:.2f} points")
            + f" (TTA: {card.get('test_time_augmentation', 'none')[:4]})"
        )
    print(
        f"largest difference {100 * worst:.2f} points: {'within' if worst <= args.tolerance else 'OUTSIDE'} "
        f"the {100 * args.tolerance:.1f}-point tolerance"
    )
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
