"""Layer-wise merging against its baselines on one dataset: single models, isotropic and Fisher merges,
and the output ensemble, each with its relative inference cost.

Two passes over the data: the single models and the ensemble first (the best single model becomes the
anchor unless one is given), then the merges, which are written to a temporary folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.data import SegmentationData
from hf_lwmm.evaluation.runner import EvaluationReport, Predictor, evaluate_predictors
from hf_lwmm.recipe import MergeRecipe, RunOptions, find_anchor
from hf_lwmm.refs import resolve


@dataclass
class Comparison:
    report: EvaluationReport
    #: name of the anchor's row (a single model)
    anchor: str
    #: merge recipes by row name, as run
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)


def compare_models(models: Sequence[str], data: SegmentationData, *, anchor: str | None = None,
                   fisher_options: Mapping[str, Any] | None = None, layerwise_options: Mapping[str, Any] | None = None,
                   evaluation: Mapping[str, Any] | None = None, progress: bool = True,
                   options: RunOptions | None = None) -> Comparison:
    """Evaluate every model, the ensemble, and the isotropic, Fisher (when ``fisher_options`` name data)
    and layer-wise merges; ``evaluation`` holds extra :func:`evaluate_predictors` options.

    ``fisher_options`` and ``layerwise_options`` are those methods' parameters; ``options``: how the merges run.
    """
    if len(models) < 2:
        raise LwmmError(f"need at least two models to compare, got {len(models)}")
    evaluation = dict(evaluation or {})
    folders = [(name, resolve(name).folder) for name in models]
    singles = [Predictor(name, (index,)) for index, name in enumerate(models)]
    ensemble = Predictor(f"ensemble of {len(models)}", tuple(range(len(models))))
    report = evaluate_predictors(folders, [*singles, ensemble], data, progress=progress, **evaluation)
    if anchor:
        anchor_name = models[find_anchor(list(models), anchor)]
    else:
        anchor_name = max(singles, key=lambda p: report.row(p.name).mean_iou).name

    recipes = {"isotropic merge": MergeRecipe(models=list(models), anchor=anchor_name, method="isotropic")}
    if fisher_options:
        recipes["fisher merge"] = MergeRecipe(models=list(models), anchor=anchor_name, method="fisher", parameters=dict(fisher_options))
    recipes["layer-wise merge"] = MergeRecipe(models=list(models), anchor=anchor_name, method="layerwise",
                                              parameters=dict(layerwise_options or {}))
    run = (options or RunOptions()).model_copy(update={"progress": progress})
    with tempfile.TemporaryDirectory(prefix="lwmm-compare-") as scratch:
        from hf_lwmm.merge import merge

        merged = [(name, merge(recipe, Path(scratch) / name.replace(" ", "-"), run).output_dir) for name, recipe in recipes.items()]
        merged_report = evaluate_predictors(merged, [Predictor(name, (index,)) for index, (name, _) in enumerate(merged)], data,
                                            progress=progress, **evaluation)
    rows = [*report.rows[:-1], *merged_report.rows, report.rows[-1]]
    combined = EvaluationReport(report.source, report.class_names, report.samples, rows)
    return Comparison(combined, anchor_name, {name: recipe.to_dict() for name, recipe in recipes.items()})

