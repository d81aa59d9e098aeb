"""Choosing the layer-wise merge's α and start layer on a noisy validation set.

The grid point with the best validation mIoU is a noisy pick: on 31 frames, settings a point apart
are indistinguishable, and the maximum tends to drift to "the anchor with a pinch of the others".
The rule here: every setting whose paired bootstrap difference to the best still reaches 0 (not
significantly worse at 95 %) is *tied* with it; among the tied settings take the **most uniform**
one, the one with the smallest mean anchor weight over the shared layers (ties: higher mIoU).  It
leans towards merging whenever the data cannot tell, and follows the anchor only when the data say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hf_lwmm.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_difference


@dataclass(frozen=True)
class Candidate:
    """One setting of the grid with its validation scores."""

    share: float  # t: α = 1/M + t·(1 − 1/M)
    start_layer: str
    #: mean over the shared layers of the anchor's weight (1/M: uniform merge, 1: the anchor alone)
    mean_anchor_weight: float
    mean_iou: float
    image_confusions: np.ndarray


@dataclass(frozen=True)
class Choice:
    chosen: Candidate
    best: Candidate
    tied: tuple[Candidate, ...]


def choose_most_uniform(candidates: Sequence[Candidate], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Choice:
    """The most uniform setting among those not significantly worse than the best (see the module docstring)."""
    if not candidates:
        raise ValueError("choose_most_uniform: no candidates")
    best = max(candidates, key=lambda candidate: candidate.mean_iou)
    tied = tuple(candidate for candidate in candidates
                 if candidate is best or bootstrap_difference(candidate.image_confusions, best.image_confusions,
                                                              resamples=resamples, seed=seed).high >= 0)
    chosen = min(tied, key=lambda candidate: (candidate.mean_anchor_weight, -candidate.mean_iou))
    return Choice(chosen, best, tied)


def choose_default(choices: dict[int, Choice]) -> tuple[float, str]:
    """One ``(t, start layer)`` for merges of every size: the setting tied with the best at the most
    sizes (ties: the smallest mean anchor weight, averaged over those sizes)."""
    settings: dict[tuple[float, str], list[float]] = {}
    for choice in choices.values():
        for candidate in choice.tied:
            settings.setdefault((candidate.share, candidate.start_layer), []).append(candidate.mean_anchor_weight)
    if not settings:
        raise ValueError("choose_default: no choices")
    return min(settings, key=lambda setting: (-len(settings[setting]), float(np.mean(settings[setting]))))
