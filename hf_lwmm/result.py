"""What an executed merge produced: its plan, where it went, and the hashes of the weights written.

Layering: data only, on top of :mod:`hf_lwmm.plan`; the card reads it, the executor makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hf_lwmm.align import Alignment
from hf_lwmm.plan import MergePlan
from hf_lwmm.recipe import MergeRecipe
from hf_lwmm.refs import ResolvedModel
from hf_lwmm.schedules import LayerWeights


@dataclass
class MergeResult:
    """A merge as written: the plan, the output folder, file hashes, and what the card records besides."""

    plan: MergePlan
    output_dir: Path
    sha256: dict[str, str]
    files: list[str] = field(default_factory=list)
    #: the Hub repo the folder is meant for (named in the card's usage snippet)
    hub_repo: str | None = None
    #: model-index results (huggingface_hub ``EvalResult``) recorded in the card
    eval_results: list[Any] = field(default_factory=list)

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
        return self.plan.method_parameters

    @property
    def anchor(self) -> int:
        return self.plan.anchor

    @property
    def merged_tensors(self) -> int:
        return self.plan.merged_tensors

    @property
    def anchor_tensors(self) -> int:
        return self.plan.anchor_tensors
