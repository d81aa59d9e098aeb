"""Mean IoU as an ``evaluate.Metric``: the Hub ``mean_iou``'s inputs, outputs and values, streamed.

The Hub metric stores every mask (as an image in an Arrow table) and histograms them one by one at
``compute``. Here each ``add``/``add_batch`` folds its masks into counts of (reference value,
prediction value) pairs at once and keeps nothing else, so memory stays O(C²) however many images
pass. Counting raw values rather than classes keeps the Hub's call pattern: ``num_labels``,
``ignore_index``, ``label_map`` and ``reduce_labels`` may still arrive at ``compute`` time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from hf_lwmm.evaluation.confusion import iou_from_confusion
from hf_lwmm.system import usable_cores

_DESCRIPTION = """\
Mean Intersection-over-Union of semantic segmentation masks, accumulated in a confusion matrix
(same inputs, outputs and values as the Hub's `mean_iou`, without storing any mask).
"""

_INPUTS_DESCRIPTION = """
Args:
    predictions: predicted masks (H×W integer arrays or tensors), or a batch of them.
    references: ground-truth masks of the same shapes.
    num_labels (`int`): number of classes.
    ignore_index (`int` or `None`): reference value left out of every count.
    nan_to_num (`float`, optional): replaces NaN in every output.
    label_map (`dict[int, int]`, optional): reference value → class, applied to the original values.
    reduce_labels (`bool`, default `False`): reference 0 becomes 255 and every other value drops by one.
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats); per_category_iou, per_category_accuracy
    (arrays of `num_labels`). Classes absent from both predictions and references are NaN and left
    out of the means.
"""

_REDUCED_BACKGROUND = 255


@dataclass(frozen=True)
class PairHistogram:
    """Pixel counts of one mask pair: ``counts[r, p]`` pixels with reference ``reference_low + r`` and
    prediction ``prediction_low + p``."""

    counts: np.ndarray
    reference_low: int
    prediction_low: int


def pair_histogram(prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> PairHistogram:
    """Count the (reference, prediction) value pairs of two same-shaped integer masks, where they are."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction of shape {tuple(prediction.shape)} against reference of shape {tuple(reference.shape)}")
    if not _pixel_count(prediction):
        return PairHistogram(np.zeros((0, 0), dtype=np.int64), 0, 0)
    if isinstance(prediction, torch.Tensor) and isinstance(reference, torch.Tensor) and prediction.device.type != "cpu":
        return _histogram_on_device(prediction, reference)
    return _histogram_on_host(np.asarray(prediction), np.asarray(reference))  # a CPU tensor is viewed, not copied


