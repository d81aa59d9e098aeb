"""Benchmark ``lwmm-hub merge`` against a naive load-everything merge and the I/O floor, on MiT-B5-size SegFormers.

Usage::

    python scripts/bench_merge.py                    # 2, 4 and 8 MiT-B5 SegFormers (~339 MB each), 3 rounds
    python scripts/bench_merge.py --small --repeat 1 # seconds: checks the script itself works

For each thread setting (torch's default, which is what a user gets, then 1 thread) and each model count
it times (wall clock) and measures the peak resident memory of four kinds of child process: the I/O
floor (plain Python reads every input file and writes one output of a model's size: interpreter start
and the bytes any merge must move, no torch), the naive baseline (``safetensors.torch.load_file`` every
model, average, ``save_file``) and ``lwmm-hub merge --method isotropic|layerwise``, whose recipe records
every source's sha256. lwmm remembers the hash of a file it hashed before and that has not changed since
(``HF_LWMM_CACHE``), so the two ``lwmm-*`` rows are re-merges of known files, and ``lwmm-isotropic-first``
is the first merge of the files (an empty hash cache on every run: every source hashed). It prints a table,
the ratios (wall vs naive and vs floor; the marginal cost of one more model, i.e. the slope of wall time
against the model count, vs the floor's; peak RSS vs naive and at the most vs the fewest models), the
cost of the card, recipe and plot (written after the weights, in the merge's process) as its own row,
and ``lwmm-hub --help`` against ``python -c "import torch"`` (and at 4 models, lwmm's time beside torch's import
against the time the 0.8× target leaves it); then PASS/FAIL against the goals of the
merge engine (exit status 1 if one fails: they are judged at the default thread count on the re-merges; the 1-thread
row and the first merge, which also hashes every source, are held to the same limits and reported), and saves a plot.

Why the measurements can be trusted:

* Every variant runs in its own process, and that process's peak RSS comes from ``os.wait4`` on
  exactly that child. Linux folds the resident size of the process that spawned it (the pre-``exec``
  image) into a child's ``ru_maxrss``, so this parent never imports torch or holds a tensor: models are
  made and outputs compared in child processes too. The parent's own peak is printed as the floor
  below which no figure means anything.
* Every child of a row gets the same thread setting: torch's default (no OMP/MKL variable set) or 1.
* Inputs are in the page cache for every variant (they were just written, or read by a warm-up run
  of each variant), dirty pages are flushed before each run, and the order of the variants alternates
  between rounds; each figure is the median over the rounds.
* The warm-up outputs of the naive merge and the isotropic lwmm merge are compared tensor by tensor,
  so both sides provably do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RUNNING_VAR = ".running_var"
FLOOR = "io-floor"
NAIVE = "naive"
#: the first merge of these files: no source hash remembered from an earlier merge (an empty hash cache per run)
FIRST_MERGE = "lwmm-isotropic-first"
#: lwmm variant → method; the others run with the hashes of unchanged sources remembered (what a re-merge gets)
LWMM_VARIANTS = {"lwmm-isotropic": "isotropic", "lwmm-layerwise": "layerwise", FIRST_MERGE: "isotropic"}
VARIANTS = (FLOOR, NAIVE, *LWMM_VARIANTS)
#: lwmm's environment variable for the folder of remembered source hashes
HASH_CACHE_VARIABLE = "HF_LWMM_CACHE"
#: the variant doing the same math as the naive baseline, judged against the goals first
LIKE_FOR_LIKE = "lwmm-isotropic"
#: thread settings, one row each: torch's default (what a user gets; the goals are judged on it), then 1
DEFAULT_THREADS = "default"
THREAD_ROWS = (DEFAULT_THREADS, "1")
GOAL_MODEL_COUNT = 4
GOAL_WALL_RATIO = 1.0
TARGET_WALL_RATIO = 0.8
GOAL_MOST_MODELS = 8
GOAL_MOST_WALL_RATIO = 0.7
GOAL_SLOPE_RATIO = 1.5
GOAL_RSS_RATIO = 0.2
GOAL_RSS_GROWTH = 1.10
GOAL_HELP_RATIO = 1.2
FLOOR_CHUNK = 1 << 24
#: isotropic lwmm and the naive mean differ only by float32 rounding (Σ θᵢ/M vs mean)
SAME_RESULT_TOLERANCE = 1e-5
NOISE_SCALE = 0.01


@dataclass(frozen=True)
class ModelSize:
    """A SegFormer encoder/decoder size; every benchmark model has this architecture."""

    name: str
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_attention_heads: tuple[int, ...]
    decoder_hidden_size: int
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    num_labels: int = 19


SIZES = {
    "b5": ModelSize("b5", hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3), num_attention_heads=(1, 2, 5, 8),
                    decoder_hidden_size=768),
    "small": ModelSize("small", hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_attention_heads=(1, 2, 5, 8),
                       decoder_hidden_size=256),
}


@dataclass(frozen=True)
class Measurement:
    """One child process: how long it ran and its peak resident set."""

    threads: str
    models: int
    variant: str
    wall_s: float
    peak_rss_mib: float


@dataclass(frozen=True)
class Goal:
    """One target of the issue, with the measured ratio that decides it."""

    description: str
    ratio: float | None
    limit: float
    #: whether the exit status depends on it: the goals are judged at the default thread count on re-merges; the
    #: 1-thread row and the first merge (which also hashes every source, work naive does not do) are reported
    judged: bool = True

    @property
    def verdict(self) -> str:
        if self.ratio is None:
            return "n/a"
        return "PASS" if self.ratio <= self.limit else "FAIL"


# --------------------------------------------------------------------------------------------------
# Child processes (each runs ``python bench_merge.py <command> …``; torch is imported only here)
# --------------------------------------------------------------------------------------------------


def make_models(argv: Sequence[str]) -> None:
    """Write one distinct model per folder: a random SegFormer, then it plus seeded noise for each other.

    The architecture is built on the meta device and given uninitialised storage (``to_empty``), so
    nothing pays for transformers' weight initialisation; ``save_pretrained`` writes the Hub tensor
    names (``segformer.encoder.block.…``) that real checkpoints have.
    """
    parser = argparse.ArgumentParser(prog="bench_merge.py make-models")
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--folders", type=Path, nargs="+", required=True)
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import SegformerForSemanticSegmentation

    from hf_lwmm.console import progress_bar

    config = segformer_config(SIZES[args.size])
    first, *others = args.folders
    if not is_complete(first):
        torch.manual_seed(0)
        with torch.device("meta"):
            model = SegformerForSemanticSegmentation(config)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                fill_like_trained(name, tensor)
        model.save_pretrained(first)
        del model
    base = load_file(first / WEIGHTS_NAME)
    for seed, folder in enumerate(progress_bar(others, desc="making models", unit="model"), start=1):
        if is_complete(folder):
            continue
        generator = torch.Generator().manual_seed(seed)
        noisy = {
            name: tensor + NOISE_SCALE * torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else tensor
            for name, tensor in base.items()
        }
        folder.mkdir(parents=True, exist_ok=True)
        save_file(noisy, folder / WEIGHTS_NAME, metadata={"format": "pt"})
        config.save_pretrained(folder)  # written last: its presence marks a complete model


def segformer_config(size: ModelSize):
    from transformers import SegformerConfig

    return SegformerConfig(
        num_encoder_blocks=len(size.depths),
        depths=list(size.depths),
        sr_ratios=list(size.sr_ratios),
        hidden_sizes=list(size.hidden_sizes),
        num_attention_heads=list(size.num_attention_heads),
        decoder_hidden_size=size.decoder_hidden_size,
        num_labels=size.num_labels,
    )


def fill_like_trained(name: str, tensor) -> None:
    """Small random weights, positive BatchNorm variances and a zero batch counter (never NaN)."""
    if not tensor.is_floating_point():
        tensor.zero_()
    elif name.endswith(RUNNING_VAR):
        tensor.uniform_(0.5, 1.5)
    else:
        tensor.normal_(0.0, 0.02)


def naive_merge(argv: Sequence[str]) -> None:
    """The baseline: every model fully in memory, the mean of each float tensor, one ``save_file``."""
    parser = argparse.ArgumentParser(prog="bench_merge.py naive-merge")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    states = [load_file(folder / WEIGHTS_NAME) for folder in args.models]
    merged = {
        name: torch.stack([state[name] for state in states]).mean(dim=0) if first.is_floating_point() else first
        for name, first in states[0].items()
    }
    args.output.mkdir(parents=True)
    save_file(merged, args.output / WEIGHTS_NAME, metadata={"format": "pt"})
    shutil.copyfile(args.models[0] / CONFIG_NAME, args.output / CONFIG_NAME)


def io_floor(argv: Sequence[str]) -> None:
    """The floor: read every input file and write one output of a model's size with plain file I/O (no torch)."""
    parser = argparse.ArgumentParser(prog="bench_merge.py io-floor")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args(argv)

    buffer = memoryview(bytearray(FLOOR_CHUNK))
    for folder in args.models:
        with open(folder / WEIGHTS_NAME, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    args.output.mkdir(parents=True)
    left = (args.models[0] / WEIGHTS_NAME).stat().st_size
    with open(args.output / WEIGHTS_NAME, "wb", buffering=0) as handle:
        while left > 0:
            left -= handle.write(buffer[: min(left, FLOOR_CHUNK)])


def card_cost(argv: Sequence[str]) -> None:
    """``merge`` through the API; print its wall time and the part after the weights (configs, card, recipe, plot)."""
    parser = argparse.ArgumentParser(prog="bench_merge.py card-cost")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args(argv)

    import importlib

    from hf_lwmm import MergeRecipe, RunOptions, merge

    executor = importlib.import_module("hf_lwmm.merge")  # the module (the package's ``merge`` is the function)
    write_weights = executor.write_weights
    weights_done: list[float] = []

    def timed_write_weights(*positional, **keywords):
        hashes = write_weights(*positional, **keywords)
        weights_done.append(time.perf_counter())
        return hashes

    executor.write_weights = timed_write_weights  # type: ignore[attr-defined]
    started = time.perf_counter()
    result = merge(MergeRecipe(models=[str(folder) for folder in args.models], method="isotropic"), args.output,
                   RunOptions(device="cpu", progress=False))
    finished = time.perf_counter()
    print(json.dumps({"merge_s": finished - started, "after_weights_s": finished - weights_done[0], "files": result.files}))


def compare_outputs(argv: Sequence[str]) -> None:
    """Print the largest absolute difference between two merged models with the same tensors.

    BatchNorm running variances are skipped: lwmm mixes them as Gaussians (``--bn-stats gaussian``,
    its default), the naive baseline takes their plain mean.
    """
    parser = argparse.ArgumentParser(prog="bench_merge.py compare-outputs")
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)

    from safetensors import safe_open

    with safe_open(args.first / WEIGHTS_NAME, "pt") as first, safe_open(args.second / WEIGHTS_NAME, "pt") as second:
        if set(first.keys()) != set(second.keys()):
            raise SystemExit(f"{args.first} and {args.second} hold different tensor names")
        compared = [name for name in first.keys() if not name.endswith(RUNNING_VAR)]
        largest = max(float((first.get_tensor(name).double() - second.get_tensor(name).double()).abs().max()) for name in compared)
    print(json.dumps({"max_abs_diff": largest}))


