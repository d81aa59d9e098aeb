"""Evaluation results as people compare them: tables for the terminal, JSON, and a bar plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hf_lwmm.evaluation.runner import EvaluationReport

_MISSING = "—"


def _percent(value: float | None) -> str:
    return _MISSING if value is None or value != value else f"{100 * value:.2f}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths)))
             for cells in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def per_class_table(report: EvaluationReport) -> str:
    """IoU (%) per dataset class and row, then the summary figures; rows are numbered columns."""
    source = report.source
    legend = [f"dataset {source.id}" + (f" split {source.split}" if source.split else "") + f": {report.samples} images"]
    legend += [f"  [{i}] {row.name}" for i, row in enumerate(report.rows)]
    header = ["IoU %", *(f"[{i}]" for i in range(len(report.rows)))]
    body = [[name, *(_percent(row.per_class_iou[name]) for row in report.rows)] for name in report.class_names]
    body.append(["mean IoU", *(_percent(row.mean_iou) for row in report.rows)])
    body.append(["mean accuracy", *(_percent(row.mean_accuracy) for row in report.rows)])
    body.append(["pixel accuracy", *(_percent(row.overall_accuracy) for row in report.rows)])
    body.append(["inference cost", *(f"{row.relative_cost}×" for row in report.rows)])
    return "\n".join(legend) + "\n" + text_table(header, body)


def comparison_table(report: EvaluationReport, *, anchor: str) -> str:
    """One line per row: mean IoU, its difference to the anchor's, and relative inference cost."""
    reference = report.row(anchor).mean_iou
    body = [[row.name, _percent(row.mean_iou), _MISSING if row.name == anchor else f"{100 * (row.mean_iou - reference):+.2f}",
             f"{row.relative_cost}×"] for row in report.rows]
    return text_table(["model", "mIoU %", "Δ vs anchor", "inference cost"], body)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.name for row in report.rows]
    values = [100 * row.mean_iou for row in report.rows]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(names)), 4.0))
    bars = axes.bar(range(len(names)), values, color=["tab:orange" if name == anchor else "tab:blue" for name in names])
    axes.axhline(100 * report.row(anchor).mean_iou, color="tab:orange", linestyle="--", linewidth=1)
    for bar, row in zip(bars, report.rows):
        axes.annotate(f"{row.relative_cost}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("mean IoU (%)")
    axes.set_title(f"{report.source.id}" + (f" [{report.source.split}]" if report.source.split else "") + " — cost relative to one model")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
