"""What an experiment produces (tables, JSON, plots) and how it is written: ``<key>.md``, ``<key>.json``, ``results.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOISE_NOTE = ("Scores: mIoU % [95 % bootstrap interval over images]. Δ: paired difference in points on the same resampled "
              "images, [95 % interval]; * marks a difference whose interval excludes 0 — only those are claimed.")


@dataclass
class Table:
    """A results table for one dataset; the experiment's JSON holds the numbers behind it."""

    title: str
    header: list[str]
    cells: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.header)} |", f"|{'|'.join('---' if i == 0 else '---:' for i in range(len(self.header)))}|"]
        lines += [f"| {' | '.join(cells)} |" for cells in self.cells]
        return "\n\n".join([f"**{self.title}**", "\n".join(lines), *self.notes])


@dataclass
class Experiment:
    """What one experiment produced: tables (per dataset), JSON records, plots, and its wall time."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0


def write_experiment(out: Path, experiment: Experiment) -> None:
    tables = "\n\n".join(table.markdown() for table in experiment.tables)
    (out / f"{experiment.key}.md").write_text(f"## {experiment.title}\n\n{tables}\n")
    document = {"title": experiment.title, **experiment.records}
    (out / f"{experiment.key}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")


def results_markdown(experiments: Sequence[Experiment], *, command: str, header_lines: Sequence[str], seconds: float) -> str:
    lines = ["# Layer-wise merging on the CamVid day→dusk zoo: results", "", "```", command, "```", "", *header_lines, "",
             NOISE_NOTE, "", f"Total wall time {seconds / 60:.1f} min.", "", "| experiment | wall time (s) |", "|---|---:|"]
    lines += [f"| {experiment.title} | {experiment.seconds:.1f} |" for experiment in experiments]
    for experiment in experiments:
        lines += ["", f"## {experiment.title}", ""]
        lines += [f"![{plot}]({plot})" for plot in experiment.plots] + ([""] if experiment.plots else [])
        lines += ["\n\n".join(table.markdown() for table in experiment.tables)]
    return "\n".join(lines) + "\n"


def line_plot(path: Path, x: Sequence[int], curves: dict[str, list[tuple[float, float, float]]], *, xlabel: str, title: str) -> None:
    """One line per curve of (estimate, low, high) fractions, the interval as a shaded band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.0, 4.0))
    for label, values in curves.items():
        estimate, low, high = (list(column) for column in zip(*values))
        line, = axes.plot(x, [100 * value for value in estimate], marker="o", label=label)
        axes.fill_between(x, [100 * value for value in low], [100 * value for value in high], color=line.get_color(), alpha=0.12)
    axes.set_xticks(list(x))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("mean IoU (%), 95 % interval shaded")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
