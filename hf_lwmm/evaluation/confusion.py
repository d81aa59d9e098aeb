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


def iou_from_confusion(confusion: np.ndarray) -> dict[str, object]:
    """mean IoU, accuracies and per-class values; classes absent from both sides are NaN and skipped.

    Accepts ``C × (C + 1)`` matrices, or ``(C + 1) × (C + 1)`` ones whose last row holds the
    out-of-range references.
    """
    confusion = confusion.astype(np.float64)
    num_labels = confusion.shape[1] - 1
    intersection = np.diag(confusion[:num_labels, :num_labels])
    area_reference = confusion[:num_labels].sum(axis=1)
    area_prediction = confusion[:, :num_labels].sum(axis=0)
    union = area_reference + area_prediction - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / union
        accuracy = intersection / area_reference
    total = area_reference.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
        "overall_accuracy": float(intersection.sum() / total) if total else float("nan"),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
