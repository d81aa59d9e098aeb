"""Runs every experiment in order and writes ``results.md`` (each needs the ranking and the choices before it)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.bootstrap import DEFAULT_RESAMPLES
from hf_lwmm.evaluation.data import load_segmentation_data
from hf_lwmm.experiments.paper import TEST, VALIDATION, checkpoints, discrepancies, rank_models, sweeps, table2, table3, table4
from hf_lwmm.experiments.report import Experiment, results_markdown, write_experiment
from hf_lwmm.experiments.rows import Context
from hf_lwmm.experiments.zoo import COARSE_ROLE, MANIFEST, WIDE_HEAD_ROLE, load_zoo


@dataclass(frozen=True)
class ExperimentOptions:
    zoo: Path
    data: Path
    out: Path
    test_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 4
    fisher_samples: int = 32
    resamples: int = DEFAULT_RESAMPLES
    progress: bool = True
    #: the command line that ran them, recorded in ``results.md``
    command: str = ""


def run_experiments(options: ExperimentOptions, *, echo: Callable[[str], None] = print) -> list[Experiment]:
    zoo = load_zoo(options.zoo)
    datasets = {VALIDATION: load_segmentation_data(str(options.data / "dusk" / "val"))}
    if options.test_dir:
        datasets[TEST] = load_segmentation_data(str(options.test_dir))
    fisher_data = options.data / "dusk" / "train"
    if not fisher_data.is_dir():
        raise LwmmError(f"--data {options.data}: no dusk/train folder (the unlabelled images the Fisher merge uses)")
    context = Context(zoo, datasets, {"fisher_data": str(fisher_data), "fisher_samples": options.fisher_samples}, options.device,
                      options.batch_size, progress=options.progress, resamples=options.resamples)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    has_variant = any(zoo.variant(role) for role in (COARSE_ROLE, WIDE_HEAD_ROLE))
    steps: list[tuple[str, Callable[[], Experiment], str | None]] = [
        ("ranking", lambda: rank_models(context), None),
        ("fig5", lambda: sweeps(context, out), None),
        ("table2", lambda: table2(context), None),
        ("table3", lambda: table3(context), None),
        ("table4", lambda: table4(context), None if has_variant else f"no model with role {COARSE_ROLE!r} or {WIDE_HEAD_ROLE!r}"),
        ("checkpoints", lambda: checkpoints(context, out), None if len(zoo.checkpoints) > 1 else "no checkpoint series"),
        ("fig2", lambda: discrepancies(context, out), None),
    ]
    experiments = []
    started = time.perf_counter()
    for key, step, missing in steps:
        if missing:
            echo(f"{key} skipped: {missing} in {options.zoo / MANIFEST}")
            continue
        echo(f"\n== {key}")
        began = time.perf_counter()
        experiment = step()
        experiment.seconds = time.perf_counter() - began
        echo(f"== {key}: {experiment.seconds:.1f} s")
        experiments.append(experiment)
        write_experiment(out, experiment)
        for table in experiment.tables:
            echo(table.markdown() + "\n")
    total = time.perf_counter() - started
    header = [f"Zoo: `{options.zoo}`, models trained by code commit {', '.join(f'`{commit}`' for commit in zoo.code_commits)}; "
              "weights sha256 in `zoo.json`.",
              f"Datasets: {', '.join(f'{key} ({len(data)} images)' for key, data in datasets.items())}. "
              f"Device: {options.device}, {torch.get_num_threads()} CPU threads. {options.resamples} bootstrap resamples.",
              "Selection protocol: the pool ranking and every layer-wise setting are chosen on dusk/val only "
              "(rule: hf_lwmm/experiments/selection.py). "
              + ("The test tables use the same models and settings." if TEST in datasets else
                 "No --test-dir was given: dusk/val numbers of tuned rows are optimistic (chosen on the same frames).")]
    (out / "results.md").write_text(results_markdown(experiments, command=options.command, header_lines=header, seconds=total))
    timings = {"seconds": {experiment.key: experiment.seconds for experiment in experiments}, "total_seconds": total}
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    echo(f"\ntotal {total / 60:.1f} min; results → {out / 'results.md'}")
    return experiments
