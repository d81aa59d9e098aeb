"""The Hub ``mean_iou`` algorithm, image by image: the specification ``hf_lwmm.evaluation.metric.MeanIoU`` is checked against.

Tests and ``scripts/bench_metric.py`` compare the streaming metric with these functions (same values,
bit for bit) and :class:`PerImageMeanIoU` (the same algorithm behind ``evaluate``'s storage of every
mask as an image, which is how the Hub metric runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np


def per_image_areas(prediction: Any, reference: Any, *, num_labels: int, ignore_index: int | None,
                    label_map: Mapping[int, int] | None = None, reduce_labels: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection, predicted and reference areas per class of one image, from three histograms."""
    prediction = np.array(prediction)
    reference = np.array(reference)
    if label_map is not None:
        original = reference.copy()
        for old, new in label_map.items():
            reference[original == old] = new
    if reduce_labels:
        reference[reference == 0] = 255
        reference = reference - 1
        reference[reference == 254] = 255
    kept = np.not_equal(reference, ignore_index)
    prediction, reference = prediction[kept], reference[kept]
    bins = dict(bins=num_labels, range=(0, num_labels - 1))
    intersection = np.histogram(prediction[prediction == reference], **bins)[0]
    return intersection, np.histogram(prediction, **bins)[0], np.histogram(reference, **bins)[0]


def per_image_mean_iou(predictions: Sequence[Any], references: Sequence[Any], *, num_labels: int, ignore_index: int | None,
                       nan_to_num: float | None = None, label_map: Mapping[int, int] | None = None,
                       reduce_labels: bool = False) -> dict[str, Any]:
    """Totals of the per-image areas, then IoU and accuracy per class and their NaN-skipping means."""
    totals = np.zeros((3, num_labels), dtype=np.float64)
    for prediction, reference in zip(predictions, references):
        totals += per_image_areas(prediction, reference, num_labels=num_labels, ignore_index=ignore_index,
                                  label_map=label_map, reduce_labels=reduce_labels)
    intersection, area_prediction, area_reference = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / (area_prediction + area_reference - intersection)
        accuracy = intersection / area_reference
        overall = intersection.sum() / area_reference.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN means, as the Hub metric allows
        result = {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(accuracy), "overall_accuracy": overall,
                  "per_category_iou": iou, "per_category_accuracy": accuracy}
    if nan_to_num is not None:
        result = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in result.items()}
    return result


class PerImageMeanIoU(evaluate.Metric):
    """The per-image algorithm behind ``evaluate``'s storage: every mask is encoded as an image."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="per-image mean IoU (reference implementation)",
            citation="",
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, *, predictions: Sequence[Any], references: Sequence[Any], **options: Any) -> dict[str, Any]:
        return per_image_mean_iou(predictions, references, **options)
