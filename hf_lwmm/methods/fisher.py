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

from hf_lwmm.console import progress_bar
from hf_lwmm.errors import LwmmError
from hf_lwmm.methods.base import MergeMethod, register_method
from hf_lwmm.methods.functional import fisher_weighted_average
from hf_lwmm.plan import LayerWeights, constant_weights

if TYPE_CHECKING:
    from hf_lwmm.align import Alignment
    from hf_lwmm.evaluation.data import SegmentationData
    from hf_lwmm.recipe import MergeRecipe
    from hf_lwmm.refs import ResolvedModel

DEFAULT_SAMPLES = 32
#: method_options this method reads: images, how many, and which split of a multi-split dataset
OPTIONS = ("fisher_data", "fisher_samples", "fisher_split")


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
        raise LwmmError("--fisher-data: no images to estimate the Fisher information on")
    model.zero_grad(set_to_none=True)
    return {name: total / count for name, total in totals.items()}


def model_fisher(model: "ResolvedModel", data: "SegmentationData", *, device: torch.device, progress: bool) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of a model folder on ``data``'s images, keyed by the tensor names of its files."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
    from transformers.core_model_loading import revert_weight_conversion

    try:
        network = AutoModelForSemanticSegmentation.from_pretrained(model.folder).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(model.folder)
    except (OSError, ValueError, KeyError) as err:
        raise LwmmError(f"model {model.ref}: cannot be loaded to estimate its Fisher ({str(err).splitlines()[0]})") from None
    images = (processor(images=[data.samples[index].image], return_tensors="pt")["pixel_values"].to(device)
              for index in progress_bar(range(len(data)), desc=f"fisher {model.ref}", unit="image", enabled=progress))
    fisher = diagonal_fisher(network, images)
    # transformers 5 renames tensors in memory; the merge works on the names in the files
    return {name: tensor.cpu() for name, tensor in revert_weight_conversion(network, fisher).items()}


@register_method
class FisherMerge(MergeMethod):
    name = "fisher"
    summary = "Fisher merging: per-element average weighted by each model's diagonal Fisher information (Matena & Raffel, 2022)"
    weights_option = "optional"

    def __init__(self, recipe: "MergeRecipe") -> None:
        super().__init__(recipe)
        self.fishers: list[dict[str, torch.Tensor]] = []

    @classmethod
    def validate_recipe(cls, recipe: "MergeRecipe") -> None:
        super().validate_recipe(recipe)
        options = recipe.method_options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise LwmmError(f"method option {unknown[0]!r}: unknown for --method fisher (known: {', '.join(OPTIONS)})")
        if not options.get("fisher_data"):
            raise LwmmError("--method fisher needs --fisher-data DATA (unlabelled images of the target domain)")
        samples = options.get("fisher_samples", DEFAULT_SAMPLES)
        if not isinstance(samples, int) or samples < 1:
            raise LwmmError(f"--fisher-samples {samples}: must be a positive integer")

    @property
    def samples(self) -> int:
        return int(self.recipe.method_options.get("fisher_samples", DEFAULT_SAMPLES))

    def layer_weights(self, layers: list[str], *, anchor: int) -> list[LayerWeights]:
        """Per-model weights λᵢ of the Fisher average: ``--weights`` when given, else uniform."""
        count = len(self.recipe.models)
        return constant_weights(layers, list(self.recipe.weights) if self.recipe.weights else [1.0 / count] * count)

    def prepare(self, models: list["ResolvedModel"], alignment: "Alignment") -> None:
        from hf_lwmm.align import canonical_name
        from hf_lwmm.evaluation.data import load_segmentation_data
        from hf_lwmm.system import resolve_device

        options = self.recipe.method_options
        data = load_segmentation_data(str(options["fisher_data"]), split=options.get("fisher_split"), labelled=False,
                                      max_samples=self.samples)
        device = resolve_device(self.recipe.device)
        self.fishers = []
        for model in models:
            fisher = model_fisher(model, data, device=device, progress=True)
            self.fishers.append({canonical_name(name, model.model_type): tensor for name, tensor in fisher.items()})

    def merge_tensor(self, key: str, tensors: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """Fisher-weighted average; a tensor without gradient (a buffer) has zero Fisher, i.e. the plain λ-average."""
        return fisher_weighted_average(tensors, (fisher.get(key) for fisher in self.fishers), weights)

    def describe(self, layers: list[str]) -> dict[str, Any]:
        options = self.recipe.method_options
        return {"fisher_data": str(options["fisher_data"]), "fisher_split": options.get("fisher_split"),
                "fisher_samples": self.samples, "fisher_labels": "argmax prediction per pixel"}
