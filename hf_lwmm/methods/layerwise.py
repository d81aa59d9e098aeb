"""Layer-wise merging (Alcover-Couso et al., 2024): uniform early layers, then weight moving towards the anchor with depth."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from hf_lwmm.methods.base import MergeMethod, MethodParameters, register_method
from hf_lwmm.schedules import (
    DEFAULT_ANCHOR_SHARE,
    DEFAULT_START_LAYER,
    SCHEDULES,
    LayerWeights,
    alpha_for_share,
    layerwise_weights,
    resolve_start_layer,
)

#: the default α as the help and the card state it
_DEFAULT_ALPHA = "1/M" if DEFAULT_ANCHOR_SHARE == 0 else f"1/M + {DEFAULT_ANCHOR_SHARE:g}·(1 − 1/M)"


class LayerwiseParameters(MethodParameters):
    alpha: float | None = Field(None, description=f"anchor weight α in the early layers, in [0, 1] (default: {_DEFAULT_ALPHA})")
    start_layer: int | str | None = Field(None, description="first layer s (index or name, e.g. block.2.0) where the anchor "
                                                            f"weight starts rising (default: {DEFAULT_START_LAYER})")
    schedule: str = Field("linear", description="how the anchor weight rises from the start layer")

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_interval(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{value}: must lie in [0, 1]")
        return value

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(f"{value!r}: unknown (choose from {', '.join(SCHEDULES)})")
        return value


@register_method
class LayerwiseMerge(MergeMethod):
    name = "layerwise"
    summary = "layer-wise merging: anchor weight α in early layers, rising linearly to 1 from the start layer"
    Parameters = LayerwiseParameters
    formula = ("Over the L shared layers ordered by depth, the anchor's weight is `λa(l) = α` for `l < s` and "
               "`λa(l) = α + (1 − α)(l − s)/(L − s)` afterwards; the other models share `1 − λa(l)` equally.")
    citation = ("Alcover-Couso et al., *Layer-wise Model Merging for Unsupervised Domain Adaptation in Segmentation Tasks*, "
                "2024 (arXiv:2409.15813)")
    derived = {"start_layer_name": "the name of the start layer"}

    @property
    def alpha(self) -> float:
        assert isinstance(self.parameters, LayerwiseParameters)
        return alpha_for_share(DEFAULT_ANCHOR_SHARE, self.num_models) if self.parameters.alpha is None else self.parameters.alpha

    def layer_weights(self, layers: list[str]) -> list[LayerWeights]:
        assert isinstance(self.parameters, LayerwiseParameters)
        return layerwise_weights(layers, num_models=self.num_models, anchor=self.anchor, alpha=self.alpha,
                                 start=resolve_start_layer(self.parameters.start_layer, layers), schedule=self.parameters.schedule)

    def describe(self, layers: list[str]) -> dict[str, object]:
        assert isinstance(self.parameters, LayerwiseParameters)
        start = resolve_start_layer(self.parameters.start_layer, layers)
        return {"alpha": self.alpha, "start_layer": start, "start_layer_name": layers[start], "schedule": self.parameters.schedule}
