"""Evaluation results as people compare them: tables for the terminal, JSON, and a bar plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hf_lwmm.evaluation.data import DataSource
    from hf_lwmm.evaluation.runner import EvaluationReport, RowResult

_MISSING = "—"


def _percent(value: float | None) -> str:
    return _MISSING if value is None or value != value else f"{100 * value:.2f}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths)))
             for cells in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def dataset_name(source: DataSource, samples: int | None = None) -> str:
    """The data as tables name it: its id (a local folder by its last two parts), split and image count."""
    path = Path(source.id)
    name = "/".join(path.parts[-2:]) if path.is_dir() else source.id
    return name + (f" [{source.split}]" if source.split else "") + (f", {samples} images" if samples is not None else "")


#: the footnote of tables that show :data:`_MISSING` for a class a row does not score
MISSING_NOTE = (f"{_MISSING} not scored: the model does not predict this class (its classes differ from the data's; "
                "see --label-map), or no pixel of it is in the labels or the predictions")


def scored_classes(row: RowResult) -> frozenset[str]:
    """The classes a row's mean IoU averages over."""
    return frozenset(name for name, value in row.per_class_iou.items() if value is not None)


def per_class_table(report: EvaluationReport) -> str:
    """IoU (%) per dataset class and row, then the summary figures; rows are numbered columns."""
    legend = [f"dataset {dataset_name(report.source, report.samples)}"]
    legend += [f"  [{i}] {row.name}" for i, row in enumerate(report.rows)]
    header = ["IoU %", *(f"[{i}]" for i in range(len(report.rows)))]
    body = [[name, *(_percent(row.per_class_iou[name]) for row in report.rows)] for name in report.class_names]
    body.append(["mean IoU", *(_percent(row.mean_iou) for row in report.rows)])
    body.append(["mean accuracy", *(_percent(row.mean_accuracy) for row in report.rows)])
    body.append(["pixel accuracy", *(_percent(row.overall_accuracy) for row in report.rows)])
    body.append(["inference cost", *(f"{row.relative_cost}×" for row in report.rows)])
    missing = any(value is None for row in report.rows for value in row.per_class_iou.values())
    return "\n".join([*legend, text_table(header, body), *([MISSING_NOTE] if missing else [])])


def comparison_table(report: EvaluationReport, *, anchor: str) -> str:
    """One line per row: mean IoU, its difference to the anchor's, and relative inference cost.

    A difference only between rows that score the same classes: a mean over 9 classes is not
    comparable with one over 11.
    """
    reference = report.row(anchor)
    classes = scored_classes(reference)

    def difference(row: RowResult) -> str:
        if row.name == anchor:
            return _MISSING
        if scored_classes(row) != classes:
            return "n/a"
        return f"{100 * (row.mean_iou - reference.mean_iou):+.2f}"

    body = [[row.name, _percent(row.mean_iou), difference(row), f"{row.relative_cost}×"] for row in report.rows]
    notes = [f"mIoU % on {dataset_name(report.source, report.samples)}"]
    if any(cells[2] == "n/a" for cells in body):
        notes.append(f"n/a: the row scores other classes than the anchor's {len(classes)}, so their means are not comparable")
    return "\n".join([text_table(["model", "mIoU %", "Δ vs anchor", "inference cost"], body), *notes])


def write_json(path: Path, report: EvaluationReport, **extra: Any) -> None:
    """The report (with any extra top-level fields); NaN figures are written as null. Missing folders are created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_nan_to_null({**report.to_dict(), **extra}), indent=2, default=str) + "\n")


def _nan_to_null(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_to_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_null(item) for item in value]
    return value


def bar_plot(path: Path, report: EvaluationReport, *, anchor: str) -> None:
    """mean IoU per row as bars, the anchor's level as a dashed line, the inference cost on each bar."""
    from hf_lwmm.plotting import new_figure

    names = [row.name for row in report.rows]
    values = [100 * row.mean_iou for row in report.rows]
    figure, axes = new_figure(max(6.0, 1.2 * len(names)), 4.0)
    bars = axes.bar(range(len(names)), values, color=["tab:orange" if name == anchor else "tab:blue" for name in names])
    axes.axhline(100 * report.row(anchor).mean_iou, color="tab:orange", linestyle="--", linewidth=1)
    for bar, row in zip(bars, report.rows):
        axes.annotate(f"{row.relative_cost}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("mean IoU (%)")
    axes.set_title(f"{dataset_name(report.source)} — cost relative to one model")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
