"""Execute a merge plan: stream tensor by tensor → write → configs → card, recipe and plot.

:func:`execute` is one streaming loop over :attr:`MergePlan.tensors <hf_lwmm.plan.MergePlan.tensors>`:
read each model's copy, combine by the tensor's rule, write. Everything goes into a staging folder
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
from hf_lwmm.io import PlannedRead, ReadAhead, ShardedSafetensorsWriter, weights_sha256
from hf_lwmm.io.output import check_output_folder, staged_folder
from hf_lwmm.methods.functional import gaussian_bn_stats, weighted_average
from hf_lwmm.plan import MergePlan, Rule, TensorPlan, plan_merge, with_weights
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.refs import CONFIG_NAME, PREPROCESSOR_NAME, ResolvedModel
from hf_lwmm.result import MergeResult
from hf_lwmm.system import resolve_device

__all__ = ["MergeResult", "check_output", "execute", "merge"]

#: planned reads in flight ahead of the loop: one per read-ahead thread. More buys little and touches more of the
#: reused buffers when one tensor's copies fill them (B5, peak RSS at 8 models vs 2: 1.05× at depth 2, 1.18× at 8)
READ_AHEAD = 2


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
    """Hash every source's weights files (the recipe records them) on a thread while the loop merges.

    Yields the function that waits for the hashes. Hashing every input after the merge cost as much as
    the merge itself (4×B5: 1.4 GB); on its own thread it overlaps with the loop's reads and kernels
    (hashlib releases the GIL). A failed merge still waits for a hash already running.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-sha256") as pool:
        hashes = pool.submit(lambda: [weights_sha256(model.folder) for model in models])
        try:
            yield hashes.result
        finally:
            hashes.cancel()  # a hash not started yet never runs


def write_weights(plan: MergePlan, folder: Path, *, device: torch.device, progress: bool,
                  read_ahead: int = READ_AHEAD) -> dict[str, str]:
    """The streaming loop: each planned tensor is read, combined by its rule and written; returns file → sha256.

    The copies are read ``read_ahead`` reads ahead of the loop on a small thread pool (positioned reads
    and torch kernels release the GIL), so reading the next tensors overlaps with combining this one;
    ``read_ahead=0`` reads each copy when it is drawn.
    """
    # one weight tensor per layer, prepared once (not once per tensor)
    weights = {entry.layer: torch.tensor(entry.weights, dtype=torch.float32, device=device) for entry in plan.layer_weights}
    shared = plan.method.reads_shared_buffer()
    per_tensor = [_reads_of(tensor, plan, shared=shared) for tensor in plan.tensors]
    ends = list(itertools.accumulate(len(reads) for reads in per_tensor))
    outputs = [tensor.output for tensor in plan.tensors]
    bar = progress_bar(total=len(outputs), desc="merging", unit="tensor", enabled=progress)
    with bar, _single_threaded_kernels(), ReadAhead([read for reads in per_tensor for read in reads], depth=read_ahead) as ahead, \
            ShardedSafetensorsWriter(folder, outputs, max_shard_size=plan.recipe.max_shard_bytes,
                                     metadata={"merged_by": "hf_lwmm"}) as writer:

        def copies(count: int) -> Iterator[torch.Tensor]:
            """The next ``count`` planned reads, in order (a reused one is valid until the next is drawn)."""
            tensors = (ahead.next() for _ in range(count))
            return tensors if device.type == "cpu" else (tensor.to(device) for tensor in tensors)

        for index, tensor in enumerate(plan.tensors):
            bar.update()
            if tensor.rule is Rule.ANCHOR:
                merged = ahead.next()
            else:
                merged = _combine(tensor, plan, copies, weights[tensor.layer])
                ahead.skip_to(ends[index])  # a method that stopped drawing early leaves reads to drop
                if not torch.isfinite(merged.sum()) and not torch.isfinite(merged).all():  # a finite sum proves it cheaply
                    raise CorruptWeightsError(f"merged tensor {tensor.output.name!r} has NaN or inf values: "
                                              f"check the inputs ({', '.join(plan.labels)})")
            writer.write(tensor.output.name, merged.to(tensor.output.dtype))
    return dict(writer.sha256)


@contextlib.contextmanager
def _single_threaded_kernels() -> Iterator[None]:
    """Run the loop's torch kernels on the calling thread alone, then restore the caller's thread count.

    The kernels are small and memory-bound and the loop already overlaps reading, combining and hashing on
    threads of its own; an intra-op thread team adds a wake-up per kernel, which on a busy machine waits for
    a time slice (4×B5 at torch's default 2 threads on 2 busy cores: 17–37 s instead of 3.6 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _reads_of(tensor: TensorPlan, plan: MergePlan, *, shared: bool) -> list[PlannedRead]:
    """The copies :func:`_combine` draws for one tensor, in the order it draws them.

    Copies folded into a running sum (the average, and a method that opted in) share the read-ahead's
    reused buffers; the others get fresh tensors of their own.
    """
    sources = plan.sources
    if tensor.rule is Rule.ANCHOR:
        return [PlannedRead(sources[plan.anchor], tensor.names[plan.anchor])]
    if tensor.rule is Rule.GAUSSIAN_VARIANCE:
        assert tensor.mean_names is not None
        return [PlannedRead(source, names[i]) for names in (tensor.mean_names, tensor.names) for i, source in enumerate(sources)]
    reused = shared or tensor.rule is Rule.AVERAGE
    return [PlannedRead(source, tensor.names[i], reused=reused) for i, source in enumerate(sources)]


def _combine(tensor: TensorPlan, plan: MergePlan, copies: Callable[[int], Iterator[torch.Tensor]],
             weights: torch.Tensor) -> torch.Tensor:
    count = len(plan.sources)
    if tensor.rule is Rule.GAUSSIAN_VARIANCE:
        return gaussian_bn_stats(list(copies(count)), list(copies(count)), weights)[1]
    if tensor.rule is Rule.AVERAGE:
        return weighted_average(copies(count), weights)
    return plan.method.merge_tensor(tensor.key, copies(count), weights)


def _copy_configs(anchor_folder: Path, folder: Path, dtype: str | None) -> None:
    config = json.loads((anchor_folder / CONFIG_NAME).read_text())
    if dtype is not None:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (anchor_folder / PREPROCESSOR_NAME).is_file():
        shutil.copyfile(anchor_folder / PREPROCESSOR_NAME, folder / PREPROCESSOR_NAME)

