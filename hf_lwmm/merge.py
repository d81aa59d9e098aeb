"""Execute a merge plan: stream tensor by tensor → write → configs → card, recipe and plot.

:func:`execute` is one streaming loop over :attr:`MergePlan.tensors <hf_lwmm.plan.MergePlan.tensors>`:
read each model's copy, combine by the tensor's rule, write (small neighbours averaged alike are read,
combined and written as one flat run). Everything goes into a staging folder
beside the output (:func:`hf_lwmm.io.output.staged_folder`), renamed into place only when complete, so a
failed or killed merge leaves nothing half-written. :func:`merge` is check the output + plan + execute.

Layering: the top of the merge pipeline (imports the planner, the card and the writer); the commands,
evaluation and experiments import it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import torch

from hf_lwmm.card import write_card_files
from hf_lwmm.console import progress_bar
from hf_lwmm.errors import CorruptWeightsError
from hf_lwmm.io import ShardedSafetensorsWriter, TensorSource, weights_sha256
from hf_lwmm.io.hashing import cache_folder
from hf_lwmm.io.output import check_output_folder, staged_folder
from hf_lwmm.methods.functional import gaussian_bn_stats, weighted_average
from hf_lwmm.plan import MergePlan, Rule, TensorPlan, plan_merge, with_weights
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.refs import CONFIG_NAME, PREPROCESSOR_NAME, ResolvedModel
from hf_lwmm.result import MergeResult
from hf_lwmm.system import resolve_device

__all__ = ["MergeResult", "check_output", "execute", "merge"]

#: threads hashing the sources' files beside the merge (each hashes whole files; hashlib releases the GIL)
HASH_THREADS = 2
#: small neighbours are averaged in runs of up to this many bytes (:func:`_steps`): a B5's 1,172 tensors are 126
#: steps. One by one, its 1,021 tensors under 1 MiB (76 of its 338 MB) cost as much time as the other 263 MB (8×B5
#: loop, in-process, median of 5: 1.56 s one by one, 1.14 s in runs of 4 MiB, 1.09 s of 16 MiB); runs of 8 or
#: 16 MiB made the peak RSS vary by up to 15 % from merge to merge, 4 MiB kept it flat (a run's float32 sum and
#: one copy are in memory at once)
RUN_BYTES = 1 << 22


def merge(recipe: MergeRecipe, output_dir: str | Path, options: RunOptions | None = None, *,
          hub_repo: str | None = None, name: str | None = None) -> MergeResult:
    """Plan the recipe and execute the plan into ``output_dir`` (a stock transformers model folder with its card).

    The output folder and the device are checked first: a refused output costs no download and no planning.
    """
    options = options or RunOptions()
    check_output(output_dir, recipe, options)
    resolve_device(options.device)
    return execute(plan_merge(recipe, options), output_dir, options, hub_repo=hub_repo, name=name)


def check_output(output_dir: str | Path, recipe: MergeRecipe, options: RunOptions, *, name: str = "output_dir") -> None:
    """Refuse, before any work, an output folder that would lose data: one not empty (unless ``options.overwrite``),
    or one that is, contains or lies inside a local model of the recipe. ``name`` names the argument in the error."""
    local_models = [ref.path for ref in recipe.refs if ref.path is not None]
    check_output_folder(Path(output_dir), overwrite=options.overwrite, inputs=local_models, name=name)


def execute(plan: MergePlan, output_dir: str | Path, options: RunOptions | None = None, *,
            hub_repo: str | None = None, name: str | None = None) -> MergeResult:
    """Stream the plan into ``output_dir``: weights, configs, then the card, recipe and plot.

    ``output_dir`` may not be, contain or lie inside a model folder of the plan, nor be a non-empty folder
    unless ``options.overwrite``. ``hub_repo`` is where the folder will be pushed (the card's title and usage
    snippet name it); ``name`` titles the card otherwise (default: the folder's name).
    """
    options = options or RunOptions()
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite=options.overwrite,
                        inputs=[model.folder for model in plan.models if isinstance(model, ResolvedModel)],
                        name="output_dir")
    device = resolve_device(options.device)
    plan = with_weights(plan, options)  # Hub weights are downloaded only now, once the plan holds
    models = cast("list[ResolvedModel]", plan.models)  # every one on disk after with_weights
    plan.method.prepare(models, plan.alignment, device=device, progress=options.progress)
    with staged_folder(output_dir, overwrite=options.overwrite) as staging, _hashing_sources(models) as source_sha256:
        sha256 = write_weights(plan, staging, device=device, progress=options.progress)
        _copy_configs(models[plan.anchor].folder, staging, plan.recipe.dtype)
        result = MergeResult(plan, output_dir, sha256, source_sha256(), hub_repo=hub_repo, name=name)
        write_card_files(result, staging)
        result.files = sorted(path.name for path in staging.iterdir())
    return result


@contextlib.contextmanager
def _hashing_sources(models: Sequence[ResolvedModel]) -> Iterator[Callable[[], list[dict[str, str]]]]:
    """Hash every source's weights files (the recipe records them) on threads while the loop merges.

    Yields the function that waits for the hashes. Hashing every input after the merge cost as much as
    the merge itself (4×B5: 1.4 GB); on threads of their own (hashlib releases the GIL) the hashes run
    beside the loop's kernels, one file per thread, and a file hashed by an earlier merge and unchanged
    since is not hashed again (:func:`~hf_lwmm.io.hashing.remembered_sha256`). A failed merge still waits
    for hashes already running.
    """
    cache = cache_folder()
    with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="source-sha256") as pool:
        hashes = [pool.submit(weights_sha256, model.folder, cache=cache) for model in models]
        try:
            yield lambda: [future.result() for future in hashes]
        finally:
            for future in hashes:
                future.cancel()  # a hash not started yet never runs


def write_weights(plan: MergePlan, folder: Path, *, device: torch.device, progress: bool) -> dict[str, str]:
    """The streaming loop: each planned tensor is read, combined by its rule and written; returns file → sha256.

    Each copy is a copy-on-write map of its bytes in the model's file, or, if small, read into memory of its own
    (:meth:`~hf_lwmm.io.reader.SafetensorsSource.get`); either is freed with the copy, so memory does not grow with
    the number of models, and the next step's copies are prefetched while this one is combined. Small neighbours
    averaged alike are one step (:func:`_steps`), written with one call (the loop from the CLI, median of 5,
    alternating: 4×B5 0.90 s written tensor by tensor, 0.82 s a run at a time; 8×B5 1.50 and 1.44 s).
    """
    # one weight tensor per layer, prepared once (not once per tensor)
    weights = {entry.layer: torch.tensor(entry.weights, dtype=torch.float32, device=device) for entry in plan.layer_weights}
    steps = _steps(plan)
    reads = [_reads_of(step, plan) for step in steps]
    bar = progress_bar(total=len(plan.tensors), desc="merging", unit="tensor", enabled=progress)
    with bar, _single_threaded_kernels(), ShardedSafetensorsWriter(folder, [tensor.output for tensor in plan.tensors],
                                                                   max_shard_size=plan.recipe.max_shard_bytes,
                                                                   metadata={"merged_by": "hf_lwmm"}) as writer:
        for index, step in enumerate(steps):
            bar.update(len(step))
            for source, names in reads[index + 1] if index + 1 < len(reads) else []:
                source.prefetch(names[0])
            writer.write([tensor.output.name for tensor in step], _merged(step, plan, reads[index], weights, device))
    return dict(writer.sha256)


def _steps(plan: MergePlan) -> list[list[TensorPlan]]:
    """The loop's steps, in the plan's order: one tensor, or a run of small neighbours averaged as one flat tensor.

    A run's tensors are all weighted averages (:attr:`Rule.AVERAGE`, or the method's own when it
    :attr:`~hf_lwmm.methods.base.MergeMethod.averages`) of one layer, with one output dtype and, per model, one
    input dtype, and a run holds at most :data:`RUN_BYTES`. Averaging them as one computes the same sums element by
    element with one read and one kernel per model instead of one per tensor.
    """
    steps: list[list[TensorPlan]] = []
    run: tuple[object, ...] | None = None
    run_bytes = 0
    for tensor in plan.tensors:
        key = _run_key(tensor, plan)
        if key is not None and key == run and run_bytes + tensor.output.nbytes <= RUN_BYTES:
            steps[-1].append(tensor)
            run_bytes += tensor.output.nbytes
        else:
            steps.append([tensor])
            run, run_bytes = key, tensor.output.nbytes
    return steps


def _run_key(tensor: TensorPlan, plan: MergePlan) -> tuple[object, ...] | None:
    """What neighbours must share to be averaged as one (``None``: the tensor is merged on its own)."""
    averaged = tensor.rule is Rule.AVERAGE or (tensor.rule is Rule.METHOD and plan.method.averages)
    if not averaged or tensor.output.nbytes >= RUN_BYTES:
        return None
    return tensor.layer, tensor.output.dtype, *(source.infos[tensor.names[i]].dtype for i, source in enumerate(plan.sources))


def _reads_of(step: list[TensorPlan], plan: MergePlan) -> list[tuple[TensorSource, list[str]]]:
    """What :func:`_merged` draws for one step, in the order it draws it: per copy, the source and the tensors' names."""
    sources, tensor = plan.sources, step[0]
    if tensor.rule is Rule.ANCHOR:
        return [(sources[plan.anchor], [tensor.names[plan.anchor]])]
    if tensor.rule is Rule.GAUSSIAN_VARIANCE:
        assert tensor.mean_names is not None
        return [(source, [names[i]]) for names in (tensor.mean_names, tensor.names) for i, source in enumerate(sources)]
    return [(source, [each.names[i] for each in step]) for i, source in enumerate(sources)]