def _histogram_on_host(prediction: np.ndarray, reference: np.ndarray) -> PairHistogram:
    """One intp index ``prediction × width + reference`` and one bincount (the hot loop).

    The reference is the minor axis: one-byte masks (label PNGs) need no range pass at all. The
    prediction is the major axis, so bincount finds its range itself: the output length gives the
    largest prediction, and bincount refuses negatives (only then is the minimum looked up).
    """
    if reference.dtype.itemsize == 1 and reference.dtype.kind in "ub":
        reference_low, width = 0, 256
    else:
        reference_low, reference_high = int(reference.min()), int(reference.max())
        width = reference_high - reference_low + 1
    index = np.multiply(prediction.reshape(-1), width, dtype=np.intp)
    index += reference.reshape(-1)
    if reference_low:
        index -= reference_low
    try:
        flat, prediction_low = np.bincount(index), 0
    except ValueError:  # a negative prediction: shift by the smallest one
        prediction_low = int(prediction.min())
        index -= prediction_low * width
        flat = np.bincount(index)
    rows = -(-flat.size // width)
    by_prediction = np.zeros(rows * width, dtype=np.int64)
    by_prediction[: flat.size] = flat
    return PairHistogram(by_prediction.reshape(rows, width).T, reference_low, prediction_low)


def _histogram_on_device(prediction: torch.Tensor, reference: torch.Tensor) -> PairHistogram:
    """Pair counts of accelerator tensors, counted where they are; only the counts travel."""
    reference_low, reference_high = (int(value) for value in torch.aminmax(reference))
    prediction_low, prediction_high = (int(value) for value in torch.aminmax(prediction))
    rows, columns = reference_high - reference_low + 1, prediction_high - prediction_low + 1
    index = (reference.long() - reference_low) * columns + (prediction.long() - prediction_low)
    counts = torch.bincount(index.reshape(-1), minlength=rows * columns).reshape(rows, columns)
    return PairHistogram(counts.cpu().numpy(), reference_low, prediction_low)


@dataclass
class PairCounts:
    """Pixel counts per (reference value, prediction value) over the window of values seen so far.

    ``counts[r, p]`` counts pixels whose reference is ``reference_low + r`` and prediction
    ``prediction_low + p``; the window grows as new values arrive.
    """

    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    reference_low: int = 0
    prediction_low: int = 0

    def add(self, prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> None:
        """Fold one pair of same-shaped integer masks (numpy, or torch on any device)."""
        self.fold(pair_histogram(prediction, reference))

    def fold(self, histogram: PairHistogram) -> None:
        """Add one mask pair's counts, growing the window (copying the counts so far) to fit them."""
        if not histogram.counts.size:
            return
        rows, columns = histogram.counts.shape
        self._cover((histogram.reference_low, histogram.reference_low + rows - 1),
                    (histogram.prediction_low, histogram.prediction_low + columns - 1))
        top, left = histogram.reference_low - self.reference_low, histogram.prediction_low - self.prediction_low
        self.counts[top : top + rows, left : left + columns] += histogram.counts

    def _cover(self, reference_range: tuple[int, int], prediction_range: tuple[int, int]) -> None:
        rows, columns = self.counts.shape
        if rows == 0:
            self.reference_low, self.prediction_low = reference_range[0], prediction_range[0]
            shape = (reference_range[1] - reference_range[0] + 1, prediction_range[1] - prediction_range[0] + 1)
            self.counts = np.zeros(shape, dtype=np.int64)
            return
        reference_low = min(self.reference_low, reference_range[0])
        prediction_low = min(self.prediction_low, prediction_range[0])
        reference_high = max(self.reference_low + rows - 1, reference_range[1])
        prediction_high = max(self.prediction_low + columns - 1, prediction_range[1])
        shape = (reference_high - reference_low + 1, prediction_high - prediction_low + 1)
        if shape == self.counts.shape:
            return
        grown = np.zeros(shape, dtype=np.int64)
        top, left = self.reference_low - reference_low, self.prediction_low - prediction_low
        grown[top : top + rows, left : left + columns] = self.counts
        self.counts, self.reference_low, self.prediction_low = grown, reference_low, prediction_low

    def confusion(self, *, num_labels: int, ignore_index: int | None, label_map: Mapping[int, int] | None = None,
                  reduce_labels: bool = False) -> np.ndarray:
        """``(C + 1) × (C + 1)`` confusion matrix (last row/column: values outside the classes)."""
        confusion = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
        if not self.counts.size:
            return confusion
        rows, columns = self.counts.shape
        reference_values = np.arange(self.reference_low, self.reference_low + rows, dtype=np.int64)
        classes = reference_classes(reference_values, label_map=label_map, reduce_labels=reduce_labels)
        kept = classes != ignore_index if ignore_index is not None else np.ones(rows, dtype=bool)
        row_index = np.where((classes >= 0) & (classes < num_labels), classes, num_labels)
        prediction_values = np.arange(self.prediction_low, self.prediction_low + columns, dtype=np.int64)
        column_index = np.where((prediction_values >= 0) & (prediction_values < num_labels), prediction_values, num_labels)
        np.add.at(confusion, (row_index[kept, None], column_index[None, :]), self.counts[kept])
        return confusion


def reference_classes(values: np.ndarray, *, label_map: Mapping[int, int] | None, reduce_labels: bool) -> np.ndarray:
    """The class each reference value stands for, by the Hub metric's rules (label_map first, on original values)."""
    classes = values.copy()
    for old, new in (label_map or {}).items():
        classes[values == int(old)] = int(new)
    if reduce_labels:
        classes[classes == 0] = _REDUCED_BACKGROUND
        classes -= 1
        classes[classes == _REDUCED_BACKGROUND - 1] = _REDUCED_BACKGROUND
    return classes


def _as_integer_mask(mask: Any, *, role: str) -> np.ndarray | torch.Tensor:
    """An integer array (or tensor, kept on its device) from whatever the caller passed."""
    if isinstance(mask, torch.Tensor):
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(f"{role}: expected integer class ids, got a {mask.dtype} tensor")
        return mask if mask.device.type != "cpu" else mask.numpy()
    array = np.asarray(mask)
    if array.dtype.kind in "iub":
        return array
    if array.dtype.kind == "f" and np.array_equal(array, np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{role}: expected integer class ids, got {array.dtype}")


def _masks(batch: Any, *, role: str) -> list[np.ndarray | torch.Tensor]:
    """A batch as a list of masks: a sequence of masks, or one array/tensor with a leading batch axis."""
    if not isinstance(batch, Iterable):
        raise ValueError(f"{role}: expected a batch of masks, got {type(batch).__name__}")
    return [_as_integer_mask(mask, role=role) for mask in batch]


def _pixel_count(mask: np.ndarray | torch.Tensor) -> int:
    return mask.numel() if isinstance(mask, torch.Tensor) else mask.size


class MeanIoU(evaluate.Metric):
    """``evaluate.load("mean_iou")`` without the network, the Arrow table or per-image storage.

    Use it exactly like the Hub metric::

        metric = MeanIoU()
        for batch in loader:
            metric.add_batch(predictions=pred, references=labels)
        metric.compute(num_labels=19, ignore_index=255)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_process > 1:
            raise ValueError("MeanIoU folds each batch into counts: gather predictions (e.g. accelerate's gather_for_metrics) "
                             "instead of num_process > 1")
        self.info.module_name = "mean_iou"
        self._pairs = PairCounts()
        self._examples = 0

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _build_data_dir(self) -> str:
        """Nothing is cached on disk, so no cache folder is created."""
        return ""

    def __len__(self) -> int:
        return self._examples

    @property
    def pair_counts(self) -> PairCounts:
        """What has been folded so far (to merge across processes, or inspect)."""
        return self._pairs

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Fold a batch of masks into the counts."""
        if kwargs:
            raise ValueError(f"Bad inputs for evaluation module: {sorted(kwargs)}. All required inputs are ['predictions', 'references']")
        predicted, referenced = _masks(predictions, role="predictions"), _masks(references, role="references")
        if len(predicted) != len(referenced):
            raise ValueError(f"Mismatch in the number of predictions ({len(predicted)}) and references ({len(referenced)})")
        histograms = list(_histograms([_same_place(prediction, reference) for prediction, reference in zip(predicted, referenced)]))
        for histogram in histograms:  # all counted before any is folded: a bad pair leaves the counts as they were
            self._pairs.fold(histogram)
        self._examples += len(predicted)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Fold one mask pair into the counts."""
        if kwargs:
            raise ValueError(f"Bad inputs for evaluation module: {sorted(kwargs)}. All required inputs are ['predictions', 'references']")
        self._pairs.add(*_same_place(_as_integer_mask(prediction, role="prediction"), _as_integer_mask(reference, role="reference")))
        self._examples += 1

    def compute(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Fold the given masks (if any), compute the metric, and start afresh (like ``evaluate``)."""
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        try:
            return self._compute(**kwargs)
        finally:
            self._pairs = PairCounts()
            self._examples = 0

    def _compute(self, *, num_labels: int, ignore_index: int | None, nan_to_num: float | None = None,
                 label_map: Mapping[int, int] | None = None, reduce_labels: bool = False) -> dict[str, Any]:
        confusion = self._pairs.confusion(num_labels=num_labels, ignore_index=ignore_index, label_map=label_map,
                                          reduce_labels=reduce_labels)
        result = iou_from_confusion(confusion)
        if nan_to_num is not None:
            result = {name: _nan_replaced(value, nan_to_num) for name, value in result.items()}
        return result


def _same_place(prediction: np.ndarray | torch.Tensor,
                reference: np.ndarray | torch.Tensor) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Both masks on the accelerator, or both as numpy arrays on the host."""
    if isinstance(reference, torch.Tensor) != isinstance(prediction, torch.Tensor):
        return _on_host(prediction), _on_host(reference)
    return prediction, reference


def _on_host(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    return mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask


def _histograms(pairs: list[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]]) -> Iterator[PairHistogram]:
    """Each pair's histogram; a batch of host masks is counted on all cores (numpy releases the GIL)."""
    if len(pairs) < 2 or isinstance(pairs[0][0], torch.Tensor) or usable_cores() < 2:
        return (pair_histogram(prediction, reference) for prediction, reference in pairs)
    return _counting_pool().map(lambda pair: pair_histogram(*pair), pairs)


@functools.cache
def _counting_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="mean-iou")


def _nan_replaced(value: Any, replacement: float) -> Any:
    replaced = np.nan_to_num(value, nan=replacement)
    return float(replaced) if np.ndim(replaced) == 0 else replaced
