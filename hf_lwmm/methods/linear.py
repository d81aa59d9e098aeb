"""Weighted linear merging: fixed per-model weights in every layer."""

from __future__ import annotations

from hf_lwmm.methods.base import MergeMethod, register_method
from hf_lwmm.plan import LayerWeights, constant_weights


@register_method
class LinearMerge(MergeMethod):
    name = "linear"
    summary = "weighted linear merging: the same per-model weights in every layer"
    weights_option = "required"

    def layer_weights(self, layers: list[str], *, anchor: int) -> list[LayerWeights]:
        assert self.recipe.weights is not None
        return constant_weights(layers, list(self.recipe.weights))

    def describe(self, layers: list[str]) -> dict[str, object]:
        return {"weights": list(self.recipe.weights or [])}
