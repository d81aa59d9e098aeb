"""MeanIoU: hand-made masks of known IoU, and the Hub algorithm's values on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_lwmm.evaluation.confusion import confusion_matrix, iou_from_confusion
from hf_lwmm.evaluation.metric import MeanIoU, PairCounts, _histogram_on_device, _histogram_on_host, pair_histogram
from metric_reference import PerImageMeanIoU, per_image_mean_iou

# 2×3 masks; 255 is void. Per class (over the 5 non-void pixels):
#   class 0: intersection 1, predicted 2, reference 1 → IoU 1/2, accuracy 1
#   class 1: intersection 2, predicted 2, reference 3 → IoU 2/3, accuracy 2/3
#   class 2: intersection 1, predicted 1, reference 1 → IoU 1,   accuracy 1
PREDICTION = np.array([[0, 0, 1], [1, 2, 2]])
REFERENCE = np.array([[0, 1, 1], [1, 255, 2]], dtype=np.uint8)


def assert_same_result(ours: dict, expected: dict) -> None:
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(np.asarray(ours[name]), np.asarray(value), equal_nan=True), name


def test_hand_made_masks_give_the_known_iou():
    result = MeanIoU().compute(predictions=[PREDICTION], references=[REFERENCE], num_labels=3, ignore_index=255)
    np.testing.assert_allclose(result["per_category_iou"], [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(result["per_category_accuracy"], [1.0, 2 / 3, 1.0])
    assert result["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert result["mean_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert result["overall_accuracy"] == pytest.approx(4 / 5)


def test_class_absent_from_both_sides_is_nan_and_left_out_of_the_means():
    result = MeanIoU().compute(predictions=[PREDICTION], references=[REFERENCE], num_labels=5, ignore_index=255)
    assert np.isnan(result["per_category_iou"][3:]).all() and np.isnan(result["per_category_accuracy"][3:]).all()
    assert result["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    filled = MeanIoU().compute(predictions=[PREDICTION], references=[REFERENCE], num_labels=5, ignore_index=255, nan_to_num=-1)
    assert list(filled["per_category_iou"][3:]) == [-1, -1]
    assert filled["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_values_outside_the_classes_count_on_one_side_only():
    # prediction 7 (out of range) on a class-1 pixel: class 1 loses it from its intersection only;
    # reference 9 (out of range, not void) under a class-0 prediction: class 0's predicted area grows.
    prediction = np.array([[7, 0, 1]])
    reference = np.array([[1, 9, 1]])
    result = MeanIoU().compute(predictions=[prediction], references=[reference], num_labels=2, ignore_index=255)
    assert result["per_category_iou"][0] == 0.0  # predicted once, never in the reference
    assert result["per_category_iou"][1] == pytest.approx(1 / 2)  # 1 hit, reference area 2
    assert result["overall_accuracy"] == pytest.approx(1 / 2)


def test_reduce_labels_turns_zero_into_void_and_shifts_the_rest():
    prediction = np.array([[0, 1, 0, 2]])
    reference = np.array([[1, 2, 0, 255]], dtype=np.uint8)  # → 0, 1, void, void
    result = MeanIoU().compute(predictions=[prediction], references=[reference], num_labels=3, ignore_index=255, reduce_labels=True)
    np.testing.assert_array_equal(result["per_category_iou"], [1.0, 1.0, np.nan])
    assert result["overall_accuracy"] == 1.0


def test_label_map_uses_the_original_values():
    prediction = np.array([[1, 0, 2]])
    reference = np.array([[0, 1, 2]])
    swapped = MeanIoU().compute(predictions=[prediction], references=[reference], num_labels=3, ignore_index=255, label_map={0: 1, 1: 0})
    assert swapped["mean_iou"] == 1.0
    voided = MeanIoU().compute(predictions=[prediction], references=[reference], num_labels=3, ignore_index=255, label_map={0: 255})
    np.testing.assert_array_equal(voided["per_category_iou"], [0.0, 0.0, 1.0])


def random_masks(seed: int, *, count: int = 7, num_labels: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks of several sizes with void pixels, out-of-range values on both sides and a missing class."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for _ in range(count):
        shape = tuple(rng.integers(5, 40, size=2))
        predictions.append(rng.integers(0, num_labels + 1, shape))
        reference = rng.integers(0, num_labels + 2, shape).astype(np.uint8)
        reference[rng.random(shape) < 0.2] = 255
        reference[reference == 3] = 4  # class 3 never in the references
        references.append(reference)
    return predictions, references


@pytest.mark.parametrize("options", [
    dict(num_labels=6, ignore_index=255),
    dict(num_labels=5, ignore_index=255, reduce_labels=True),
    dict(num_labels=6, ignore_index=255, label_map={1: 2, 2: 1, 7: 0}),
    dict(num_labels=6, ignore_index=255, label_map={0: 255}, reduce_labels=True),
    dict(num_labels=8, ignore_index=None, nan_to_num=0.0),
])
def test_equals_the_per_image_reference_on_random_data(options):
    predictions, references = random_masks(seed=sum(map(ord, repr(options))))
    metric = MeanIoU()
    metric.add_batch(predictions=predictions[:3], references=references[:3])  # a list of masks
    metric.add(prediction=torch.from_numpy(predictions[3]), reference=references[3])  # a tensor
    metric.add_batch(predictions=np.stack(predictions[4:5]), references=np.stack(references[4:5]))  # a batch array
    result = metric.compute(predictions=predictions[5:], references=references[5:], **options)
    assert_same_result(result, per_image_mean_iou(predictions, references, **options))


def test_equals_the_per_image_pipeline_through_evaluate():
    predictions, references = random_masks(seed=3)
    predictions = [p.astype(np.uint8) for p in predictions]  # the image storage keeps uint8 masks intact
    reference_metric = PerImageMeanIoU(keep_in_memory=True)
    reference_metric.add_batch(predictions=predictions, references=references)
    expected = reference_metric.compute(num_labels=6, ignore_index=255)
    metric = MeanIoU()
    metric.add_batch(predictions=predictions, references=references)
    assert_same_result(metric.compute(num_labels=6, ignore_index=255), expected)


def test_add_batch_keeps_counts_only():
    predictions, references = random_masks(seed=5, count=20)
    metric = MeanIoU()
    metric.add_batch(predictions=predictions, references=references)
    assert len(metric) == 20
    assert metric.writer is None and metric.data is None  # nothing went to evaluate's Arrow storage
    assert metric.pair_counts.counts.shape == (256, 7)  # reference values 0…255 × prediction values 0…6
    metric.compute(num_labels=6, ignore_index=255)
    assert len(metric) == 0  # compute starts afresh, like evaluate


def test_negative_reference_values_widen_the_window():
    counts = PairCounts()
    counts.add(np.array([[0, 1]]), np.array([[0, 1]]))
    counts.add(np.array([[2, 1]]), np.array([[-1, 1]]))
    assert (counts.reference_low, counts.prediction_low, counts.counts.shape) == (-1, 0, (3, 3))
    confusion = counts.confusion(num_labels=2, ignore_index=-1)
    np.testing.assert_array_equal(confusion, [[1, 0, 0], [0, 2, 0], [0, 0, 0]])


def test_device_counting_matches_host_counting():
    rng = np.random.default_rng(0)
    prediction, reference = rng.integers(0, 5, (9, 11)), rng.integers(-1, 4, (9, 11))
    on_host, on_device = PairCounts(), PairCounts()
    on_host.fold(_histogram_on_host(prediction, reference))
    on_device.fold(_histogram_on_device(torch.from_numpy(prediction), torch.from_numpy(reference)))
    assert (on_host.reference_low, on_host.prediction_low) == (on_device.reference_low, on_device.prediction_low) == (-1, 0)
    np.testing.assert_array_equal(on_host.counts, on_device.counts)
    expected = np.zeros((5, 5), dtype=np.int64)
    np.add.at(expected, (reference.ravel() + 1, prediction.ravel()), 1)
    np.testing.assert_array_equal(on_host.counts, expected)


def test_histogram_of_byte_references_and_negative_predictions():
    prediction = np.array([[-2, 0, 3], [3, 3, -2]])
    reference = np.array([[0, 0, 255], [1, 1, 0]], dtype=np.uint8)
    histogram = pair_histogram(prediction, reference)
    assert (histogram.reference_low, histogram.prediction_low, histogram.counts.shape) == (0, -2, (256, 6))
    counts = {(r, p): int(histogram.counts[r, p + 2]) for r in range(256) for p in range(-2, 4) if histogram.counts[r, p + 2]}
    assert counts == {(0, -2): 2, (0, 0): 1, (255, 3): 1, (1, 3): 2}
    widened = pair_histogram(prediction, reference.astype(np.int32))  # other dtypes: the window is the value range
    assert (widened.reference_low, widened.counts.shape) == (0, (256, 6))
    np.testing.assert_array_equal(widened.counts, histogram.counts)
    assert pair_histogram(np.zeros((0, 3), dtype=int), np.zeros((0, 3), dtype=np.uint8)).counts.size == 0


def test_a_bad_pair_in_a_batch_leaves_the_counts_unchanged():
    metric = MeanIoU()
    metric.add(prediction=np.array([[1, 0]]), reference=np.array([[1, 1]]))
    before = metric.pair_counts.counts.copy()
    with pytest.raises(ValueError):
        metric.add_batch(predictions=[np.array([[1, 1]]), np.array([[1, 1]])], references=[np.array([[0, 0]]), np.array([[0, 0, 0]])])
    np.testing.assert_array_equal(metric.pair_counts.counts, before)
    assert len(metric) == 1


def test_confusion_matrix_helpers_agree_with_the_metric():
    confusion = confusion_matrix(PREDICTION, REFERENCE, 3, ignore_index=255)
    np.testing.assert_array_equal(confusion, [[1, 0, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0]])
    result = iou_from_confusion(confusion)
    assert result["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


@pytest.mark.parametrize("bad", [
    dict(predictions=[np.zeros((2, 2), dtype=int)], references=[np.zeros((2, 3), dtype=int)]),
    dict(predictions=[np.zeros((2, 2), dtype=int)] * 2, references=[np.zeros((2, 2), dtype=int)]),
    dict(predictions=[np.full((2, 2), 0.5)], references=[np.zeros((2, 2), dtype=int)]),
])
def test_bad_inputs_raise_value_error(bad):
    with pytest.raises(ValueError):
        MeanIoU().add_batch(**bad)


def test_empty_metric_gives_nan():
    result = MeanIoU().compute(num_labels=3, ignore_index=255)
    assert math.isnan(result["mean_iou"]) and math.isnan(result["overall_accuracy"])
