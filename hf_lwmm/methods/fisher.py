"""Fisher merging (Matena & Raffel, 2022): per element, models weigh in by their diagonal Fisher.

The Fisher of each model is estimated on unlabelled images with the model's own argmax predictions as
labels: F = E_x[(∇θ Σ_pixels log p(ŷ | x))²], ŷ the argmax class of each logit pixel (pixels are
independent outputs, so an image's log-likelihood is their sum), one image per backward pass (the
expectation is over images of squared per-image gradients, not the square of a batch gradient).
Argmax rather than sampled labels keeps the estimate deterministic. The sum (not the mean) keeps the
Fisher far above the ε that guards empty entries. BatchNorm statistics are merged by the core like for every method.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field, field_validator

from hf_lwmm.console import progress_bar
from hf_lwmm.errors import RecipeError
from hf_lwmm.layers import layer_of
from hf_lwmm.methods.base import LayerTable, MergeMethod, MethodParameters, register_method
from hf_lwmm.methods.functional import fisher_weighted_average
from hf_lwmm.methods.linear import check_model_weights, check_weight_count
from hf_lwmm.schedules import LayerWeights, constant_weights

if TYPE_CHECKING:
    from hf_lwmm.align import Alignment
    from hf_lwmm.evaluation.data import SegmentationData
    from hf_lwmm.refs import ResolvedModel

DEFAULT_SAMPLES = 32


def diagonal_fisher(model: torch.nn.Module, images: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean over images of squared gradients of the log-likelihood (summed over pixels) of the argmax labels.

    ``model(pixel_values=x).logits`` must be ``(1, C, H, W)`` for each ``x`` in ``images``; keys are
    the model's parameter names.
    """
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    totals = {name: torch.zeros_like(parameter, dtype=torch.float32) for name, parameter in parameters.items()}
    count = 0
    for pixel_values in images:
        model.zero_grad(set_to_none=True)
        log_probabilities = model(pixel_values=pixel_values).logits.float().log_softmax(dim=1)
        labels = log_probabilities.detach().argmax(dim=1, keepdim=True)
        log_probabilities.gather(1, labels).sum().backward()
        for name, parameter in parameters.items():
            if parameter.grad is not None:
                totals[name] += parameter.grad.float().square()
        count += 1
    if not count:
        raise RecipeError("fisher_data", "no images to estimate the Fisher information on")
    model.zero_grad(set_to_none=True)
    return {name: total / count for name, total in totals.items()}


def model_fisher(model: ResolvedModel, data: SegmentationData, *, device: torch.device, progress: bool) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of a model folder on ``data``'s images, keyed by the tensor names of its files."""
    from transformers.core_model_loading import revert_weight_conversion

    from hf_lwmm.loading import load_segmentation_model

    network, processor = load_segmentation_model(model.folder, label=str(model.ref))
    torch.nn.Module.to(network, device)  # in place (transformers' typed ``to`` wrapper confuses mypy)
    images = (processor(images=[data.samples[index].image], return_tensors="pt")["pixel_values"].to(device)
              for index in progress_bar(range(len(data)), desc=f"fisher {model.ref}", unit="image", enabled=progress))
    fisher = diagonal_fisher(network, images)
    # transformers 5 renames tensors in memory; the merge works on the names in the files
    return {name: tensor.cpu() for name, tensor in revert_weight_conversion(network, fisher).items()}


class FisherParameters(MethodParameters):
    fisher_data: str = Field(description="unlabelled target-domain images the Fisher is estimated on: "
                                         "a Hub dataset id, a datasets folder or a folder with images/")
    fisher_samples: int = Field(DEFAULT_SAMPLES, description="images to estimate each model's Fisher on")
    fisher_split: str | None = Field(None, description="split of a multi-split dataset (default: the only one, else validation)")
    weights: list[float] | None = Field(None, description="per-model weights λᵢ of the Fisher average (default: uniform)")

    @field_validator("fisher_data")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty: name the unlabelled images of the target domain")
        return value

    @field_validator("fisher_samples")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value}: must be a positive integer")
        return value

    @field_validator("weights")
    @classmethod
    def _valid_weights(cls, value: list[float] | None) -> list[float] | None:
        return None if value is None else check_model_weights(value)

    def check_models(self, count: int) -> None:
        check_weight_count(self.weights, count)


