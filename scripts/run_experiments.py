#!/usr/bin/env python
"""The paper's experiments in miniature on the CamVid day→dusk zoo (built by ``scripts/build_zoo.py``).

    python scripts/run_experiments.py --zoo ../zoo --data ../shared/data/camvid-daydusk --out ../results \\
        [--test-dir DIR] [--device auto|cpu|cuda]

Writes Markdown + JSON tables and PNG plots into ``--out`` and summarises them in ``results.md``:

* ranking: every zoo model on dusk/val; the merge pool (the base and the UDA strategies: same classes,
  same head) is ranked by it;
* Fig. 5: sweep of α and the start layer of the layer-wise merge of the best four (anchor: the best);
* Table 2: the best 2…5 merged isotropically, by Fisher (Fisher images: unlabelled dusk/train), as an
  output ensemble and layer-wise (anchor: the best), with relative inference cost;
* Table 3: every pair of pool models, each as the anchor (layer-wise), Δ vs the anchor alone;
* Table 4: the best model merged with (a) the coarse-class model, (b) the wide-head model;
* Fig. 3: merging the last 1…4 checkpoints of one run;
* Fig. 2: per-layer discrepancy between checkpoints and between strategies (``lwmm-hub diff``'s measure).

Selection protocol: the ranking and the layer-wise hyper-parameters come from dusk/val only. α is
chosen as a share ``t`` of the way from the uniform weight to the anchor alone, α(M) = 1/M + t·(1 − 1/M),
so that one choice applies to merges of any size; the start layer is chosen by name. With ``--test-dir``
(``images/`` + ``labels/`` frames never used for any choice) every final table is computed there too,
with the models and hyper-parameters chosen on dusk/val.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning on cores shared with other processes (see build_zoo.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from hf_lwmm.align import TensorStatus  # noqa: E402
from hf_lwmm.console import Verbosity, configure, progress_bar  # noqa: E402
from hf_lwmm.diff import Discrepancy, discrepancy_plot, model_discrepancy  # noqa: E402
from hf_lwmm.errors import LwmmError  # noqa: E402
from hf_lwmm.evaluation.data import SegmentationData, load_segmentation_data  # noqa: E402
from hf_lwmm.evaluation.runner import Predictor, RowResult, evaluate_predictors  # noqa: E402
from hf_lwmm.evaluation.sweep import SweepResult, shared_layers, sweep_layerwise, sweep_plot, sweep_table  # noqa: E402
from hf_lwmm.merge import merge  # noqa: E402
from hf_lwmm.plan import plan_merge  # noqa: E402
from hf_lwmm.recipe import MergeRecipe, RunOptions  # noqa: E402

MANIFEST = "zoo.json"
#: zoo roles (``zoo.json``) of the models that share the base's classes and head: the merge pool
POOL_ROLES = ("base", "strategy")
COARSE_ROLE = "class-set variant"
WIDE_HEAD_ROLE = "head-width variant"
VALIDATION = "dusk/val"
TEST = "test"
#: shares t of the way from uniform (t = 0) to the anchor alone (t = 1) swept for α
SWEEP_SHARES = (0.0, 1 / 3, 2 / 3, 0.9)
#: start layers swept: where each encoder stage and the decode head begin, and the fusion layer
SWEEP_STARTS = ("patch_embeddings.0", "patch_embeddings.1", "patch_embeddings.2", "patch_embeddings.3", "linear_c.0", "linear_fuse")
SWEEP_MODELS = 4
MAX_MERGED = 5
DIFF_TAUS = (0.01, 0.1, 0.5)
PLOT_TAU = 0.1


# ----------------------------------------------------------------------------------------------- zoo
@dataclass(frozen=True)
class ZooModel:
    name: str
    role: str
    num_labels: int
    decoder_hidden_size: int
    #: the mIoU the zoo's card records for dusk/val (a cross-check of this script's evaluation)
    card_dusk_val: float | None


@dataclass(frozen=True)
class Zoo:
    """The zoo's folders by role, read from its ``zoo.json`` manifest."""

    root: Path
    models: dict[str, ZooModel]
    #: one run's checkpoint folders in step order; the last is the run's final model
    checkpoints: list[str]

    def folder(self, name: str) -> str:
        return str(self.root / name)

    def with_role(self, *roles: str) -> list[str]:
        return [name for name, model in self.models.items() if model.role in roles]

    @property
    def pool(self) -> list[str]:
        return self.with_role(*POOL_ROLES)

    def variant(self, role: str) -> str | None:
        found = self.with_role(role)
        return found[0] if found else None