CHILD_COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "make-models": make_models,
    "naive-merge": naive_merge,
    "io-floor": io_floor,
    "card-cost": card_cost,
    "compare-outputs": compare_outputs,
}


# --------------------------------------------------------------------------------------------------
# The benchmark (parent process: standard library only until every measurement is taken)
# --------------------------------------------------------------------------------------------------


def is_complete(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def child_command(command: str, *args: str | Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), command, *map(str, args)]


def variant_command(variant: str, models: list[Path], output: Path) -> list[str]:
    """The child process for one variant; lwmm runs on the CPU like the baseline, even with a GPU."""
    if variant in (NAIVE, FLOOR):
        return child_command("naive-merge" if variant == NAIVE else "io-floor", "--output", output, *models)
    return [sys.executable, "-m", "hf_lwmm.cli", "merge", *map(str, models), "--anchor", str(models[0]),
            "--output", str(output), "--method", LWMM_VARIANTS[variant], "--device", "cpu"]


def hash_cache(variant: str, workdir: Path) -> Path:
    """The folder of remembered source hashes a variant's run gets: a new, empty one for :data:`FIRST_MERGE`."""
    if variant != FIRST_MERGE:
        return workdir / "hash-cache"
    shutil.rmtree(workdir / "hash-cache-first", ignore_errors=True)
    return workdir / "hash-cache-first"


