"""Layer-wise merging: uniform early layers, then weight moving towards the anchor with depth."""

from __future__ import annotations

from hf_lwmm.methods.base import MergeMethod, register_method
from hf_lwmm.plan import LayerWeights, layerwise_weights, resolve_start_layer


@register_method
class LayerwiseMerge(MergeMethod):
    name = "layerwise"
    summary = "layer-wise merging: anchor weight α in early layers, rising linearly to 1 from the start layer"

    def layer_weights(self, layers: list[str], *, anchor: int) -> list[LayerWeights]:
        return layerwise_weights(
            layers,
            num_models=len(self.recipe.models),
            anchor=anchor,
            alpha=self.recipe.effective_alpha,
            start=resolve_start_layer(self.recipe.start_layer, layers),
            schedule=self.recipe.schedule,
        )

    def describe(self, layers: list[str]) -> dict[str, object]:
        start = resolve_start_layer(self.recipe.start_layer, layers)
        return {"alpha": self.recipe.effective_alpha, "start_layer": start, "start_layer_name": layers[start], "schedule": self.recipe.schedule}
