"""Sweep the layer-wise merge over its two hyper-parameters, α and the start layer (the paper's Fig. 5).

Every grid point is merged into a scratch folder and evaluated on the same data with the evaluation
runner; the anchor alone is evaluated beside them as the reference. Merged models are evaluated
``models_per_pass`` at a time (each pass reads the data once for all of them) and deleted after their
pass, so memory and disk stay bounded by that many models however large the grid.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lwmm.console import progress_bar
from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.report import dataset_name, text_table
from hf_lwmm.plotting import new_figure
from hf_lwmm.recipe import MergeRecipe, RunOptions

if TYPE_CHECKING:  # the runner pulls in transformers and evaluate: only when a sweep runs, not for `lwmm-hub --help`
    from hf_lwmm.evaluation.data import DataSource, SegmentationData
    from hf_lwmm.evaluation.runner import RowResult

DEFAULT_MODELS_PER_PASS = 8
#: default number of start layers, evenly spaced over the shared layers
DEFAULT_START_COUNT = 6


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: the merge's α and start layer, and its evaluation."""

    alpha: float
    start_layer: int
    start_layer_name: str
    result: RowResult

    @property
    def name(self) -> str:
        return point_name(self.alpha, self.start_layer)


@dataclass
class SweepResult:
    anchor: str
    anchor_result: RowResult
    #: the shared layers the start-layer indices count
    layers: list[str]
    alphas: list[float]
    start_layers: list[int]
    points: list[SweepPoint] = field(default_factory=list)
    #: the data every point was evaluated on, and how many images
    source: DataSource | None = None
    samples: int | None = None

    def best(self) -> SweepPoint:
        """Highest mean IoU; ties go to the first grid point (α-major order)."""
        return max(self.points, key=lambda point: point.result.mean_iou)

    def point(self, alpha: float, start_layer: int) -> SweepPoint:
        return next(p for p in self.points if p.alpha == alpha and p.start_layer == start_layer)

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {"anchor": self.anchor, "dataset": asdict(self.source) if self.source else None, "samples": self.samples,
                "anchor_result": asdict(self.anchor_result), "layers": self.layers,
                "alphas": self.alphas, "start_layers": self.start_layers,
                "best": {"alpha": best.alpha, "start_layer": best.start_layer, "start_layer_name": best.start_layer_name,
                         "mean_iou": best.result.mean_iou},
                "points": [{"alpha": p.alpha, "start_layer": p.start_layer, "start_layer_name": p.start_layer_name,
                            **asdict(p.result)} for p in self.points]}


def point_name(alpha: float, start_layer: int) -> str:
    return f"layer-wise α={alpha:g} s={start_layer}"


def shared_layers(models: Sequence[str], *, anchor: str | None = None, options: RunOptions | None = None) -> list[str]:
    """The layers the models share, shallowest first: what start-layer indices count (from the merge plan)."""
    from hf_lwmm.plan import plan_merge

    return plan_merge(MergeRecipe(models=list(models), anchor=anchor), options).layers


