"""Bootstrap intervals for mean IoU over images: how much a score depends on which frames were scored.

mIoU is not a mean over images (each class's IoU pools its pixels over the whole set), so a
resample recomputes it from the summed per-image confusion counts.  Differences between two
predictors are *paired*: both are recomputed on the same resampled images, which removes the
variation the two share (some frames are hard for every model) and leaves what separates them.
Percentile intervals; every resample is drawn from one seeded generator, so an interval is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hf_lwmm.evaluation.confusion import mean_iou

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate (on every image) with its bootstrap interval, as fractions (0–1)."""

    estimate: float
    low: float
    high: float
    level: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def percent(self) -> str:
        """``estimate [low, high]`` in percent, two decimals."""
        return f"{100 * self.estimate:.2f} [{100 * self.low:.2f}, {100 * self.high:.2f}]"

    def signed_percent(self) -> str:
        return f"{100 * self.estimate:+.2f} [{100 * self.low:+.2f}, {100 * self.high:+.2f}]"


def resample_weights(num_images: int, *, resamples: int, seed: int) -> np.ndarray:
    """How often each image is drawn in each resample (``resamples × num_images``, rows sum to ``num_images``)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    weights = np.zeros((resamples, num_images), dtype=np.int64)
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    return weights


def _resampled(confusions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    flat = np.asarray(confusions, dtype=np.float64).reshape(len(confusions), -1)
    return mean_iou((weights @ flat).reshape(len(weights), *confusions.shape[1:]))


def _check(confusions: np.ndarray) -> np.ndarray:
    confusions = np.asarray(confusions)
    if confusions.ndim != 3 or confusions.shape[2] != confusions.shape[1] + 1 or len(confusions) == 0:
        raise ValueError(f"per-image confusions: expected N × C × (C + 1) with N ≥ 1, got shape {confusions.shape}")
    return confusions


def _interval(estimate: float, values: np.ndarray, level: float) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def bootstrap_mean_iou(confusions: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       level: float = DEFAULT_LEVEL) -> Interval:
    """mIoU of the whole set with its percentile bootstrap interval over images.

    ``confusions``: one ``C × (C + 1)`` confusion matrix per image (``N × C × (C + 1)``).
    """
    confusions = _check(confusions)
    weights = resample_weights(len(confusions), resamples=resamples, seed=seed)
    return _interval(float(mean_iou(confusions.sum(axis=0))), _resampled(confusions, weights), level)


def bootstrap_difference(first: np.ndarray, second: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                         level: float = DEFAULT_LEVEL) -> Interval:
    """mIoU(first) − mIoU(second) on the same images, with its paired percentile bootstrap interval."""
    first, second = _check(first), _check(second)
    if first.shape != second.shape:
        raise ValueError(f"paired difference: confusions of shape {first.shape} and {second.shape} (same images and classes needed)")
    weights = resample_weights(len(first), resamples=resamples, seed=seed)
    estimate = float(mean_iou(first.sum(axis=0)) - mean_iou(second.sum(axis=0)))
    return _interval(estimate, _resampled(first, weights) - _resampled(second, weights), level)