def _merged(step: list[TensorPlan], plan: MergePlan, reads: list[tuple[TensorSource, list[str]]],
            weights: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The step's tensor merged by its rule (``weights``: by layer), or a run's tensors averaged as one flat tensor of
    their elements back to back; refused if not finite, in the output dtype."""
    tensor, output_dtype = step[0], step[0].output.dtype  # one dtype for a run (:func:`_run_key`)
    if len(step) > 1:
        merged = weighted_average((source.get_flat(names).to(device) for source, names in reads), weights[tensor.layer])
    else:
        copies = (source.get(names[0]).to(device) for source, names in reads)
        if tensor.rule is Rule.ANCHOR:
            return next(copies).to(output_dtype)
        merged = _combine(tensor, plan, copies, weights[tensor.layer])
    _check_finite(step, merged, plan)
    return merged.to(output_dtype)


def _check_finite(step: list[TensorPlan], merged: torch.Tensor, plan: MergePlan) -> None:
    """Refuse NaN or inf in a step's merged values (``merged``: all of them, in the step's order), naming the first
    tensor that has some."""
    if torch.isfinite(merged.sum()) or torch.isfinite(merged).all():  # a finite sum proves them all finite cheaply
        return
    parts = merged.reshape(-1).split([tensor.output.numel for tensor in step])
    tensor = next(tensor for tensor, values in zip(step, parts) if not torch.isfinite(values).all())
    raise CorruptWeightsError(f"merged tensor {tensor.output.name!r} has NaN or inf values: check the inputs ({', '.join(plan.labels)})")


@contextlib.contextmanager
def _single_threaded_kernels() -> Iterator[None]:
    """Run the loop's torch kernels on the calling thread alone, then restore the caller's thread count.

    The kernels are small and memory-bound and the loop already overlaps combining and hashing on threads
    of its own; an intra-op thread team adds a wake-up per kernel, which on a busy machine waits for a
    time slice (4×B5 at torch's default 2 threads on 2 busy cores: 17–37 s instead of 3.6 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _combine(tensor: TensorPlan, plan: MergePlan, copies: Iterator[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    count = len(plan.sources)
    if tensor.rule is Rule.GAUSSIAN_VARIANCE:
        return gaussian_bn_stats(list(itertools.islice(copies, count)), list(copies), weights)[1]
    if tensor.rule is Rule.AVERAGE:
        return weighted_average(copies, weights)
    return plan.method.merge_tensor(tensor.key, copies, weights)


def _copy_configs(anchor_folder: Path, folder: Path, dtype: str | None) -> None:
    config = json.loads((anchor_folder / CONFIG_NAME).read_text())
    if dtype is not None:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (anchor_folder / PREPROCESSOR_NAME).is_file():
        shutil.copyfile(anchor_folder / PREPROCESSOR_NAME, folder / PREPROCESSOR_NAME)

