"""The interface every merge method implements, its typed parameters, and the registry that lists them.

A method declares its parameters as a frozen, strict pydantic model (:class:`MethodParameters`); the
recipe validates them, the ``merge`` command makes one flag per field, and the card describes them
from the same declaration (each field's ``description``).

Layering: methods import only pure modules (:mod:`hf_lwmm.schedules`, :mod:`hf_lwmm.methods.functional`,
:mod:`hf_lwmm.errors`); the recipe, the planner and the executor import the methods, never the reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

from hf_lwmm.methods.functional import weighted_average

if TYPE_CHECKING:
    from hf_lwmm.align import Alignment
    from hf_lwmm.refs import ResolvedModel
    from hf_lwmm.schedules import LayerWeights

METHODS: dict[str, type[MergeMethod]] = {}
Method = TypeVar("Method", bound="type[MergeMethod]")


def register_method(cls: Method) -> Method:
    METHODS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class LayerTable:
    """What a card's per-layer table and plot show for a method: one value per model and shared layer."""

    #: what the values are (the plot's axis and the table's caption), e.g. "weight"
    quantity: str
    #: one sentence for the card: how to read the values
    explanation: str
    rows: list[LayerWeights]


class MethodParameters(BaseModel):
    """A method's own parameters: frozen, strict (no ``"0.5"`` → 0.5 coercion), no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def check_models(self, count: int) -> None:
        """Checks that need the number of models (raise :class:`~hf_lwmm.errors.RecipeError`)."""


class NoParameters(MethodParameters):
    """A method without parameters."""


class MergeMethod(ABC):
    """Decides each model's weight per layer, and how one shared tensor is combined."""

    name: ClassVar[str]
    #: one line for the model card and the help
    summary: ClassVar[str]
    #: the parameters this method takes (the recipe's ``parameters``)
    Parameters: ClassVar[type[MethodParameters]] = NoParameters
    #: the per-layer weight rule as a formula for the card (``None``: the same weights in every layer)
    formula: ClassVar[str | None] = None
    #: the paper the method comes from, cited in the card
    citation: ClassVar[str | None] = None
    #: what the values :meth:`describe` adds beyond the parameters mean (for the card)
    derived: ClassVar[dict[str, str]] = {}

    def __init__(self, parameters: MethodParameters, *, num_models: int, anchor: int) -> None:
        if not isinstance(parameters, self.Parameters):
            raise TypeError(f"{self.name} takes {self.Parameters.__name__}, not {type(parameters).__name__}")
        self.parameters = parameters
        self.num_models = num_models
        self.anchor = anchor

    @abstractmethod
    def layer_weights(self, layers: list[str]) -> list[LayerWeights]:
        """Weights of every model for each shared layer."""

    def prepare(self, models: list[ResolvedModel], alignment: Alignment, *, device: torch.device, progress: bool) -> None:
        """Gather what the method needs beyond the weights (e.g. Fisher information); runs in the executor."""

    def merge_tensor(self, key: str, tensors: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """Combine one shared floating tensor (``tensors`` yields each model's copy); default: the weighted average.

        Each copy is the method's own to keep or modify (writing to it never reaches the model's file); drawing
        them one at a time and folding each in keeps one copy in memory, not one per model.
        """
        return weighted_average(tensors, weights)

    @property
    def averages(self) -> bool:
        """Whether :meth:`merge_tensor` is the default weighted average: the executor may then average several small
        tensors of a layer as one (the same sums, element by element, with one kernel per model for all of them)."""
        return type(self).merge_tensor is MergeMethod.merge_tensor

    def describe(self, layers: list[str]) -> dict[str, object]:
        """The parameters as applied to these layers (defaults resolved; after :meth:`prepare`, what it used), for the card."""
        return self.parameters.model_dump()

    def layer_table(self, layer_weights: list[LayerWeights]) -> LayerTable | None:
        """What the card's per-layer table and plot show; ``None``: no table (the same weights in every layer).

        Default: each model's weight per layer, as planned (the method's weights vary with depth).
        """
        return LayerTable("weight", "Each model's weight in the weighted average of the layer's tensors.", layer_weights)


def parameter_help(method: type[MergeMethod], name: str) -> str:
    """The description a method declares for one of its parameters."""
    return method.Parameters.model_fields[name].description or ""
