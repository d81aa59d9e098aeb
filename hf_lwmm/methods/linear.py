"""Weighted linear merging: fixed per-model weights in every layer."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from hf_lwmm.errors import RecipeError
from hf_lwmm.methods.base import LayerTable, MergeMethod, MethodParameters, register_method
from hf_lwmm.schedules import LayerWeights, constant_weights


def check_model_weights(weights: list[float]) -> list[float]:
    """Non-negative, finite, summing to 1 (the rule every method with per-model weights shares)."""
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"{weights}: must be non-negative")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"{weights}: must sum to 1 (they sum to {sum(weights):g})")
    return weights


def check_weight_count(weights: list[float] | None, count: int) -> None:
    if weights is not None and len(weights) != count:
        raise RecipeError("weights", f"{len(weights)} given for {count} models")


class LinearParameters(MethodParameters):
    weights: list[float] = Field(description="per-model weights (non-negative, summing to 1), in the order of the models")

    @field_validator("weights")
    @classmethod
    def _valid_weights(cls, value: list[float]) -> list[float]:
        return check_model_weights(value)

    def check_models(self, count: int) -> None:
        check_weight_count(self.weights, count)


@register_method
class LinearMerge(MergeMethod):
    name = "linear"
    summary = "weighted linear merging: the same per-model weights in every layer"
    Parameters = LinearParameters

    def layer_weights(self, layers: list[str]) -> list[LayerWeights]:
        assert isinstance(self.parameters, LinearParameters)
        return constant_weights(layers, list(self.parameters.weights))

    def layer_table(self, layer_weights: list[LayerWeights]) -> LayerTable | None:
        return None  # the same weights in every layer: the parameter table shows them