def load_zoo(root: Path) -> Zoo:
    """Read ``zoo.json`` (models with role, classes and head width; checkpoint series) and check the folders."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        models = {entry["name"]: ZooModel(entry["name"], entry["role"], int(entry["num_labels"]), int(entry["decoder_hidden_size"]),
                                          (entry.get("scores") or {}).get("dusk_val"))
                  for entry in manifest["models"]}
        series = list(manifest.get("checkpoint_series", {}).values())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LwmmError(f"--zoo {root}: no readable {MANIFEST} ({err.__class__.__name__}); build the zoo with scripts/build_zoo.py") from None
    missing = [name for name in models if not (root / name / "config.json").is_file()]
    if missing:
        raise LwmmError(f"--zoo {root}: model folder {missing[0]} listed in {MANIFEST} is missing or incomplete")
    complete_series = [names for names in series if all(name in models for name in names)]  # a build in progress lists future folders
    zoo = Zoo(root, models, complete_series[0] if complete_series else [])
    shapes = {(models[name].num_labels, models[name].decoder_hidden_size) for name in zoo.pool}
    if len(zoo.pool) < 2 or len(shapes) != 1:
        raise LwmmError(f"--zoo {root}: needs ≥ 2 models with roles {', '.join(POOL_ROLES)} sharing classes and head width")
    return zoo


# ------------------------------------------------------------------------------------------ rows
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

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "method": self.method, "models": list(self.members), "relative_cost": self.cost}
        if self.recipe is not None:
            parameters = self.recipe.parameters
            described.update(anchor=anchor_of(self), alpha=getattr(parameters, "alpha", None),
                             start_layer=getattr(parameters, "start_layer", None))
        if self.unavailable:
            described["unavailable"] = self.unavailable
        return described


def single(name: str) -> Row:
    return Row(name, (name,), "single")


def ensemble(names: Sequence[str]) -> Row:
    return Row(f"ensemble of {', '.join(names)}", tuple(names), "ensemble")


@dataclass(frozen=True)
class Chosen:
    """Layer-wise hyper-parameters chosen on dusk/val."""

    share: float
    start_layer: str

    def alpha(self, count: int) -> float:
        return 1 / count + self.share * (1 - 1 / count)

    def start_in(self, layers: list[str]) -> str:
        """The chosen start layer, or the deepest shared layer when these models do not share it."""
        return self.start_layer if self.start_layer in layers else layers[-1]


@dataclass
class Context:
    """Everything the experiments share: the zoo, the datasets, options, and the results so far."""

    zoo: Zoo
    datasets: dict[str, SegmentationData]
    fisher_options: dict[str, Any]
    device: str
    batch_size: int
    progress: bool
    ranking: list[str] = field(default_factory=list)
    chosen: Chosen | None = None

    def recipe(self, names: Sequence[str], *, anchor: str, method: str, **parameters: Any) -> MergeRecipe:
        folders = [self.zoo.folder(name) for name in names]
        if method == "fisher":
            parameters.update(self.fisher_options)
        return MergeRecipe(models=folders, anchor=self.zoo.folder(anchor), method=method, parameters=parameters)

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(device=self.device, progress=False)

    def layerwise(self, names: Sequence[str], *, anchor: str) -> Row:
        """Layer-wise merge with the hyper-parameters chosen on dusk/val."""
        assert self.chosen is not None
        layers = shared_layers([self.zoo.folder(name) for name in names], anchor=self.zoo.folder(anchor))
        alpha, start = self.chosen.alpha(len(names)), self.chosen.start_in(layers)
        recipe = self.recipe(names, anchor=anchor, method="layerwise", alpha=alpha, start_layer=start)
        return Row(f"layer-wise [{', '.join(names)}] anchor {anchor}", tuple(names), "layer-wise", recipe)

    def merged(self, names: Sequence[str], *, anchor: str, method: str, label: str | None = None) -> Row:
        """A merge with the method's own defaults; ``label`` names the row's method when not ``method``."""
        label = label or method
        recipe = self.recipe(names, anchor=anchor, method=method)
        return Row(f"{label} [{', '.join(names)}] anchor {anchor}", tuple(names), label, recipe)

    def evaluate(self, rows: Sequence[Row]) -> dict[str, dict[str, RowResult | None]]:
        """Each dataset → row name → result (``None`` for rows that cannot run); merges are made once."""
        runnable = [row for row in rows if row.unavailable is None]
        results: dict[str, dict[str, RowResult | None]] = {key: {row.name: None for row in rows} for key in self.datasets}
        with tempfile.TemporaryDirectory(prefix="lwmm-experiments-") as scratch:
            folders = {name: Path(self.zoo.folder(name)) for row in runnable if row.recipe is None for name in row.members}
            merges = [row for row in runnable if row.recipe is not None]
            for index, row in enumerate(progress_bar(merges, desc="merging", unit="merge", enabled=self.progress)):
                folders[row.name] = merge(row.recipe, Path(scratch) / f"merge-{index:03d}", self.run_options).output_dir
            entries = list(folders.items())
            position = {name: index for index, (name, _) in enumerate(entries)}
            predictors = [Predictor(row.name, (position[row.name],) if row.recipe else tuple(position[m] for m in row.members))
                          for row in runnable]
            for key, data in self.datasets.items():
                report = evaluate_predictors(entries, predictors, data, batch_size=self.batch_size, progress=self.progress)
                results[key].update({row.name: result for row, result in zip(runnable, report.rows)})
        return results


# ----------------------------------------------------------------------------------------- tables
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
    """What one experiment produced: tables (per dataset), JSON, plots, and its wall time."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0


