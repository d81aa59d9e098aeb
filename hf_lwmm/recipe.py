"""The merge recipe: every choice that determines a merge, saved as ``lwmm_recipe.yaml``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hf_lwmm.errors import LwmmError
from hf_lwmm.refs import ModelRef

RECIPE_NAME = "lwmm_recipe.yaml"
BN_STATS_MODES = ("gaussian", "anchor", "linear")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class MergeRecipe:
    """What to merge and how; ``merge(recipe, output_dir)`` runs it.

    Args:
        models: model references (local folders or ``org/name[@revision][:subfolder]``).
        anchor: the reference whose heads and deep layers win; defaults to the first model.
        method: a name from :data:`hf_lwmm.methods.METHODS` (``layerwise``, ``isotropic``, ``linear``, …).
        alpha: anchor weight in the early layers (layer-wise); defaults to 1/M.
        start_layer: first layer (index or name) where the anchor weight starts rising; defaults to L // 2.
        schedule: how the anchor weight rises after ``start_layer``.
        weights: per-model weights for ``linear`` (non-negative, summing to 1).
        bn_stats: how BatchNorm running statistics merge: ``gaussian``, ``anchor`` or ``linear``.
        dtype: output dtype of floating tensors; defaults to the anchor's.
        device: where the merge math runs (``auto``: an accelerator when present).
        max_shard_size: largest output safetensors file, e.g. ``5GB``.
        allow_pickle: load local ``pytorch_model.bin`` files with ``torch.load(weights_only=True)``.
        method_options: extra options of a method (e.g. Fisher data), recorded as given.
    """

    models: list[str]
    anchor: str | None = None
    method: str = "layerwise"
    alpha: float | None = None
    start_layer: int | str | None = None
    schedule: str = "linear"
    weights: list[float] | None = None
    bn_stats: str = "gaussian"
    dtype: str | None = None
    device: str = "auto"
    max_shard_size: str = "5GB"
    allow_pickle: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)

    @property
    def refs(self) -> list[ModelRef]:
        return [ModelRef.parse(model) for model in self.models]

    @property
    def anchor_index(self) -> int:
        if self.anchor is None:
            return 0
        wanted = ModelRef.parse(self.anchor)
        for index, ref in enumerate(self.refs):
            if ref == wanted:
                return index
        raise LwmmError(f"--anchor {self.anchor}: not among the models being merged ({', '.join(self.models)})")

    @property
    def effective_alpha(self) -> float:
        return 1.0 / len(self.models) if self.alpha is None else self.alpha

    def validate(self) -> None:
        """Check everything that can be checked without reading a model."""
        from hf_lwmm.io.writer import parse_size
        from hf_lwmm.methods import METHODS
        from hf_lwmm.plan import SCHEDULES

        if len(self.models) < 2:
            raise LwmmError(f"need at least two models to merge, got {len(self.models)}")
        self.anchor_index  # raises when the anchor is not among the models
        if self.method not in METHODS:
            raise LwmmError(f"--method {self.method!r}: unknown (choose from {', '.join(METHODS)})")
        if self.alpha is not None and not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise LwmmError(f"--alpha {self.alpha}: must lie in [0, 1]")
        if self.schedule not in SCHEDULES:
            raise LwmmError(f"--schedule {self.schedule!r}: unknown (choose from {', '.join(SCHEDULES)})")
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise LwmmError(f"--weights: {len(self.weights)} given for {len(self.models)} models")
            if any(not math.isfinite(w) or w < 0 for w in self.weights):
                raise LwmmError(f"--weights {self.weights}: must be non-negative")
            if abs(sum(self.weights) - 1.0) > 1e-6:
                raise LwmmError(f"--weights {self.weights}: must sum to 1 (they sum to {sum(self.weights):g})")
        if self.bn_stats not in BN_STATS_MODES:
            raise LwmmError(f"--bn-stats {self.bn_stats!r}: choose from {', '.join(BN_STATS_MODES)}")
        if self.dtype is not None and self.dtype not in OUTPUT_DTYPES:
            raise LwmmError(f"--dtype {self.dtype!r}: choose from {', '.join(OUTPUT_DTYPES)}")
        parse_size(self.max_shard_size, name="--max-shard-size")
        METHODS[self.method].validate_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "recipe") -> "MergeRecipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LwmmError(f"{source}: unknown recipe key {unknown[0]!r}")
        if not isinstance(data.get("models"), list):
            raise LwmmError(f"{source}: 'models' must be a list of model references")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> "MergeRecipe":
        """Read a recipe file (``lwmm_recipe.yaml`` of an earlier merge, or one written by hand)."""
        try:
            document = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise LwmmError(f"--recipe {path}: unreadable ({err.__class__.__name__})") from None
        if not isinstance(document, dict):
            raise LwmmError(f"--recipe {path}: not a YAML mapping")
        return cls.from_dict(document.get("recipe", document), source=f"--recipe {path}")
