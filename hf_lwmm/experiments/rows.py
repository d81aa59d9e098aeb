"""Table rows: a zoo model alone, an output ensemble, or a merge; evaluated together, with intervals.

Every row of an experiment is evaluated in one pass over each dataset (merges are made once into a
scratch folder), keeping each image's confusion counts, so that every score gets a bootstrap
interval and any two rows a paired difference interval (:mod:`hf_lwmm.evaluation.bootstrap`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_lwmm.console import progress_bar
from hf_lwmm.evaluation.bootstrap import Interval, bootstrap_difference, bootstrap_mean_iou
from hf_lwmm.evaluation.data import SegmentationData
from hf_lwmm.evaluation.runner import Predictor, RowResult, evaluate_predictors
from hf_lwmm.evaluation.sweep import shared_layers
from hf_lwmm.experiments.zoo import Zoo
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.schedules import alpha_for_share, start_layer_in

#: where a results table's rows are scored: dataset key → row name → result (``None``: cannot run)
Results = dict[str, dict[str, "RowResult | None"]]


@dataclass(frozen=True)
class Row:
    """One result: a zoo model alone, an output ensemble, a merge, or a method that cannot run (why)."""

    name: str
    members: tuple[str, ...]
    method: str
    recipe: MergeRecipe | None = None
    unavailable: str | None = None

    @property
    def cost(self) -> int:
        """Forward passes per image relative to one model."""
        return len(self.members) if self.method == "ensemble" else 1

    @property
    def anchor(self) -> str | None:
        """The zoo name of a merge's anchor (``None`` for a model alone or an ensemble)."""
        return Path(self.recipe.anchor).name if self.recipe and self.recipe.anchor else None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "method": self.method, "models": list(self.members), "relative_cost": self.cost}
        if self.recipe is not None:
            parameters = self.recipe.parameters.model_dump()
            described.update(anchor=self.anchor, alpha=parameters.get("alpha"), start_layer=parameters.get("start_layer"))
        if self.unavailable:
            described["unavailable"] = self.unavailable
        return described


def single(name: str) -> Row:
    return Row(name, (name,), "single")


def ensemble(names: Sequence[str]) -> Row:
    return Row(f"ensemble of {', '.join(names)}", tuple(names), "ensemble")


@dataclass(frozen=True)
class Setting:
    """A layer-wise setting: α as a share t of the way from uniform (1/M) to the anchor alone, and a start layer."""

    share: float
    start_layer: str

    def alpha(self, count: int) -> float:
        return alpha_for_share(self.share, count)

    def start_in(self, layers: list[str]) -> str:
        """The start layer, or the deepest shared layer when these models do not share it."""
        return layers[start_layer_in(self.start_layer, layers)]


