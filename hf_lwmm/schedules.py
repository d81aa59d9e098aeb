"""Per-layer model weights: the layer-wise schedule and its registry, and where the rise starts.

Layering: a pure module (imports only :mod:`hf_lwmm.errors`); the methods build on it.

Over the L shared layers (0-based ``l``), the anchor's weight is ``α`` before the start layer ``s`` and
then rises linearly towards 1: ``λa(l) = α + (1 − α)·(l − s)/(L − s)``; the other M − 1 models share
``1 − λa(l)`` equally. Early layers, which stay close to the common pretraining, are averaged; deep
layers, which carry each model's adaptation, follow the anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hf_lwmm.errors import RecipeError

Schedule = Callable[[int, int, float, int], float]
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    def decorate(function: Schedule) -> Schedule:
        SCHEDULES[name] = function
        return function

    return decorate


@register_schedule("linear")
def linear_schedule(layer: int, num_layers: int, alpha: float, start: int) -> float:
    """Anchor weight ``α`` until ``start``, then a straight line towards 1 at layer ``L``."""
    if layer < start:
        return alpha
    return alpha + (1.0 - alpha) * (layer - start) / (num_layers - start)


#: ``lwmm-hub merge``'s layer-wise defaults, chosen on the dusk/val sweeps of the CamVid zoo (README, "Results";
#: ``results/day-to-dusk/fig5.md``): α lies this share t of the way from uniform (1/M) to the anchor alone (1) …
DEFAULT_ANCHOR_SHARE = 0.0
#: … and the anchor's weight starts rising at this layer (the deepest shared layer when the models lack it)
DEFAULT_START_LAYER = "linear_fuse"


def alpha_for_share(share: float, num_models: int) -> float:
    """α a share ``t`` of the way from uniform (``t = 0``: 1/M) to the anchor alone (``t = 1``)."""
    return 1.0 / num_models + share * (1.0 - 1.0 / num_models)


def start_layer_in(name: str, layers: list[str]) -> int:
    """Index of the layer called ``name``, or of the deepest shared layer when these models do not share it."""
    return layers.index(name) if name in layers else len(layers) - 1


def resolve_start_layer(start: int | str | None, layers: list[str]) -> int:
    """The one place that reads a start layer: an index, a layer name (e.g. ``block.2.0``) or digits
    as text (what a command line gives), checked against the shared layers."""
    if start is None:
        return start_layer_in(DEFAULT_START_LAYER, layers)
    if isinstance(start, str) and not start.strip().lstrip("-").isdigit():
        if start not in layers:
            raise RecipeError("start_layer", f"{start!r}: no shared layer of that name (e.g. {layers[0]!r} … {layers[-1]!r})")
        return layers.index(start)
    index = int(start)
    if not 0 <= index < len(layers):
        raise RecipeError("start_layer", f"{index}: out of range, there are {len(layers)} shared layers (0 … {len(layers) - 1})")
    return index


@dataclass(frozen=True)
class LayerWeights:
    """The weight of every model in one layer."""

    layer: str
    index: int
    weights: tuple[float, ...]


def layerwise_weights(layers: list[str], *, num_models: int, anchor: int, alpha: float, start: int,
                      schedule: str = "linear") -> list[LayerWeights]:
    """Weights of each model for each shared layer under a schedule."""
    if schedule not in SCHEDULES:
        raise RecipeError("schedule", f"{schedule!r}: unknown (choose from {', '.join(SCHEDULES)})")
    rule = SCHEDULES[schedule]
    plan = []
    for index, layer in enumerate(layers):
        anchor_weight = rule(index, len(layers), alpha, start)
        other = (1.0 - anchor_weight) / (num_models - 1)
        weights = tuple(anchor_weight if i == anchor else other for i in range(num_models))
        plan.append(LayerWeights(layer, index, weights))
    return plan


def constant_weights(layers: list[str], weights: list[float]) -> list[LayerWeights]:
    """The same model weights in every layer (isotropic and linear merging)."""
    return [LayerWeights(layer, index, tuple(weights)) for index, layer in enumerate(layers)]
