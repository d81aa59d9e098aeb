"""The experiments: the paper's Tables 2–4 and Figs. 2, 3, 5 on the zoo, every score with its interval.

Selection protocol: the pool ranking and every layer-wise choice are made on dusk/val only; a
``test`` dataset (``--test-dir``), when given, is scored with the same models and settings.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from hf_lwmm.align import TensorStatus
from hf_lwmm.console import progress_bar
from hf_lwmm.diff import Discrepancy, discrepancy_plot, model_discrepancy
from hf_lwmm.evaluation.sweep import SweepResult, shared_layers, sweep_layerwise, sweep_plot
from hf_lwmm.experiments.report import Experiment, Table, line_plot
from hf_lwmm.experiments.rows import Context, Row, Setting, ensemble, single
from hf_lwmm.experiments.selection import Candidate, Choice, choose_default, choose_most_uniform
from hf_lwmm.experiments.zoo import COARSE_ROLE, WIDE_HEAD_ROLE
from hf_lwmm.plan import plan_merge
from hf_lwmm.recipe import MergeRecipe
from hf_lwmm.schedules import DEFAULT_ANCHOR_SHARE, DEFAULT_START_LAYER, alpha_for_share, layerwise_weights
from hf_lwmm.zoo.plan import SOURCE_ONLY

VALIDATION = "dusk/val"
TEST = "test"
#: shares t of the way from uniform (t = 0) to the anchor alone (t = 1) swept for α
SWEEP_SHARES = (0.0, 0.25, 0.5, 0.75, 0.9)
#: start layers swept: where each encoder stage and the decode head begin, and the fusion layer
SWEEP_STARTS = ("patch_embeddings.0", "patch_embeddings.1", "patch_embeddings.2", "patch_embeddings.3", "linear_c.0", "linear_fuse")
MAX_MERGED = 5
DIFF_TAUS = (0.01, 0.1, 0.5)
PLOT_TAU = 0.1


def rank_models(context: Context) -> Experiment:
    """Every zoo model alone; the pool ranked by dusk/val mIoU (ties: by name)."""
    zoo = context.zoo
    rows = [single(name) for name in zoo.models]
    results = context.evaluate(rows)
    validation = results[VALIDATION]

    def rank_key(name: str) -> tuple[float, str]:
        result = validation[name]
        assert result is not None  # a single model always has a score
        return (-result.mean_iou, name)

    context.ranking = sorted(zoo.pool, key=rank_key)
    experiment = Experiment("ranking", "Zoo models alone (the merge pool ranked on dusk/val)", records=context.records(rows, results))
    experiment.records["ranking"] = context.ranking
    order = context.ranking + [name for name in zoo.models if name not in context.ranking]
    baseline = zoo.models.get(SOURCE_ONLY)
    for key, values in results.items():
        cells = []
        for name in order:
            model = zoo.models[name]
            rank = str(context.ranking.index(name) + 1) if name in context.ranking else "—"
            card = "—" if model.card_dusk_val is None else f"{100 * model.card_dusk_val:.2f}"
            versus = (context.delta(values[name], values[SOURCE_ONLY])
                      if baseline and name != SOURCE_ONLY and model.num_labels == baseline.num_labels else "—")
            cells.append([rank, name, model.role, str(model.num_labels), str(model.decoder_hidden_size), context.score(values[name]),
                          versus, card])
        columns = ["rank", "model", "role", "classes", "head width", f"mIoU % ({key})", f"Δ vs {SOURCE_ONLY}", "card's dusk/val"]
        experiment.tables.append(Table(f"{key}: every zoo model alone", columns, cells,
                                       ["Ranks (pool only) come from dusk/val. mIoU over the dataset classes each model predicts "
                                        "(pixels of classes a model folds away are left out of its score). Δ: paired difference in "
                                        "points, * where its 95 % interval excludes 0."]))
    return experiment


def _candidates(result: SweepResult, count: int) -> list[Candidate]:
    candidates = []
    for point in result.points:
        weights = layerwise_weights(result.layers, num_models=count, anchor=0, alpha=point.alpha, start=point.start_layer)
        share = SWEEP_SHARES[result.alphas.index(point.alpha)]
        assert point.result.image_confusions is not None
        candidates.append(Candidate(share, point.start_layer_name, sum(w.weights[0] for w in weights) / len(weights),
                                    point.result.mean_iou, point.result.image_confusions))
    return candidates


def sweeps(context: Context, out: Path) -> Experiment:
    """Fig. 5 for every merge size k: α × start layer of the best k (anchor: the best) on dusk/val.

    Chooses the setting for each k by :func:`~hf_lwmm.experiments.selection.choose_most_uniform` and
    one setting for every k (the defaults' evidence) by :func:`~hf_lwmm.experiments.selection.choose_default`.
    """
    zoo = context.zoo
    sizes = list(range(2, min(MAX_MERGED, len(context.ranking)) + 1))
    experiment = Experiment("fig5", "Fig. 5: sweeps of α and the start layer for the best k models (anchor: the best), dusk/val")
    choices: dict[int, Choice] = {}
    for count in sizes:
        names = context.ranking[:count]
        folders = [zoo.folder(name) for name in names]
        layers = shared_layers(folders, anchor=folders[0], options=context.run_options)
        alphas = [alpha_for_share(share, count) for share in SWEEP_SHARES]
        starts = [name for name in SWEEP_STARTS if name in layers]
        result = sweep_layerwise(folders, context.datasets[VALIDATION], anchor=folders[0], alphas=alphas, start_layers=starts,
                                 options=context.run_options,
                                 evaluation={"batch_size": context.batch_size, "per_image": True}, progress=context.progress)
        choice = choose_most_uniform(_candidates(result, count), resamples=context.resamples)
        choices[count] = choice
        context.chosen[count] = Setting(choice.chosen.share, choice.chosen.start_layer)
        plot = f"fig5_sweep_k{count}.png"
        sweep_plot(out / plot, result, title=f"layer-wise merge of the best {count} (anchor {names[0]}), dusk/val")
        experiment.plots.append(plot)
        tied = {(candidate.share, candidate.start_layer) for candidate in choice.tied}
        header = ["start layer", *(f"t={share:.2g} (α={alpha:.3g})" for share, alpha in zip(SWEEP_SHARES, alphas))]
        cells = []
        for start in result.start_layers:
            row = [f"{start} {result.layers[start]}"]
            for share, alpha in zip(SWEEP_SHARES, alphas):
                point = result.point(alpha, start)
                mark = ("**←**" if (share, point.start_layer_name) == (choice.chosen.share, choice.chosen.start_layer) else
                        " ≈" if (share, point.start_layer_name) in tied else "")
                row.append(f"{100 * point.result.mean_iou:.2f}{mark}")
            cells.append(row)
        command = shlex.join(["lwmm-hub", "sweep", *folders, "--dataset", str(context.datasets[VALIDATION].source.id), "--anchor",
                              folders[0], "--alphas", ",".join(f"{alpha:.6g}" for alpha in alphas),
                              "--start-layers", ",".join(str(start) for start in result.start_layers)])
        experiment.tables.append(Table(
            f"{VALIDATION}, k = {count} ({', '.join(names)}): mIoU % per setting", header, cells,
            [f"Anchor alone: {context.score(result.anchor_result)}. Best: {100 * choice.best.mean_iou:.2f} "
             f"(t = {choice.best.share:.2g}, {choice.best.start_layer}). ≈: not significantly worse than the best (paired bootstrap, "
             f"95 %); {len(choice.tied)} of {len(result.points)} settings. Chosen (←): the most uniform of those, t = "
             f"{choice.chosen.share:.2g}, start {choice.chosen.start_layer} (mean anchor weight {choice.chosen.mean_anchor_weight:.2f}; "
             f"uniform would be {1 / count:.2f}).", f"Same sweep from the CLI: `{command}`"]))
        experiment.records[f"k{count}"] = {**result.to_dict(), "models": names, "shares": list(SWEEP_SHARES),
                                           "chosen": {"share": choice.chosen.share, "start_layer": choice.chosen.start_layer,
                                                      "mean_anchor_weight": choice.chosen.mean_anchor_weight},
                                           "tied": [{"share": c.share, "start_layer": c.start_layer,
                                                     "mean_anchor_weight": c.mean_anchor_weight} for c in choice.tied]}
    default_share, default_start = choose_default(choices)
    context.default = Setting(default_share, default_start)
    tied_at = [count for count, choice in choices.items()
               if any((c.share, c.start_layer) == (default_share, default_start) for c in choice.tied)]
    experiment.records["default"] = {"share": default_share, "start_layer": default_start, "tied_with_best_at_k": tied_at,
                                     "cli_defaults": {"share": DEFAULT_ANCHOR_SHARE, "start_layer": DEFAULT_START_LAYER}}
    experiment.tables.append(Table(
        "Settings chosen on dusk/val", ["k", "best (t, start)", "best mIoU %", "tied settings", "chosen (t, start)", "chosen mIoU %"],
        [[str(count), f"{c.best.share:.2g}, {c.best.start_layer}", f"{100 * c.best.mean_iou:.2f}", str(len(c.tied)),
          f"{c.chosen.share:.2g}, {c.chosen.start_layer}", f"{100 * c.chosen.mean_iou:.2f}"] for count, c in choices.items()],
        [f"One setting for every k (the evidence for `lwmm-hub merge`'s defaults): t = {default_share:.2g}, start layer {default_start} — "
         f"tied with the best at k = {', '.join(map(str, tied_at))} of {', '.join(map(str, sizes))}.",
         f"`lwmm-hub merge`'s defaults (hf_lwmm/schedules.py): t = {DEFAULT_ANCHOR_SHARE:g}, start layer {DEFAULT_START_LAYER} — "
         + ("the setting above." if (DEFAULT_ANCHOR_SHARE, DEFAULT_START_LAYER) == (default_share, default_start)
            else "not the setting above: the defaults row of Table 2 does not use it.")]))
    return experiment


def table2(context: Context) -> Experiment:
    """The best 2…5: isotropic, Fisher, output ensemble, layer-wise (chosen per k, and the CLI's defaults)."""
    ranking = context.ranking
    best = ranking[0]
    sizes = list(range(2, min(MAX_MERGED, len(ranking)) + 1))
    methods: list[tuple[str, str, Callable[[list[str]], Row]]] = [
        ("isotropic", "1×", lambda names: context.merged(names, anchor=best, method="isotropic")),
        ("Fisher (dusk/train images)", "1×", lambda names: context.merged(names, anchor=best, method="fisher")),
        ("output ensemble", "k×", ensemble),
        ("layer-wise (chosen per k on dusk/val)", "1×", lambda names: context.layerwise(names, anchor=best)),
        ("layer-wise (`lwmm-hub merge` defaults)", "1×",
         lambda names: context.merged(names, anchor=best, method="layerwise", label="layer-wise defaults")),
    ]
    grid = {(label, size): make(ranking[:size]) for label, _, make in methods for size in sizes}
    rows = [single(best), *grid.values()]
    results = context.evaluate(rows)
    experiment = Experiment("table2", "Table 2: merging the best k models", records=context.records(rows, results))
    for key, values in results.items():
        cells = [[f"best single model ({best})", "1×", *(context.score(values[best]) for _ in sizes)]]
        cells += [[label, cost, *(context.score(values[grid[label, size].name]) for size in sizes)] for label, cost, _ in methods]
        notes = [f"k = {size}: {', '.join(ranking[:size])}" for size in sizes]
        experiment.tables.append(Table(f"{key}: mIoU % of the best k models merged (anchor {best})",
                                       ["method", "inference cost", *(f"k = {size}" for size in sizes)], cells, notes))
        comparisons = [("layer-wise (chosen) − anchor alone", "layer-wise (chosen per k on dusk/val)", None),
                       ("layer-wise (defaults) − anchor alone", "layer-wise (`lwmm-hub merge` defaults)", None),
                       ("layer-wise (defaults) − isotropic", "layer-wise (`lwmm-hub merge` defaults)", "isotropic"),
                       ("layer-wise (chosen) − isotropic", "layer-wise (chosen per k on dusk/val)", "isotropic"),
                       ("output ensemble − anchor alone", "output ensemble", None)]
        delta_cells = [[label, *(context.delta(values[grid[method, size].name],
                                               values[best] if reference is None else values[grid[reference, size].name])
                                 for size in sizes)] for label, method, reference in comparisons]
        experiment.tables.append(Table(f"{key}: paired differences, points", ["difference", *(f"k = {size}" for size in sizes)],
                                       delta_cells))
    return experiment


def table3(context: Context) -> Experiment:
    """Every pair of pool models, each as the anchor of a layer-wise merge (the setting chosen for k = 2)."""
    pairs = list(itertools.permutations(context.ranking, 2))
    merged = {pair: context.layerwise(list(pair), anchor=pair[0]) for pair in pairs}
    rows = [*(single(name) for name in context.ranking), *merged.values()]
    results = context.evaluate(rows)
    experiment = Experiment("table3", "Table 3: every pair, each model as the anchor (layer-wise)", records=context.records(rows, results))
    for key, values in results.items():
        cells, better, worse, improved = [], 0, 0, 0
        for anchor, other in pairs:
            result, reference, other_alone = values[merged[anchor, other].name], values[anchor], values[other]
            assert result is not None and reference is not None and other_alone is not None  # pool models and their merges
            difference = context.difference(result, reference)
            better += difference.low > 0
            worse += difference.high < 0
            improved += result.mean_iou > reference.mean_iou
            cells.append([anchor, other, f"{100 * reference.mean_iou:.2f}", f"{100 * other_alone.mean_iou:.2f}",
                          context.score(result), context.delta(result, reference)])
        experiment.tables.append(Table(f"{key}: layer-wise merge of two models", ["anchor", "other", "anchor alone", "other alone",
                                                                                  "merged", "Δ vs anchor"], cells,
                                       [f"The merge scores above its anchor in {improved} of {len(pairs)} ordered pairs; "
                                        f"significantly above in {better}, significantly below in {worse}."]))
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
    experiment = Experiment("table4", "Table 4: merging models with different classes or head widths",
                            records=context.records(rows, results))
    for key, values in results.items():
        for part, variant, entries in layout:
            cells = [[label, context.score(values[row.name], row.unavailable),
                      "—" if row.method == "single" else context.delta(values[row.name], values[row.anchor or best])]
                     for label, row in entries]
            notes = [f"Δ: against the merge's anchor alone ({best} for the ensemble). Ensembles of models with other classes average "
                     "softmax in dataset classes (matched by name). A model or merge with the coarse classes is scored on the "
                     "dataset classes it predicts, so Δ between a 9-class and an 11-class score compares different class sets."]
            experiment.tables.append(Table(f"{key}: {part} — {best} with {variant}", ["method", "mIoU %", "Δ vs anchor"], cells, notes))
    return experiment


def checkpoints(context: Context, out: Path) -> Experiment:
    """Fig. 3: merging the last 1…n checkpoints of one run (anchor: the final one)."""
    series = context.zoo.checkpoints
    final = series[-1]
    sizes = list(range(1, len(series) + 1))
    methods: list[tuple[str, Callable[[list[str]], Row]]] = [
        ("isotropic", lambda names: context.merged(names, anchor=final, method="isotropic")),
        ("layer-wise (chosen per k)", lambda names: context.layerwise(names, anchor=final)),
        ("output ensemble", ensemble),
    ]
    grid = {(label, size): make(series[-size:]) for label, make in methods for size in sizes[1:]}
    rows = [single(final), *grid.values()]
    results = context.evaluate(rows)
    experiment = Experiment("checkpoints", f"Fig. 3: merging the last k checkpoints of {final}", records=context.records(rows, results),
                            plots=[f"fig3_checkpoints_{key.replace('/', '-')}.png" for key in results])
    for key, values in results.items():
        curves = {}
        for label, _ in methods:
            scored = [values[final]] + [values[grid[label, size].name] for size in sizes[1:]]
            curves[label] = [(interval.estimate, interval.low, interval.high) for interval in (context.interval(r) for r in scored if r)]
        cells = [[label, "k×" if label == "output ensemble" else "1×",
                  *(f"{100 * estimate:.2f} [{100 * low:.2f}, {100 * high:.2f}]" for estimate, low, high in curve)]
                 for label, curve in curves.items()]
        experiment.tables.append(Table(f"{key}: mIoU % merging the last k checkpoints (k = 1: {final} alone)",
                                       ["method", "inference cost", *(f"k = {size}" for size in sizes)], cells,
                                       [f"k = {size}: {', '.join(series[-size:])}" for size in sizes[1:]]))
        line_plot(out / experiment.plots[len(experiment.tables) - 1], sizes, curves, xlabel="checkpoints merged (latest k)",
                  title=f"{key}: checkpoints of {final}")
    return experiment


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
    cells = [[layer, *(f"{100 * fractions[label][layer]:.1f}" if layer in fractions[label] else "—" for label in results)]
             for layer in layers]
    cells.append(["all layers", *(f"{100 * result.total.fractions[DIFF_TAUS.index(PLOT_TAU)]:.1f}" for result in results.values())])
    experiment.tables.append(Table(f"% of a layer's parameters with relative difference > {PLOT_TAU:g}", ["layer", *short.values()], cells,
                                   [f"{short[label]} {label}" for label in results] + ["One pair from the CLI: `" + shlex.join(
                                       ["lwmm-hub", "diff", zoo.folder(pairs[0][1]), zoo.folder(pairs[0][2]), "--tau",
                                        *(f"{tau:g}" for tau in DIFF_TAUS), "--plot", "diff.png"]) + "`"]))
    return experiment