@dataclass
class Context:
    """What the experiments share: the zoo, the datasets, options, and the choices made so far."""

    zoo: Zoo
    datasets: dict[str, SegmentationData]
    fisher_options: dict[str, Any]
    device: str
    batch_size: int
    progress: bool
    resamples: int
    ranking: list[str] = field(default_factory=list)
    #: the layer-wise setting chosen on dusk/val for merges of k models
    chosen: dict[int, Setting] = field(default_factory=dict)
    #: the one setting for every k that ``lwmm-hub merge``'s defaults are taken from
    default: Setting | None = None

    def recipe(self, names: Sequence[str], *, anchor: str, method: str, **parameters: Any) -> MergeRecipe:
        folders = [self.zoo.folder(name) for name in names]
        if method == "fisher":
            parameters.update(self.fisher_options)
        return MergeRecipe(models=folders, anchor=self.zoo.folder(anchor), method=method, parameters=parameters)

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(device=self.device, progress=False)

    def setting_for(self, count: int) -> Setting:
        """The setting chosen for ``count`` models, else the nearest size's."""
        nearest = min(self.chosen, key=lambda size: (abs(size - count), size))
        return self.chosen[nearest]

    def layerwise(self, names: Sequence[str], *, anchor: str, setting: Setting | None = None, label: str = "layer-wise") -> Row:
        """A layer-wise merge with ``setting`` (default: the one chosen on dusk/val for this many models)."""
        setting = setting or self.setting_for(len(names))
        layers = shared_layers([self.zoo.folder(name) for name in names], anchor=self.zoo.folder(anchor), options=self.run_options)
        recipe = self.recipe(names, anchor=anchor, method="layerwise", alpha=setting.alpha(len(names)),
                             start_layer=setting.start_in(layers))
        return Row(f"{label} [{', '.join(names)}] anchor {anchor}", tuple(names), label, recipe)

    def merged(self, names: Sequence[str], *, anchor: str, method: str, label: str | None = None) -> Row:
        """A merge with the method's own defaults; ``label`` names the row's method when not ``method``."""
        label = label or method
        recipe = self.recipe(names, anchor=anchor, method=method)
        return Row(f"{label} [{', '.join(names)}] anchor {anchor}", tuple(names), label, recipe)

    def evaluate(self, rows: Sequence[Row]) -> Results:
        """Each dataset → row name → result with per-image counts (``None`` for rows that cannot run)."""
        runnable = [row for row in rows if row.unavailable is None]
        results: Results = {key: {row.name: None for row in rows} for key in self.datasets}
        with tempfile.TemporaryDirectory(prefix="lwmm-experiments-") as scratch:
            folders = {name: Path(self.zoo.folder(name)) for row in runnable if row.recipe is None for name in row.members}
            merges = [row for row in runnable if row.recipe is not None]
            for index, row in enumerate(progress_bar(merges, desc="merging", unit="merge", enabled=self.progress)):
                assert row.recipe is not None
                folders[row.name] = merge(row.recipe, Path(scratch) / f"merge-{index:03d}", self.run_options).output_dir
            entries = list(folders.items())
            position = {name: index for index, (name, _) in enumerate(entries)}
            predictors = [Predictor(row.name, (position[row.name],) if row.recipe else tuple(position[m] for m in row.members))
                          for row in runnable]
            for key, data in self.datasets.items():
                report = evaluate_predictors(entries, predictors, data, batch_size=self.batch_size, progress=self.progress, per_image=True)
                results[key].update({row.name: result for row, result in zip(runnable, report.rows)})
        return results

    def interval(self, result: RowResult) -> Interval:
        assert result.image_confusions is not None
        return bootstrap_mean_iou(result.image_confusions, resamples=self.resamples)

    def difference(self, result: RowResult, reference: RowResult) -> Interval:
        assert result.image_confusions is not None and reference.image_confusions is not None
        return bootstrap_difference(result.image_confusions, reference.image_confusions, resamples=self.resamples)

    def score(self, result: RowResult | None, reason: str | None = None) -> str:
        """``mIoU [95 % interval]`` in percent, or why the row cannot run."""
        if result is None:
            return f"n/a ({reason})" if reason else "n/a"
        return self.interval(result).percent()

    def delta(self, result: RowResult | None, reference: RowResult | None) -> str:
        """The paired difference in points with its interval; marked ``*`` when the interval excludes 0."""
        if result is None or reference is None:
            return "n/a"
        difference = self.difference(result, reference)
        return difference.signed_percent() + ("" if difference.contains(0.0) else " *")

    def records(self, rows: Sequence[Row], results: Results) -> dict[str, Any]:
        """Rows with their mIoU, interval and per-class IoU per dataset (JSON)."""
        def scored(result: RowResult | None) -> dict[str, Any] | None:
            if result is None:
                return None
            interval = self.interval(result)
            return {"mean_iou": result.mean_iou, "interval": [interval.low, interval.high], "per_class_iou": result.per_class_iou}

        return {"rows": [{**row.describe(), **{key: scored(values[row.name]) for key, values in results.items()}} for row in rows]}