def percent(result: RowResult | None, reason: str | None = None) -> str:
    if result is None:
        return f"n/a ({reason})" if reason else "n/a"
    return f"{100 * result.mean_iou:.2f}"


def delta(result: RowResult | None, reference: RowResult | None) -> str:
    if result is None or reference is None:
        return "n/a"
    return f"{100 * (result.mean_iou - reference.mean_iou):+.2f}"


def records_of(rows: Sequence[Row], results: dict[str, dict[str, RowResult | None]]) -> dict[str, Any]:
    """Rows with their mIoU per dataset (JSON)."""
    return {"rows": [{**row.describe(), "mean_iou": {key: None if values[row.name] is None else values[row.name].mean_iou
                                                        for key, values in results.items()},
                      "per_class_iou": {key: None if values[row.name] is None else values[row.name].per_class_iou
                                        for key, values in results.items()}}
                     for row in rows]}


# ------------------------------------------------------------------------------------ experiments
def rank_models(context: Context) -> Experiment:
    """Every zoo model alone; the pool ranked by dusk/val mIoU (ties: by name)."""
    zoo = context.zoo
    rows = [single(name) for name in zoo.models]
    results = context.evaluate(rows)
    validation = results[VALIDATION]
    context.ranking = sorted(zoo.pool, key=lambda name: (-validation[name].mean_iou, name))
    experiment = Experiment("ranking", "Zoo models on dusk/val (the merge pool ranked)", records=records_of(rows, results))
    experiment.records["ranking"] = context.ranking
    order = context.ranking + [name for name in zoo.models if name not in context.ranking]
    for key, values in results.items():
        cells = []
        for name in order:
            model = zoo.models[name]
            rank = str(context.ranking.index(name) + 1) if name in context.ranking else "—"
            card = "—" if model.card_dusk_val is None else f"{100 * model.card_dusk_val:.2f}"
            cells.append([rank, name, model.role, str(model.num_labels), str(model.decoder_hidden_size), percent(values[name]), card])
        experiment.tables.append(Table(f"{key}: every zoo model alone", ["rank", "model", "role", "classes", "head width", f"mIoU % ({key})",
                                                                          "card's dusk/val"], cells,
                                       ["Ranks (pool only) come from dusk/val. mIoU over the dataset classes each model predicts "
                                        "(pixels of classes a model folds away are left out of its score)."]))
    return experiment