@register_method
class FisherMerge(MergeMethod):
    name = "fisher"
    summary = "Fisher merging: per-element average weighted by each model's diagonal Fisher information"
    Parameters = FisherParameters
    citation = "Matena & Raffel, *Merging Models with Fisher-Weighted Averaging*, NeurIPS 2022 (arXiv:2111.09832)"
    derived = {"fisher_labels": "the labels whose log-likelihood gradients the Fisher squares",
               "fisher_images": "images each model's Fisher was estimated on"}

    def __init__(self, parameters: MethodParameters, *, num_models: int, anchor: int) -> None:
        super().__init__(parameters, num_models=num_models, anchor=anchor)
        self.fishers: list[dict[str, torch.Tensor]] = []
        #: the Fisher data as a card names it (no local path) and its image count, once prepared
        self.data_name: str | None = None
        self.images: int | None = None

    @property
    def options(self) -> FisherParameters:
        assert isinstance(self.parameters, FisherParameters)
        return self.parameters

    def layer_weights(self, layers: list[str]) -> list[LayerWeights]:
        """Per-model weights λᵢ of the Fisher average: ``weights`` when given, else uniform."""
        weights = self.options.weights or [1.0 / self.num_models] * self.num_models
        return constant_weights(layers, list(weights))

    def prepare(self, models: list[ResolvedModel], alignment: Alignment, *, device: torch.device, progress: bool) -> None:
        from hf_lwmm.align import canonical_name
        from hf_lwmm.evaluation.data import load_segmentation_data

        data = load_segmentation_data(self.options.fisher_data, split=self.options.fisher_split, labelled=False,
                                      max_samples=self.options.fisher_samples)
        self.data_name, self.images = data.source.name, len(data)
        self.fishers = []
        for model in models:
            fisher = model_fisher(model, data, device=device, progress=progress)
            self.fishers.append({canonical_name(name, model.model_type): tensor for name, tensor in fisher.items()})

    def merge_tensor(self, key: str, tensors: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """Fisher-weighted average; a tensor without gradient (a buffer) has zero Fisher, i.e. the plain λ-average."""
        return fisher_weighted_average(tensors, (fisher.get(key) for fisher in self.fishers), weights)

    def describe(self, layers: list[str]) -> dict[str, Any]:
        described = {**self.options.model_dump(), "fisher_labels": "argmax prediction per pixel"}
        if self.data_name is not None:
            described.update(fisher_data=self.data_name, fisher_images=self.images)
        return described

    def layer_table(self, layer_weights: list[LayerWeights]) -> LayerTable | None:
        """Each model's share of the λ-weighted Fisher mass per layer (its pull on that layer's average);
        ``None`` before :meth:`prepare`."""
        if not self.fishers:
            return None
        masses = {row.layer: [0.0] * self.num_models for row in layer_weights}
        for model, fisher in enumerate(self.fishers):
            for key, tensor in fisher.items():
                mass = masses.get(layer_of(key))
                if mass is not None:
                    mass[model] += float(tensor.sum())
        rows = []
        for row in layer_weights:
            weighted = [weight * mass for weight, mass in zip(row.weights, masses[row.layer])]
            total = sum(weighted)
            rows.append(LayerWeights(row.layer, row.index, tuple(w / total if total > 0 else row.weights[i]
                                                                  for i, w in enumerate(weighted))))
        return LayerTable("share of Fisher mass",
                          "Fisher merging weighs every parameter by its own Fisher value, so it has no per-layer weight; "
                          "the table shows each model's share λᵢΣFᵢ / Σⱼ λⱼΣFⱼ of the layer's Fisher mass (summed over the "
                          "layer's tensors), i.e. how strongly each model pulls that layer's average on the whole.",
                          rows)
