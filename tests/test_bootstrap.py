"""Bootstrap intervals on hand-made confusion counts whose resampling distribution is known."""

from __future__ import annotations

import numpy as np
import pytest

from hf_lwmm.evaluation.bootstrap import bootstrap_difference, bootstrap_mean_iou, resample_weights
from hf_lwmm.evaluation.confusion import iou_from_confusion, mean_iou


def confusion(rows: list[list[int]]) -> np.ndarray:
    """A C × (C + 1) confusion matrix (last column: predictions outside the classes)."""
    return np.array(rows, dtype=np.int64)


# two classes; image A: 8 of 10 pixels right; image B: all right
IMAGE_A = confusion([[4, 1, 0], [1, 4, 0]])   # IoU 4/6 and 4/6 -> mIoU 2/3
IMAGE_B = confusion([[5, 0, 0], [0, 5, 0]])   # mIoU 1
IMAGE_AB = IMAGE_A + IMAGE_B                  # IoU 9/11 each -> mIoU 9/11


def test_batched_mean_iou_matches_the_metric_and_skips_absent_classes():
    assert mean_iou(IMAGE_A) == pytest.approx(2 / 3)
    assert mean_iou(IMAGE_AB) == pytest.approx(9 / 11)
    only_first = confusion([[3, 1, 1], [0, 0, 0]])  # class 1 absent from reference, predicted once
    assert mean_iou(only_first) == pytest.approx(iou_from_confusion(only_first)["mean_iou"])
    assert mean_iou(only_first) == pytest.approx((3 / 5 + 0 / 1) / 2)
    assert np.isnan(mean_iou(np.zeros((2, 3))))
    batch = np.stack([IMAGE_A, IMAGE_B, IMAGE_AB])
    assert mean_iou(batch) == pytest.approx([2 / 3, 1.0, 9 / 11])  # one mIoU per matrix


def test_resample_weights_draw_every_image_count_times_per_resample():
    weights = resample_weights(5, resamples=300, seed=3)
    assert weights.shape == (300, 5) and (weights.sum(axis=1) == 5).all()
    assert np.array_equal(weights, resample_weights(5, resamples=300, seed=3))  # seeded


def test_two_image_interval_spans_the_all_a_and_all_b_resamples():
    # resampling {A, B}: AA (p = 1/4, mIoU 2/3), AB (1/2, 9/11), BB (1/4, 1): the 2.5 % and 97.5 %
    # percentiles fall inside the AA and BB masses, so the interval is exactly [2/3, 1]
    interval = bootstrap_mean_iou(np.stack([IMAGE_A, IMAGE_B]), resamples=4000, seed=0)
    assert interval.estimate == pytest.approx(9 / 11)
    assert (interval.low, interval.high) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert interval.percent() == "81.82 [66.67, 100.00]"


def test_identical_images_give_a_point_interval():
    interval = bootstrap_mean_iou(np.stack([IMAGE_A] * 6), resamples=500)
    assert interval.low == interval.high == interval.estimate == pytest.approx(2 / 3)


def test_paired_difference_of_a_predictor_with_itself_is_zero_and_orders_a_uniform_gain():
    images = np.stack([IMAGE_A, IMAGE_B, IMAGE_A])
    same = bootstrap_difference(images, images, resamples=500)
    assert same.estimate == same.low == same.high == 0.0
    # the second predictor is perfect on every image: the difference is negative unless a resample
    # draws only B images (p = (1/4)^4 < 2.5 % with images A, A, A, B)
    images = np.stack([IMAGE_A, IMAGE_A, IMAGE_A, IMAGE_B])
    perfect = np.stack([IMAGE_B] * 4)
    worse = bootstrap_difference(images, perfect, resamples=2000)
    assert worse.high < 0 and not worse.contains(0.0)
    assert worse.estimate == pytest.approx(mean_iou(images.sum(axis=0)) - 1.0)
    # with two images {A, B} vs perfect: resamples AA, AB, BB give -1/3, -2/11, 0 -> interval [-1/3, 0]
    pair = bootstrap_difference(np.stack([IMAGE_A, IMAGE_B]), np.stack([IMAGE_B, IMAGE_B]), resamples=4000)
    assert (pair.low, pair.high) == (pytest.approx(-1 / 3), pytest.approx(0.0))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="N × C × \\(C \\+ 1\\)"):
        bootstrap_mean_iou(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="same images"):
        bootstrap_difference(np.stack([IMAGE_A]), np.stack([IMAGE_A, IMAGE_B]))