def sweep_start_layers(layers: list[str]) -> list[str]:
    return [name for name in SWEEP_STARTS if name in layers]


def sweep(context: Context, out: Path) -> Experiment:
    """Fig. 5: α × start layer for the best ``SWEEP_MODELS`` (anchor: the best), on dusk/val; chooses the hyper-parameters."""
    zoo = context.zoo
    names = context.ranking[:SWEEP_MODELS]
    count = len(names)
    folders = [zoo.folder(name) for name in names]
    layers = shared_layers(folders, anchor=folders[0])
    alphas = [1 / count + share * (1 - 1 / count) for share in SWEEP_SHARES]
    result: SweepResult = sweep_layerwise(folders, context.datasets[VALIDATION], anchor=folders[0], alphas=alphas,
                                          start_layers=sweep_start_layers(layers), options=context.run_options,
                                          evaluation={"batch_size": context.batch_size}, progress=context.progress)
    best = result.best()
    context.chosen = Chosen(share=SWEEP_SHARES[result.alphas.index(best.alpha)], start_layer=best.start_layer_name)
    sweep_plot(out / "fig5_sweep.png", result, title=f"layer-wise merge of {', '.join(names)} (anchor {names[0]}), dusk/val")
    experiment = Experiment("fig5", f"Fig. 5: sweep of α and the start layer (best {count}, anchor {names[0]}, dusk/val)",
                            records={**result.to_dict(), "models": names, "shares": list(SWEEP_SHARES),
                                     "chosen": {"share": context.chosen.share, "start_layer": context.chosen.start_layer}},
                            plots=["fig5_sweep.png"])
    header = ["start layer", *(f"α={alpha:.3g} (t={share:.2g})" for alpha, share in zip(result.alphas, SWEEP_SHARES))]
    cells = [[f"{start} {result.layers[start]}", *(percent(result.point(alpha, start).result) + ("**←**" if result.point(alpha, start) is best else "")
                                                    for alpha in result.alphas)] for start in result.start_layers]
    command = shlex.join(["lwmm-hub", "sweep", *folders, "--dataset", str(context.datasets[VALIDATION].source.id), "--anchor", folders[0],
                          "--alphas", ",".join(f"{alpha:.6g}" for alpha in result.alphas),
                          "--start-layers", ",".join(str(start) for start in result.start_layers)])
    experiment.tables.append(Table(f"{VALIDATION}: layer-wise merge of {', '.join(names)}, anchor {names[0]}", header, cells,
                                   [f"Anchor alone: {percent(result.anchor_result)}. Chosen (←): t = {context.chosen.share:.3g} "
                                    f"(α = 1/M + t·(1 − 1/M)), start layer {context.chosen.start_layer}.",
                                    f"Same sweep from the CLI: `{command}`"]))
    print(sweep_table(result))
    return experiment