def default_start_layers(num_layers: int, count: int = DEFAULT_START_COUNT) -> list[int]:
    """``count`` evenly spaced start layers from 0 (fewer when there are fewer layers)."""
    step = max(1, num_layers // count)
    return list(range(0, num_layers, step))[:count]


def sweep_layerwise(models: Sequence[str], data: SegmentationData, *, anchor: str, alphas: Sequence[float],
                    start_layers: Sequence[int | str] | None = None, merge_options: Mapping[str, Any] | None = None,
                    evaluation: Mapping[str, Any] | None = None, models_per_pass: int = DEFAULT_MODELS_PER_PASS,
                    progress: bool = True, options: RunOptions | None = None) -> SweepResult:
    """Merge and evaluate every (α, start layer) of the grid, α-major.

    ``merge_options``: other recipe fields of every merge (e.g. ``bn_stats``); ``options``: how the merges run.
    """
    from hf_lwmm.evaluation.runner import Predictor, evaluate_predictors
    from hf_lwmm.merge import merge
    from hf_lwmm.plan import plan_merge
    from hf_lwmm.refs import resolve
    from hf_lwmm.schedules import resolve_start_layer

    if not alphas:
        raise LwmmError("--alphas: give at least one α")
    if models_per_pass < 1:
        raise LwmmError(f"--models-per-pass {models_per_pass}: must be at least 1")
    base = MergeRecipe(models=list(models), anchor=anchor, method="layerwise", **dict(merge_options or {}))
    run = (options or RunOptions()).model_copy(update={"progress": False})
    layers = plan_merge(base, run).layers
    alphas = list(dict.fromkeys(float(alpha) for alpha in alphas))
    starts = list(dict.fromkeys(resolve_start_layer(start, layers) for start in (start_layers or default_start_layers(len(layers)))))
    grid = [(alpha, start) for alpha in alphas for start in starts]
    recipes = [base.replace(parameters={"alpha": alpha, "start_layer": start}) for alpha, start in grid]
    evaluation = dict(evaluation or {})
    anchor_entry = [(f"anchor {anchor}", resolve(anchor).folder)]
    anchor_result: RowResult | None = None
    points: list[SweepPoint] = []
    with progress_bar(total=len(grid), desc="sweep", unit="merge", enabled=progress) as bar:
        for first in range(0, len(grid), models_per_pass):
            chunk = list(zip(grid[first: first + models_per_pass], recipes[first: first + models_per_pass]))
            with tempfile.TemporaryDirectory(prefix="lwmm-sweep-") as scratch:
                entries = [] if anchor_result else list(anchor_entry)  # the anchor rides along in the first pass
                for (alpha, start), recipe in chunk:
                    folder = merge(recipe, Path(scratch) / f"alpha{alpha:g}-start{start}", run).output_dir
                    entries.append((point_name(alpha, start), folder))
                    bar.update()
                predictors = [Predictor(name, (index,)) for index, (name, _) in enumerate(entries)]
                rows = evaluate_predictors(entries, predictors, data, progress=False, **evaluation).rows
            if anchor_result is None:
                anchor_result, rows = rows[0], rows[1:]
            points += [SweepPoint(alpha, start, layers[start], row) for ((alpha, start), _), row in zip(chunk, rows)]
    assert anchor_result is not None
    return SweepResult(anchor, anchor_result, layers, alphas, starts, points, source=data.source, samples=len(data))


def sweep_table(result: SweepResult) -> str:
    """mIoU (%) with start layers as rows and α as columns; the best point starred, the anchor below."""
    best = result.best()
    data = f" on {dataset_name(result.source, result.samples)}" if result.source else ""
    header = ["start layer", *(f"α={alpha:.3g}" for alpha in result.alphas)]
    rows = []
    for start in result.start_layers:
        cells = [f"{start} {result.layers[start]}"]
        for alpha in result.alphas:
            point = result.point(alpha, start)
            cells.append(f"{100 * point.result.mean_iou:.2f}" + ("*" if point is best else ""))
        rows.append(cells)
    return "\n".join([f"mIoU %{data} of the layer-wise merge, by start layer (rows) and α (columns)", text_table(header, rows),
                      f"anchor {result.anchor} alone: {100 * result.anchor_result.mean_iou:.2f}",
                      f"best (*): α={best.alpha:.3g}, start layer {best.start_layer} ({best.start_layer_name})"])


def sweep_plot(path: Path, result: SweepResult, *, title: str | None = None) -> None:
    """mIoU against the start layer, one line per α, the anchor alone as a dashed line (Fig. 5 style)."""
    figure, axes = new_figure(7.0, 4.0)
    for alpha in result.alphas:
        values = [100 * result.point(alpha, start).result.mean_iou for start in result.start_layers]
        axes.plot(result.start_layers, values, marker="o", label=f"α = {alpha:.3g}")
    axes.axhline(100 * result.anchor_result.mean_iou, color="black", linestyle="--", linewidth=1, label="anchor alone")
    axes.set_xticks(result.start_layers, [f"{start}\n{result.layers[start]}" for start in result.start_layers], fontsize=7)
    axes.set_xlabel("start layer")
    axes.set_ylabel("mean IoU (%)")
    data = f" on {dataset_name(result.source)}" if result.source else ""
    axes.set_title(title or f"layer-wise merge sweep{data}, anchor {Path(result.anchor).name}", fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
