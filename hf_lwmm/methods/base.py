"""The interface every merge method implements, and the registry that lists them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import torch

from hf_lwmm.errors import LwmmError
from hf_lwmm.methods.functional import weighted_average

if TYPE_CHECKING:
    from hf_lwmm.align import Alignment
    from hf_lwmm.plan import LayerWeights
    from hf_lwmm.recipe import MergeRecipe
    from hf_lwmm.refs import ResolvedModel

METHODS: dict[str, type["MergeMethod"]] = {}


def register_method(cls: type["MergeMethod"]) -> type["MergeMethod"]:
    METHODS[cls.name] = cls
    return cls


class MergeMethod(ABC):
    """Decides each model's weight per layer, and how one shared tensor is combined."""

    name: ClassVar[str]
    #: one line for the model card
    summary: ClassVar[str]

    def __init__(self, recipe: "MergeRecipe") -> None:
        self.recipe = recipe

    #: whether ``--weights`` is "forbidden", "optional" or "required" for this method
    weights_option: ClassVar[str] = "forbidden"

    @classmethod
    def validate_recipe(cls, recipe: "MergeRecipe") -> None:
        """Reject options that make no sense for this method (called before any model is read)."""
        if recipe.weights is not None and cls.weights_option == "forbidden":
            raise LwmmError(f"--weights: not used by --method {cls.name} (only by methods with per-model weights, e.g. linear)")
        if recipe.weights is None and cls.weights_option == "required":
            raise LwmmError(f"--method {cls.name} needs --weights (one per model, non-negative, summing to 1)")

    def prepare(self, models: list["ResolvedModel"], alignment: "Alignment") -> None:
        """Gather what the method needs beyond the weights (e.g. Fisher information)."""

    @abstractmethod
    def layer_weights(self, layers: list[str], *, anchor: int) -> list["LayerWeights"]:
        """Weights of every model for each shared layer."""

    def merge_tensor(self, key: str, tensors: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """Combine one shared floating tensor; the default is the weighted average.

        ``tensors`` yields each model's copy lazily, all in one buffer: a copy is valid only until the
        next is drawn, so fold each in before moving on (copy it to keep it).
        """
        return weighted_average(tensors, weights)

    def describe(self, layers: list[str]) -> dict[str, object]:
        """Method parameters recorded in the card."""
        return {}