def table2(context: Context) -> Experiment:
    """The best 2…5: isotropic, Fisher, output ensemble, layer-wise (chosen and default hyper-parameters)."""
    ranking = context.ranking
    best = ranking[0]
    sizes = list(range(2, min(MAX_MERGED, len(ranking)) + 1))
    methods: list[tuple[str, str, Callable[[list[str]], Row]]] = [
        ("isotropic", "1×", lambda names: context.merged(names, anchor=best, method="isotropic")),
        ("Fisher (dusk/train images)", "1×", lambda names: context.merged(names, anchor=best, method="fisher")),
        ("output ensemble", "k×", ensemble),
        ("layer-wise (α, s chosen on dusk/val)", "1×", lambda names: context.layerwise(names, anchor=best)),
        ("layer-wise (defaults α = 1/M, s = L/2)", "1×", lambda names: context.merged(names, anchor=best, method="layerwise", label="layer-wise defaults")),
    ]
    grid = {(label, size): make(ranking[:size]) for label, _, make in methods for size in sizes}
    rows = [single(best), *grid.values()]
    results = context.evaluate(rows)
    experiment = Experiment("table2", "Table 2: merging the best k models", records=records_of(rows, results))
    for key, values in results.items():
        cells = [[f"best single model ({best})", "1×", *(percent(values[best]) for _ in sizes)]]
        cells += [[label, cost, *(percent(values[grid[label, size].name]) for size in sizes)] for label, cost, _ in methods]
        notes = [f"k = {size}: {', '.join(ranking[:size])}" for size in sizes]
        experiment.tables.append(Table(f"{key}: mIoU % of the best k models merged (anchor {best})", ["method", "inference cost",
                                                                                                     *(f"k = {size}" for size in sizes)],
                                       cells, notes))
    return experiment


def table3(context: Context) -> Experiment:
    """Every pair of pool models, each as the anchor of a layer-wise merge."""
    pairs = [(anchor, other) for anchor, other in itertools.permutations(context.ranking, 2)]
    merged = {pair: context.layerwise(list(pair), anchor=pair[0]) for pair in pairs}
    rows = [*(single(name) for name in context.ranking), *merged.values()]
    results = context.evaluate(rows)
    experiment = Experiment("table3", "Table 3: every pair, each model as the anchor (layer-wise)", records=records_of(rows, results))
    for key, values in results.items():
        cells = [[anchor, other, percent(values[anchor]), percent(values[other]), percent(values[merged[anchor, other].name]),
                  delta(values[merged[anchor, other].name], values[anchor])] for anchor, other in pairs]
        improved = sum(values[merged[pair].name].mean_iou > values[pair[0]].mean_iou for pair in pairs)
        experiment.tables.append(Table(f"{key}: layer-wise merge of two models", ["anchor", "other", "anchor alone", "other alone",
                                                                                  "merged", "Δ vs anchor"], cells,
                                       [f"The merge beats its anchor in {improved} of {len(pairs)} ordered pairs."]))
    return experiment


def mismatch_reason(context: Context, names: Sequence[str]) -> str:
    """Why a merge of every tensor cannot run: the tensors whose shapes differ, e.g. the classifier."""
    alignment = plan_merge(MergeRecipe(models=[context.zoo.folder(name) for name in names], method="isotropic")).alignment
    differing = [tensor for tensor in alignment.tensors.values() if tensor.status is TensorStatus.SHAPE_MISMATCH]
    if not differing:
        return ""
    example = differing[-1]
    shapes = " vs ".join("×".join(map(str, shape)) for shape in example.shapes.values())
    return f"{len(differing)} tensors differ in shape, e.g. {example.key} {shapes}"


