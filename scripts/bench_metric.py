"""Benchmark: streaming ``MeanIoU`` against the per-image reference, same masks, same run.

Two baselines, both the Hub ``mean_iou`` algorithm (per-image histograms):

* ``hub pipeline``: :class:`tests/metric_reference.py's ``PerImageMeanIoU```, i.e. the algorithm behind
  ``evaluate``'s ``add_batch``/``compute`` that stores every mask as an image, as the Hub metric runs;
* ``per-image numpy``: the same algorithm called directly on the arrays (no storage at all).

Values must be identical (asserted); the script prints the speed ratios. Goal: ≥ 30× the Hub pipeline.

    python scripts/bench_metric.py [--images 100] [--height 512] [--width 1024] [--classes 19]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hf_lwmm.evaluation.metric import MeanIoU
from hf_lwmm.system import usable_cores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the per-image reference lives with the tests
from metric_reference import PerImageMeanIoU, per_image_mean_iou  # noqa: E402

IGNORE_INDEX = 255
BATCH_SIZE = 8


def blocky_masks(count: int, *, height: int, width: int, classes: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Predictions (int64, as argmax gives) and references (uint8, as label PNGs give) made of class blobs.

    References are predictions with 20% of the blobs changed and a void border, so IoU is neither 0 nor 1.
    """
    rng = np.random.default_rng(seed)
    cell = 16
    predictions, references = [], []
    for _ in range(count):
        grid = rng.integers(0, classes, (height // cell, width // cell))
        prediction = np.kron(grid, np.ones((cell, cell), dtype=np.int64))
        changed = np.where(rng.random(grid.shape) < 0.2, rng.integers(0, classes, grid.shape), grid)
        reference = np.kron(changed, np.ones((cell, cell), dtype=np.int64)).astype(np.uint8)
        reference[: height // 20] = IGNORE_INDEX
        predictions.append(prediction)
        references.append(reference)
    return predictions, references


def timed(run: Callable[[], dict[str, Any]], *, repeats: int = 1) -> tuple[float, dict[str, Any]]:
    """Median wall time of ``repeats`` runs (the machine may be shared), and the last result."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), result


def streamed(metric: Any, predictions: list[np.ndarray], references: list[np.ndarray], classes: int) -> dict[str, Any]:
    for start in range(0, len(predictions), BATCH_SIZE):
        metric.add_batch(predictions=predictions[start : start + BATCH_SIZE], references=references[start : start + BATCH_SIZE])
    return metric.compute(num_labels=classes, ignore_index=IGNORE_INDEX)


def assert_identical(ours: dict[str, Any], reference: dict[str, Any], *, baseline: str) -> None:
    for name, value in reference.items():
        assert np.array_equal(np.asarray(ours[name]), np.asarray(value), equal_nan=True), f"{name} differs from {baseline}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=19)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Downcasting array dtype")  # the Hub pipeline's PNG encoding of int64 masks

    predictions, references = blocky_masks(args.images, height=args.height, width=args.width, classes=args.classes, seed=0)
    print(f"{args.images} masks of {args.height}×{args.width}, {args.classes} classes, batches of {BATCH_SIZE}, {usable_cores()} cores")
    ours_time, ours = timed(lambda: streamed(MeanIoU(), predictions, references, args.classes), repeats=3)
    numpy_time, numpy_result = timed(lambda: per_image_mean_iou(predictions, references, num_labels=args.classes, ignore_index=IGNORE_INDEX))
    hub_time, hub_result = timed(lambda: streamed(PerImageMeanIoU(keep_in_memory=True), predictions, references, args.classes))
    assert_identical(ours, numpy_result, baseline="the per-image numpy reference")
    assert_identical(ours, hub_result, baseline="the per-image Hub pipeline")

    print(f"mean IoU {ours['mean_iou']:.6f} (identical in all three)")
    print(f"{'implementation':<34}{'seconds':>10}{'ms/image':>10}{'speed-up':>10}")
    for name, seconds in (("hf_lwmm MeanIoU (streaming)", ours_time), ("per-image numpy (Hub algorithm)", numpy_time),
                          ("per-image Hub pipeline (evaluate)", hub_time)):
        print(f"{name:<34}{seconds:>10.3f}{1000 * seconds / args.images:>10.2f}{seconds / ours_time:>9.1f}×")
    ratio = hub_time / ours_time
    print(f"goal ≥ 30× the Hub pipeline: {ratio:.1f}× {'(met)' if ratio >= 30 else '(NOT met)'}")


if __name__ == "__main__":
    main()
