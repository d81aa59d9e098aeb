"""Confusion matrices and the IoU figures derived from them (pure numpy, O(C²) memory).

A confusion matrix here has ``num_labels + 1`` columns: the last one counts predictions outside
``[0, num_labels)``, which still belong to the reference's area. It may also have an extra last row
for reference pixels outside ``[0, num_labels)`` that are not ignored: they count in the predicted
class's area only. Both follow the Hub's ``mean_iou`` (its histograms drop out-of-range values per side).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int | None = None) -> np.ndarray:
    """Counts ``[reference, prediction]`` over pixels whose reference is a valid class (not ignored).

    The result is ``num_labels × (num_labels + 1)``: reference pixels outside the classes are left out.
    """
    prediction = np.asarray(prediction).reshape(-1)
    reference = np.asarray(reference).reshape(-1)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction has {prediction.size} pixels, reference {reference.size}")
    valid = (reference >= 0) & (reference < num_labels)
    if ignore_index is not None:
        valid &= reference != ignore_index
    predicted = prediction[valid].astype(np.int64)
    predicted[(predicted < 0) | (predicted >= num_labels)] = num_labels
    pairs = reference[valid].astype(np.int64) * (num_labels + 1) + predicted
    return np.bincount(pairs, minlength=num_labels * (num_labels + 1)).reshape(num_labels, num_labels + 1)


def class_iou(confusions: np.ndarray) -> np.ndarray:
    """Per-class IoU of one or many confusion matrices (``… × C × (C + 1)``, or ``(C + 1) × (C + 1)`` with the
    out-of-range references as a last row): ``… × C``, NaN for classes absent from both sides."""
    confusions = np.asarray(confusions, dtype=np.float64)
    num_labels = confusions.shape[-1] - 1
    intersection = np.diagonal(confusions[..., :num_labels, :num_labels], axis1=-2, axis2=-1)
    area_reference = confusions[..., :num_labels, :].sum(axis=-1)
    area_prediction = confusions[..., :num_labels].sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / (area_reference + area_prediction - intersection)


def mean_iou(confusions: np.ndarray) -> np.ndarray:
    """mIoU of one or many confusion matrices (see :func:`class_iou`): classes absent from both sides are skipped."""
    iou = class_iou(confusions)
    present = np.isfinite(iou)
    return np.where(present.any(axis=-1), np.where(present, iou, 0.0).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1), np.nan)


def iou_from_confusion(confusion: np.ndarray) -> dict[str, object]:
    """mean IoU, accuracies and per-class values; classes absent from both sides are NaN and skipped.

    Accepts ``C × (C + 1)`` matrices, or ``(C + 1) × (C + 1)`` ones whose last row holds the
    out-of-range references.
    """
    confusion = confusion.astype(np.float64)
    num_labels = confusion.shape[1] - 1
    intersection = np.diag(confusion[:num_labels, :num_labels])
    area_reference = confusion[:num_labels].sum(axis=1)
    iou = class_iou(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = intersection / area_reference
    total = area_reference.sum()
    return {
        "mean_iou": float(mean_iou(confusion)),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
        "overall_accuracy": float(intersection.sum() / total) if total else float("nan"),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