def child_environment(threads: str, *, cache: Path) -> dict[str, str]:
    """``threads``: a count for OpenMP/MKL, or ``default`` for torch's own choice (the variables unset); ``cache``:
    lwmm's remembered source hashes."""
    environment = {name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads != DEFAULT_THREADS:
        environment.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    return {**environment, "HF_HUB_OFFLINE": "1", HASH_CACHE_VARIABLE: str(cache)}


def run_measured(command: list[str], *, log: Path, threads: str, cache: Path) -> tuple[float, float]:
    """Run a child to completion; return its wall time (s) and its own peak RSS (MiB).

    ``os.wait4`` reports the rusage of that one child, unlike ``RUSAGE_CHILDREN`` which keeps the
    maximum over every child ever reaped.
    """
    os.sync()  # the previous run's dirty pages must not be written back during this one
    with open(log, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=child_environment(threads, cache=cache))
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{' '.join(command[:4])} … failed with exit status {process.returncode}:\n{tail}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def measure(variant: str, models: list[Path], workdir: Path, *, threads: str) -> Measurement:
    output = workdir / f"out-{variant}"
    shutil.rmtree(output, ignore_errors=True)
    wall, rss = run_measured(variant_command(variant, models, output), log=workdir / f"{variant}.log", threads=threads,
                             cache=hash_cache(variant, workdir))
    shutil.rmtree(output)
    return Measurement(threads, len(models), variant, wall, rss)


def warm_up(models: list[Path], workdir: Path) -> float:
    """Run every variant once untimed (caches, bytecode) and check the baseline and lwmm agree."""
    outputs = {variant: workdir / f"warmup-{variant}" for variant in VARIANTS}
    for variant, output in outputs.items():
        shutil.rmtree(output, ignore_errors=True)
        run_measured(variant_command(variant, models, output), log=workdir / f"warmup-{variant}.log", threads="1",
                     cache=hash_cache(variant, workdir))
    comparison = subprocess.run(child_command("compare-outputs", outputs[NAIVE], outputs[LIKE_FOR_LIKE]),
                                check=True, capture_output=True, text=True)
    for output in outputs.values():
        shutil.rmtree(output)
    difference = json.loads(comparison.stdout.splitlines()[-1])["max_abs_diff"]
    if difference > SAME_RESULT_TOLERANCE:
        raise SystemExit(f"naive and {LIKE_FOR_LIKE} outputs differ by up to {difference:g}: they do not compute the same merge")
    return difference


def run_benchmark(counts: list[int], folders: list[Path], workdir: Path, *, repeat: int) -> list[Measurement]:
    """Median over ``repeat`` rounds; the variant order is reversed every other round."""
    from hf_lwmm.console import progress_bar

    runs: list[Measurement] = []
    with progress_bar(total=repeat * len(THREAD_ROWS) * len(counts) * len(VARIANTS), desc="benchmark", unit="run") as bar:
        for round_index in range(repeat):
            order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
            for threads in THREAD_ROWS:
                for count in counts:
                    for variant in order:
                        runs.append(measure(variant, folders[:count], workdir, threads=threads))
                        bar.update()
    return medians(runs)


#: timed beside ``lwmm-hub --help``: torch's import as a script pays it, and as lwmm-hub pays it: ``import hf_lwmm``
#: pauses the collector while it imports (its passes over torch's new objects: ~0.4 s here) and lwmm-hub freezes
#: what was imported (so the passes at exit skip torch's objects: 0.3–0.5 s here)
HELP = "lwmm-hub --help"
TORCH_IMPORT = "python -c 'import torch'"
TORCH_IMPORT_AS_PAID = "python -c 'import gc; gc.disable(); import torch; gc.freeze()'"


def time_startup(workdir: Path, *, repeat: int) -> dict[str, float]:
    """Median wall time of :data:`HELP`, :data:`TORCH_IMPORT` and :data:`TORCH_IMPORT_AS_PAID`, alternating; by label."""
    commands = {HELP: [sys.executable, "-m", "hf_lwmm.cli", "--help"],
                **{label: [sys.executable, *shlex.split(label)[1:]] for label in (TORCH_IMPORT, TORCH_IMPORT_AS_PAID)}}
    times: dict[str, list[float]] = {label: [] for label in commands}
    for round_index in range(repeat + 1):  # the first round warms the bytecode caches
        for label in list(commands) if round_index % 2 == 0 else list(commands)[::-1]:
            started = time.perf_counter()
            environment = child_environment(DEFAULT_THREADS, cache=workdir / "hash-cache")
            subprocess.run(commands[label], check=True, capture_output=True, env=environment)
            if round_index:
                times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def time_left(results: list[Measurement], torch_import: float) -> str:
    """At the goal's model count: lwmm's own time (wall less torch's import as lwmm-hub pays it) against the time the
    wall-time target leaves it (the target's share of naive's wall, less the same import)."""
    naive = lookup(results, DEFAULT_THREADS, GOAL_MODEL_COUNT, NAIVE)
    if naive is None:
        return f"(no naive run at {GOAL_MODEL_COUNT} models: no time left to report)"
    own = {variant: found.wall_s - torch_import for variant in (LIKE_FOR_LIKE, "lwmm-layerwise")
           if (found := lookup(results, DEFAULT_THREADS, GOAL_MODEL_COUNT, variant)) is not None}
    return (f"at {GOAL_MODEL_COUNT} models, beside torch's import ({TORCH_IMPORT_AS_PAID} {torch_import:.2f} s): "
            + ", ".join(f"{variant} {own_s:.2f} s" for variant, own_s in own.items())
            + f"; the ≤ {TARGET_WALL_RATIO} target leaves {TARGET_WALL_RATIO * naive.wall_s - torch_import:.2f} s")


def time_card(models: list[Path], workdir: Path, *, repeat: int) -> tuple[float, float]:
    """Median wall time of an in-process API merge and of its part after the weights (configs, card, recipe, plot)."""
    merges, afters = [], []
    for _ in range(repeat):
        output = workdir / "out-card"
        shutil.rmtree(output, ignore_errors=True)
        done = subprocess.run(child_command("card-cost", "--output", output, *models), check=True, capture_output=True,
                              text=True, env=child_environment(DEFAULT_THREADS, cache=hash_cache(LIKE_FOR_LIKE, workdir)))
        shutil.rmtree(output)
        figures = json.loads(done.stdout.splitlines()[-1])
        merges.append(figures["merge_s"])
        afters.append(figures["after_weights_s"])
    return statistics.median(merges), statistics.median(afters)


def medians(runs: list[Measurement]) -> list[Measurement]:
    keys = sorted({(run.threads, run.models, run.variant) for run in runs},
                  key=lambda key: (THREAD_ROWS.index(key[0]), key[1], VARIANTS.index(key[2])))
    result = []
    for threads, count, variant in keys:
        same = [run for run in runs if (run.threads, run.models, run.variant) == (threads, count, variant)]
        result.append(Measurement(threads, count, variant, statistics.median(r.wall_s for r in same),
                                  statistics.median(r.peak_rss_mib for r in same)))
    return result


def lookup(results: list[Measurement], threads: str, count: int, variant: str) -> Measurement | None:
    return next((r for r in results if (r.threads, r.models, r.variant) == (threads, count, variant)), None)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def slope(points: list[Measurement]) -> float | None:
    """Least-squares slope of wall time against the model count: the cost of one more model (s)."""
    if len(points) < 2:
        return None
    mean_count = statistics.fmean(p.models for p in points)
    mean_wall = statistics.fmean(p.wall_s for p in points)
    return (sum((p.models - mean_count) * (p.wall_s - mean_wall) for p in points)
            / sum((p.models - mean_count) ** 2 for p in points))


def slope_of(results: list[Measurement], threads: str, variant: str) -> float | None:
    """The seconds per added model of one variant in one thread row."""
    return slope([r for r in results if r.threads == threads and r.variant == variant])


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def goals_of(results: list[Measurement], threads: str, variant: str) -> list[Goal]:
    """The issue's targets for one lwmm variant in one thread row."""
    def wall(count: int, name: str) -> float | None:
        found = lookup(results, threads, count, name)
        return None if found is None else found.wall_s

    def rss(count: int, name: str) -> float | None:
        found = lookup(results, threads, count, name)
        return None if found is None else found.peak_rss_mib

    counts = sorted({r.models for r in results})
    own_slope, floor_slope = (slope_of(results, threads, name) for name in (variant, FLOOR))
    prefix = f"[{threads} threads] {variant}:"
    goals = [
        Goal(f"{prefix} wall / naive at {GOAL_MODEL_COUNT} models", ratio(wall(GOAL_MODEL_COUNT, variant), wall(GOAL_MODEL_COUNT, NAIVE)),
             GOAL_WALL_RATIO),
        Goal(f"{prefix} wall / naive at {GOAL_MODEL_COUNT} models (target)",
             ratio(wall(GOAL_MODEL_COUNT, variant), wall(GOAL_MODEL_COUNT, NAIVE)), TARGET_WALL_RATIO),
        Goal(f"{prefix} wall / naive at {GOAL_MOST_MODELS} models", ratio(wall(GOAL_MOST_MODELS, variant), wall(GOAL_MOST_MODELS, NAIVE)),
             GOAL_MOST_WALL_RATIO),
        Goal(f"{prefix} wall / I/O floor at {GOAL_MODEL_COUNT} models (no goal)",
             ratio(wall(GOAL_MODEL_COUNT, variant), wall(GOAL_MODEL_COUNT, FLOOR)), float("inf")),
        Goal(f"{prefix} s per added model / floor's ({seconds(own_slope)} / {seconds(floor_slope)})", ratio(own_slope, floor_slope),
             GOAL_SLOPE_RATIO),
        Goal(f"{prefix} peak RSS / naive at {GOAL_MODEL_COUNT} models", ratio(rss(GOAL_MODEL_COUNT, variant), rss(GOAL_MODEL_COUNT, NAIVE)),
             GOAL_RSS_RATIO),
        Goal(f"{prefix} peak RSS at {counts[-1]} / at {counts[0]} models",
             ratio(rss(counts[-1], variant), rss(counts[0], variant)) if len(counts) > 1 else None, GOAL_RSS_GROWTH),
    ]
    judged = threads == DEFAULT_THREADS and variant != FIRST_MERGE
    return [replace(goal, judged=judged) for goal in goals]


def results_table(results: list[Measurement]) -> str:
    width = max(len(variant) for variant in VARIANTS)
    lines = [f"{'threads':>7}  {'models':>6}  {'variant':<{width}} {'wall s':>8} {'peak RSS MiB':>13}"]
    lines += [f"{r.threads:>7}  {r.models:>6}  {r.variant:<{width}} {r.wall_s:>8.2f} {r.peak_rss_mib:>13.0f}" for r in results]
    return "\n".join(lines)


def goals_table(goals: list[Goal]) -> str:
    width = max(len(goal.description) for goal in goals)
    return "\n".join(f"{goal.description:<{width}}  {'n/a' if goal.ratio is None else f'{goal.ratio:.2f}':>5}{_judgement(goal)}"
                     for goal in goals)


def _judgement(goal: Goal) -> str:
    """The limit and verdict after a goal's ratio (nothing for a figure with no goal)."""
    if goal.limit == float("inf"):
        return ""
    return f" (goal ≤ {goal.limit:.2f})  {goal.verdict}" + ("" if goal.judged else " (reported, not judged)")


def plot(results: list[Measurement], path: Path, *, title: str) -> None:
    """Peak RSS and wall time against the model count, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rss_axis, wall_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    for variant in VARIANTS:
        points = [r for r in results if r.variant == variant and r.threads == DEFAULT_THREADS]
        counts = [r.models for r in points]
        rss_axis.plot(counts, [r.peak_rss_mib for r in points], marker="o", label=variant)
        wall_axis.plot(counts, [r.wall_s for r in points], marker="o", label=variant)
    for axis, label in ((rss_axis, "peak RSS (MiB)"), (wall_axis, "wall time (s)")):
        axis.set_xlabel("models merged")
        axis.set_ylabel(label)
        axis.set_xticks(sorted({r.models for r in results}))
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    rss_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def model_counts(text: str) -> list[int]:
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of model counts: {text!r}") from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="2,4,8", type=model_counts,
                        help="comma-separated model counts (default: 2,4,8; the goals use 4 and the smallest/largest)")
    parser.add_argument("--small", action="store_true", help="tiny models for a quick check of the script (not the goals)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds; each figure is the median (default: 3)")
    parser.add_argument("--workdir", type=Path, help="where models and outputs go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated models (a later run with the same --workdir reuses them)")
    parser.add_argument("--plot", type=Path,
                        help="PNG of peak RSS and wall vs model count (default: WORKDIR/bench_merge.png, kept without --keep)")
    args = parser.parse_args(argv)
    if not args.models or min(args.models) < 2 or args.repeat < 1:
        parser.error("--models needs counts ≥ 2, --repeat ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CHILD_COMMANDS:
        CHILD_COMMANDS[argv[0]](argv[1:])
        return 0
    args = parse_args(argv)
    size = SIZES["small" if args.small else "b5"]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_merge."))
    workdir.mkdir(parents=True, exist_ok=True)
    model_root = workdir / f"models-{size.name}"
    folders = [model_root / f"model-{index}" for index in range(max(args.models))]
    plot_path = args.plot or workdir / "bench_merge.png"
    print(f"workdir {workdir}; {max(args.models)} SegFormer-{size.name} models", flush=True)
    try:
        started = time.perf_counter()
        subprocess.run(child_command("make-models", "--size", size.name, "--folders", *folders), check=True)
        model_mb = (folders[0] / WEIGHTS_NAME).stat().st_size / 1e6
        print(f"models ready ({model_mb:.0f} MB each) in {time.perf_counter() - started:.0f} s", flush=True)
        difference = warm_up(folders[: args.models[0]], workdir)
        print(f"warm-up done; naive vs {LIKE_FOR_LIKE} outputs agree (max |Δ| = {difference:.1e})", flush=True)
        results = run_benchmark(args.models, folders, workdir, repeat=args.repeat)
        card_count = GOAL_MODEL_COUNT if GOAL_MODEL_COUNT in args.models else args.models[0]
        merge_wall, card_wall = time_card(folders[:card_count], workdir, repeat=args.repeat)
        startup = time_startup(workdir, repeat=args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(model_root, ignore_errors=True)
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nSegFormer-{size.name}, {model_mb:.0f} MB per model, threads: torch's default and 1, median of {args.repeat} round(s); "
          f"measurement floor (this parent's peak RSS) {floor:.0f} MiB\n")
    print(results_table(results))
    for threads in THREAD_ROWS:
        slopes = (f"{variant} {seconds(slope_of(results, threads, variant))}" for variant in VARIANTS)
        print(f"\n[{threads} threads] s per added model (slope of wall time against the model count): {', '.join(slopes)}", end="")
    print()
    print(f"\ncard, recipe and plot (after the weights, same process), {card_count} models: {card_wall:.2f} s "
          f"of a {merge_wall:.2f} s in-process merge ({card_wall / merge_wall:.0%})")
    print("startup: " + ", ".join(f"{label} {wall:.2f} s" for label, wall in startup.items()))
    print(time_left(results, startup[TORCH_IMPORT_AS_PAID]))
    goals = [goal for threads in THREAD_ROWS for variant in VARIANTS[2:] for goal in goals_of(results, threads, variant)]
    goals.append(Goal(f"{HELP} / {TORCH_IMPORT}", startup[HELP] / startup[TORCH_IMPORT], GOAL_HELP_RATIO))
    print("\n" + goals_table(goals))
    plot(results, plot_path, title=f"{max(args.models)}× SegFormer-{size.name} ({model_mb:.0f} MB each)")
    print(f"\nplot: {plot_path}")
    return 0 if all(goal.verdict != "FAIL" for goal in goals if goal.judged) else 1


if __name__ == "__main__":
    sys.exit(main())