def table4(context: Context) -> Experiment:
    """The best model with (a) the coarse-class model, (b) the wide-head model: what can merge at all."""
    zoo, best = context.zoo, context.ranking[0]
    variants = [(part, name) for part, name in (("(a) different classes", zoo.variant(COARSE_ROLE)),
                                                ("(b) different head width", zoo.variant(WIDE_HEAD_ROLE))) if name]
    layout: list[tuple[str, str, list[tuple[str, Row]]]] = []
    for part, variant in variants:
        pair = [best, variant]
        reason = mismatch_reason(context, pair)
        strict = f"{reason}: not every weight can be averaged" if reason else None
        entries = [
            (f"{best} alone", single(best)),
            (f"{variant} alone", single(variant)),
            ("isotropic (every tensor)", Row(f"isotropic {part}", tuple(pair), "isotropic", unavailable=strict)
             if strict else context.merged(pair, anchor=best, method="isotropic")),
            ("Fisher (every tensor)", Row(f"fisher {part}", tuple(pair), "fisher", unavailable=strict)
             if strict else context.merged(pair, anchor=best, method="fisher")),
            ("output ensemble (2×)", ensemble(pair)),
            (f"isotropic on shared tensors, the rest from {best}", context.merged(pair, anchor=best, method="isotropic")),
            (f"layer-wise, anchor {best}", context.layerwise(pair, anchor=best)),
            (f"layer-wise, anchor {variant}", context.layerwise(pair, anchor=variant)),
        ]
        layout.append((part, variant, entries))
    rows = list({row.name: row for _, _, entries in layout for _, row in entries}.values())
    results = context.evaluate(rows)
    experiment = Experiment("table4", "Table 4: merging models with different classes or head widths", records=records_of(rows, results))
    for key, values in results.items():
        for part, variant, entries in layout:
            cells = [[label, percent(values[row.name], row.unavailable),
                      "—" if row.method == "single" else delta(values[row.name], values[anchor_of(row) or best])] for label, row in entries]
            notes = [f"Δ: against the merge's anchor alone ({best} for the ensemble). Ensembles of models with other classes average "
                     "softmax in dataset classes (matched by name). A model or merge with the coarse classes is scored on the "
                     "dataset classes it predicts."]
            experiment.tables.append(Table(f"{key}: {part} — {best} with {variant}", ["method", "mIoU %", "Δ vs anchor"], cells, notes))
    return experiment


def anchor_of(row: Row) -> str | None:
    """The zoo name of a merge's anchor (``None`` for a model alone or an ensemble)."""
    return Path(row.recipe.anchor).name if row.recipe and row.recipe.anchor else None


def checkpoints(context: Context, out: Path) -> Experiment:
    """Fig. 3: merging the last 1…n checkpoints of one run (anchor: the final one)."""
    series = context.zoo.checkpoints
    final = series[-1]
    sizes = list(range(1, len(series) + 1))
    methods: list[tuple[str, Callable[[list[str]], Row]]] = [
        ("isotropic", lambda names: context.merged(names, anchor=final, method="isotropic")),
        ("layer-wise (chosen α, s)", lambda names: context.layerwise(names, anchor=final)),
        ("output ensemble", ensemble),
    ]
    grid = {(label, size): make(series[-size:]) for label, make in methods for size in sizes[1:]}
    rows = [single(final), *grid.values()]
    results = context.evaluate(rows)
    experiment = Experiment("checkpoints", f"Fig. 3: merging the last k checkpoints of {final}", records=records_of(rows, results),
                            plots=[f"fig3_checkpoints_{key.replace('/', '-')}.png" for key in results])
    for key, values in results.items():
        curves = {label: [values[final].mean_iou] + [values[grid[label, size].name].mean_iou for size in sizes[1:]] for label, _ in methods}
        cells = [[label, "k×" if label == "output ensemble" else "1×", *(f"{100 * value:.2f}" for value in curve)] for label, curve in curves.items()]
        experiment.tables.append(Table(f"{key}: mIoU % merging the last k checkpoints (k = 1: {final} alone)",
                                       ["method", "inference cost", *(f"k = {size}" for size in sizes)], cells,
                                       [f"k = {size}: {', '.join(series[-size:])}" for size in sizes[1:]]))
        line_plot(out / experiment.plots[len(experiment.tables) - 1], sizes, curves, xlabel="checkpoints merged (latest k)",
                  title=f"{key}: checkpoints of {final}")
    return experiment


