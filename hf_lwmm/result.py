"""What an executed merge produced: its plan, where it went, and the hashes of the weights written.

Layering: data only, on top of :mod:`hf_lwmm.plan`; the card reads it, the executor makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from hf_lwmm.align import Alignment
from hf_lwmm.plan import MergePlan
from hf_lwmm.recipe import MergeRecipe
from hf_lwmm.refs import ResolvedModel
from hf_lwmm.schedules import LayerWeights


@dataclass(frozen=True)
class EvaluatedRow:
    """One row of the card's results table: a source alone, the merge, or the sources' output ensemble."""

    name: str
    #: ``source``, ``anchor``, ``merge`` or ``ensemble``
    role: str
    mean_iou: float
    #: forward passes per image, relative to one model
    relative_cost: int


@dataclass(frozen=True)
class CardEvaluation:
    """The data a merge was evaluated on and the rows the card shows."""

    #: the data as the card names it: a Hub dataset id, or a local folder's name
    dataset: str
    #: the dataset is a local folder (no Hub id to link)
    local: bool
    split: str | None
    revision: str | None
    images: int
    rows: list[EvaluatedRow]

    @property
    def merge_row(self) -> EvaluatedRow:
        return next(row for row in self.rows if row.role == "merge")


@dataclass
class MergeResult:
    """A merge as written: the plan, the output folder, the hashes of the files written and read, and what the card records besides."""

    plan: MergePlan
    output_dir: Path
    sha256: dict[str, str]
    #: per source (in the plan's order), the sha256 of each of its weights files, by file name
    source_sha256: list[dict[str, str]]
    files: list[str] = field(default_factory=list)
    #: the Hub repo the folder is meant for (the card's title and usage snippet name it)
    hub_repo: str | None = None
    #: the card's title when not pushing (default: the output folder's name)
    name: str | None = None
    #: ``merge --eval-dataset``'s results, recorded in the card (table and model-index)
    evaluation: CardEvaluation | None = None

    @property
    def title(self) -> str:
        """What the card calls the model: the Hub repo when pushing, else the given name, else the folder's."""
        return self.hub_repo or self.name or self.output_dir.name

    @property
    def recipe(self) -> MergeRecipe:
        return self.plan.recipe

    @property
    def models(self) -> list[ResolvedModel]:
        return cast("list[ResolvedModel]", self.plan.models)  # a result's plan has every model on disk

    @property
    def alignment(self) -> Alignment:
        return self.plan.alignment

    @property
    def layer_weights(self) -> list[LayerWeights]:
        return self.plan.layer_weights

    @property
    def method_parameters(self) -> dict[str, object]:
        """The method's parameters as applied, and what its preparation used (e.g. the Fisher data's images)."""
        return self.plan.method.describe(self.plan.layers)

    @property
    def anchor(self) -> int:
        return self.plan.anchor

    @property
    def merged_tensors(self) -> int:
        return self.plan.merged_tensors

    @property
    def anchor_tensors(self) -> int:
        return self.plan.anchor_tensors
