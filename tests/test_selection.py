"""The α / start-layer selection rule on hand-made validation counts."""

from __future__ import annotations

import numpy as np

from hf_lwmm.evaluation.confusion import mean_iou
from hf_lwmm.experiments.selection import Candidate, choose_default, choose_most_uniform

RIGHT = np.array([[5, 0, 0], [0, 5, 0]])          # an image scored perfectly
HALF = np.array([[3, 2, 0], [2, 3, 0]])           # an image half wrong


def candidate(share: float, start: str, weight: float, images: list[np.ndarray]) -> Candidate:
    confusions = np.stack(images)
    return Candidate(share, start, weight, float(mean_iou(confusions.sum(axis=0))), confusions)


def test_the_most_uniform_setting_within_the_noise_of_the_best_is_chosen():
    best = candidate(0.9, "linear_fuse", 0.95, [RIGHT] * 9 + [HALF])
    # one image more wrong than the best: within the noise of 10 images
    close_but_uniform = candidate(0.0, "patch_embeddings.2", 0.40, [RIGHT] * 8 + [HALF] * 2)
    # wrong everywhere: clearly worse however the images are resampled
    uniform_but_bad = candidate(0.0, "patch_embeddings.0", 0.30, [HALF] * 10)
    choice = choose_most_uniform([best, close_but_uniform, uniform_but_bad], resamples=1000)
    assert choice.best is best
    assert set(map(id, choice.tied)) == {id(best), id(close_but_uniform)}
    assert choice.chosen is close_but_uniform


def test_a_clear_winner_is_kept_when_nothing_ties_with_it():
    best = candidate(0.9, "linear_fuse", 0.95, [RIGHT] * 10)
    worse = candidate(0.0, "patch_embeddings.0", 0.3, [HALF] * 10)
    choice = choose_most_uniform([worse, best], resamples=500)
    assert choice.chosen is best and choice.tied == (best,)


def test_the_default_is_the_setting_tied_at_the_most_sizes():
    a = candidate(0.25, "linear_c.0", 0.5, [RIGHT])
    b = candidate(0.0, "patch_embeddings.3", 0.3, [RIGHT])
    c = candidate(0.5, "linear_c.0", 0.6, [RIGHT])
    choices = {2: choose_most_uniform([a, b], resamples=50), 3: choose_most_uniform([a, c], resamples=50),
               4: choose_most_uniform([candidate(0.25, "linear_c.0", 0.45, [RIGHT])], resamples=50)}
    assert choose_default(choices) == (0.25, "linear_c.0")  # tied at k = 2, 3, 4; b only at k = 2