def line_plot(path: Path, x: Sequence[int], curves: dict[str, list[float]], *, xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.0, 4.0))
    for label, values in curves.items():
        axes.plot(x, [100 * value for value in values], marker="o", label=label)
    axes.set_xticks(list(x))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("mean IoU (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def discrepancies(context: Context, out: Path) -> Experiment:
    """Fig. 2: per-layer discrepancy between consecutive checkpoints and between each pool model and the best."""
    zoo, best = context.zoo, context.ranking[0]
    pairs = [(f"checkpoints {a} → {b}", a, b) for a, b in zip(zoo.checkpoints, zoo.checkpoints[1:])]
    pairs += [(f"strategies {best} vs {other}", best, other) for other in context.ranking[1:]]
    results: dict[str, Discrepancy] = {}
    for label, first, second in progress_bar(pairs, desc="discrepancy", unit="pair", enabled=context.progress):
        plan = plan_merge(MergeRecipe(models=[zoo.folder(first), zoo.folder(second)], method="isotropic"))
        results[label] = model_discrepancy(plan, taus=DIFF_TAUS, progress=False)
    discrepancy_plot(out / "fig2_discrepancy.png", {label: result.fractions_at(PLOT_TAU) for label, result in results.items()},
                     title=f"fraction of parameters with |a−b| / max(|a|,|b|) > {PLOT_TAU:g}, per layer")
    experiment = Experiment("fig2", f"Fig. 2: per-layer discrepancy (τ = {PLOT_TAU:g})", plots=["fig2_discrepancy.png"],
                            records={"pairs": {label: result.to_dict() for label, result in results.items()}})
    layers = list(dict.fromkeys(layer.layer for result in results.values() for layer in result.layers))
    fractions = {label: result.fractions_at(PLOT_TAU) for label, result in results.items()}
    short = {label: f"[{index}]" for index, label in enumerate(results)}
    cells = [[layer, *(f"{100 * fractions[label][layer]:.1f}" if layer in fractions[label] else "—" for label in results)] for layer in layers]
    cells.append(["all layers", *(f"{100 * result.total.fractions[DIFF_TAUS.index(PLOT_TAU)]:.1f}" for result in results.values())])
    experiment.tables.append(Table(f"% of a layer's parameters with relative difference > {PLOT_TAU:g}", ["layer", *short.values()], cells,
                                   [f"{short[label]} {label}" for label in results] + ["One pair from the CLI: `" + shlex.join(
                                       ["lwmm-hub", "diff", zoo.folder(pairs[0][1]), zoo.folder(pairs[0][2]), "--tau",
                                        *(f"{tau:g}" for tau in DIFF_TAUS), "--plot", "diff.png"]) + "`"]))
    return experiment


# ------------------------------------------------------------------------------------------- main
@contextmanager
def timed(label: str, experiment_times: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    print(f"\n== {label}", flush=True)
    yield
    experiment_times[label] = time.perf_counter() - started
    print(f"== {label}: {experiment_times[label]:.1f} s", flush=True)


def write_experiment(out: Path, experiment: Experiment) -> None:
    (out / f"{experiment.key}.md").write_text(f"## {experiment.title}\n\n" + "\n\n".join(table.markdown() for table in experiment.tables) + "\n")
    document = {"title": experiment.title, **experiment.records}
    (out / f"{experiment.key}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")


def results_markdown(experiments: list[Experiment], context: Context, *, command: str, seconds: float, device: str, threads: int) -> str:
    chosen = context.chosen
    lines = ["# Layer-wise merging on the CamVid day→dusk zoo: results", "",
             "```", command, "```", "",
             f"Datasets: {', '.join(f'{key} ({len(data)} images)' for key, data in context.datasets.items())}. "
             f"Device: {device}, {threads} CPU threads. Total wall time {seconds / 60:.1f} min.", "",
             "Selection protocol: the pool ranking and the layer-wise hyper-parameters are chosen on dusk/val only "
             + (f"(t = {chosen.share:.3g}, i.e. α = 1/M + t·(1 − 1/M); start layer {chosen.start_layer}). " if chosen else ". ")
             + ("The test tables use the same models and hyper-parameters." if TEST in context.datasets else
                "No --test-dir was given: dusk/val numbers of tuned rows are optimistic (chosen on the same frames)."), "",
             "| experiment | wall time (s) |", "|---|---:|"]
    lines += [f"| {experiment.title} | {experiment.seconds:.1f} |" for experiment in experiments]
    for experiment in experiments:
        lines += ["", f"## {experiment.title}", ""]
        lines += [f"![{plot}]({plot})" for plot in experiment.plots] + ([""] if experiment.plots else [])
        lines += ["\n\n".join(table.markdown() for table in experiment.tables)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> list[Experiment]:
    """Every experiment in order (each needs the ranking and the chosen hyper-parameters before it)."""
    zoo = load_zoo(args.zoo)
    datasets = {VALIDATION: load_segmentation_data(str(args.data / "dusk" / "val"))}
    if args.test_dir:
        datasets[TEST] = load_segmentation_data(str(args.test_dir))
    fisher_data = args.data / "dusk" / "train"
    if not fisher_data.is_dir():
        raise LwmmError(f"--data {args.data}: no dusk/train folder (the unlabelled images the Fisher merge uses)")
    context = Context(zoo, datasets, {"fisher_data": str(fisher_data), "fisher_samples": args.fisher_samples}, args.device,
                      args.batch_size, progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    has_variant = any(zoo.variant(role) for role in (COARSE_ROLE, WIDE_HEAD_ROLE))
    steps: list[tuple[str, Callable[[], Experiment], str | None]] = [
        ("ranking", lambda: rank_models(context), None),
        ("fig5", lambda: sweep(context, args.out), None),
        ("table2", lambda: table2(context), None),
        ("table3", lambda: table3(context), None),
        ("table4", lambda: table4(context), None if has_variant else f"no model with role {COARSE_ROLE!r} or {WIDE_HEAD_ROLE!r}"),
        ("checkpoints", lambda: checkpoints(context, args.out), None if len(zoo.checkpoints) > 1 else "no checkpoint series"),
        ("fig2", lambda: discrepancies(context, args.out), None),
    ]
    experiments = []
    started = time.perf_counter()
    for key, step, missing in steps:
        if missing:
            print(f"{key} skipped: {missing} in {args.zoo / MANIFEST}")
            continue
        with timed(key, times):
            experiment = step()
        experiment.seconds = times[key]
        experiments.append(experiment)
        write_experiment(args.out, experiment)
        for table in experiment.tables:
            print(table.markdown(), "\n", flush=True)
    total = time.perf_counter() - started
    command = shlex.join(["python", "scripts/run_experiments.py", *args.argv])
    (args.out / "results.md").write_text(results_markdown(experiments, context, command=command, seconds=total,
                                                          device=args.device, threads=torch.get_num_threads()))
    (args.out / "timings.json").write_text(json.dumps({"seconds": times, "total_seconds": total}, indent=2) + "\n")
    print(f"\nwall times: " + ", ".join(f"{key} {seconds:.0f} s" for key, seconds in times.items()) + f"; total {total / 60:.1f} min")
    print(f"results → {args.out / 'results.md'}")
    return experiments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, required=True, help="zoo folder with zoo.json (scripts/build_zoo.py --out)")
    parser.add_argument("--data", type=Path, required=True, help="camvid-daydusk folder: dusk/val (labelled), dusk/train (unlabelled)")
    parser.add_argument("--test-dir", type=Path, help="held-out images/ + labels/ folder: every final table is computed there too")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: ./results)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where merges and evaluation run")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per evaluation batch (default: 4)")
    parser.add_argument("--fisher-samples", type=int, default=32, help="dusk/train images the Fisher is estimated on (default: 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (even on a terminal)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    configure(Verbosity.QUIET if args.quiet else Verbosity.NORMAL)  # the libraries' own bars and logs would drown the tables
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the evaluation runs under accelerate, which would pick a GPU
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("run_experiments: error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    try:
        run(args)
    except LwmmError as err:
        print(f"run_experiments: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
