"""Isotropic merging: the uniform mean of every shared tensor (model soup)."""

from __future__ import annotations

from hf_lwmm.methods.base import LayerTable, MergeMethod, register_method
from hf_lwmm.schedules import LayerWeights, constant_weights


@register_method
class IsotropicMerge(MergeMethod):
    name = "isotropic"
    summary = "isotropic merging: uniform mean of every shared tensor, the same in every layer"

    def layer_weights(self, layers: list[str]) -> list[LayerWeights]:
        return constant_weights(layers, [1.0 / self.num_models] * self.num_models)

    def layer_table(self, layer_weights: list[LayerWeights]) -> LayerTable | None:
        return None  # 1/M for every model in every layer: nothing to tabulate
