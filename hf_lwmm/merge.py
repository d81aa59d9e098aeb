"""Execute a merge plan: stream tensor by tensor → write → configs → card, recipe and plot.

:func:`execute` is one streaming loop over :attr:`MergePlan.tensors <hf_lwmm.plan.MergePlan.tensors>`:
read each model's copy, combine by the tensor's rule, write. Everything goes into a staging folder
beside the output (:func:`hf_lwmm.io.output.staged_folder`), renamed into place only when complete, so a
failed or killed merge leaves nothing half-written. :func:`merge` is check the output + plan + execute.

Layering: the top of the merge pipeline (imports the planner, the card and the writer); the commands,
evaluation and experiments import it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import torch

from hf_lwmm.card import write_card_files
from hf_lwmm.console import progress_bar
from hf_lwmm.errors import CorruptWeightsError
from hf_lwmm.io import ShardedSafetensorsWriter
from hf_lwmm.io.output import check_output_folder, staged_folder
from hf_lwmm.methods.functional import gaussian_bn_stats, weighted_average
from hf_lwmm.plan import MergePlan, Rule, TensorPlan, plan_merge, with_weights
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.refs import CONFIG_NAME, PREPROCESSOR_NAME, ResolvedModel
from hf_lwmm.result import MergeResult
from hf_lwmm.system import resolve_device

__all__ = ["MergeResult", "check_output", "execute", "merge"]

#: reads each model's copy of a tensor (file names by model index), into a shared buffer when one is given
Copies = Callable[[dict[int, str], "torch.Tensor | None"], Iterator[torch.Tensor]]


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
    with staged_folder(output_dir, overwrite=options.overwrite) as staging:
        sha256 = write_weights(plan, staging, device=device, progress=options.progress)
        _copy_configs(models[plan.anchor].folder, staging, plan.recipe.dtype)
        result = MergeResult(plan, output_dir, sha256, hub_repo=hub_repo, name=name)
        write_card_files(result, staging)
        result.files = sorted(path.name for path in staging.iterdir())
    return result


def write_weights(plan: MergePlan, folder: Path, *, device: torch.device, progress: bool) -> dict[str, str]:
    """The streaming loop: each planned tensor is read, combined by its rule and written; returns file → sha256."""
    sources, anchor = plan.sources, plan.anchor
    # copies that are folded in at once share one read buffer (the largest copy's size), so neither memory
    # nor allocator churn grows with the number of models; a method that did not opt in gets fresh tensors
    largest = max((sources[i].infos[name].nbytes for tensor in plan.tensors if tensor.rule is not Rule.ANCHOR
                   for i, name in tensor.names.items()), default=0)
    read_buffer = torch.empty(largest, dtype=torch.uint8)
    method_buffer = read_buffer if plan.method.reads_shared_buffer() else None

    def copies(names: dict[int, str], buffer: torch.Tensor | None) -> Iterator[torch.Tensor]:
        """Each model's copy, read lazily (into ``buffer`` when given: valid until the next is drawn)."""
        tensors = (source.get(names[i], into=buffer) for i, source in enumerate(sources))
        return tensors if device.type == "cpu" else (tensor.to(device) for tensor in tensors)

    outputs = [tensor.output for tensor in plan.tensors]
    bar = progress_bar(total=len(outputs), desc="merging", unit="tensor", enabled=progress)
    with bar, ShardedSafetensorsWriter(folder, outputs, max_shard_size=plan.recipe.max_shard_bytes,
                                       metadata={"merged_by": "hf_lwmm"}) as writer:
        for tensor in plan.tensors:
            bar.update()
            if tensor.rule is Rule.ANCHOR:
                merged = sources[anchor].get(tensor.names[anchor])
            else:
                merged = _combine(tensor, plan, copies, read_buffer, method_buffer, device)
                if not torch.isfinite(merged.sum()) and not torch.isfinite(merged).all():  # a finite sum proves it cheaply
                    raise CorruptWeightsError(f"merged tensor {tensor.output.name!r} has NaN or inf values: "
                                              f"check the inputs ({', '.join(plan.labels)})")
            writer.write(tensor.output.name, merged.to(tensor.output.dtype))
    return dict(writer.sha256)


def _combine(tensor: TensorPlan, plan: MergePlan, copies: Copies, read_buffer: torch.Tensor,
             method_buffer: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    assert tensor.weights is not None
    weights = torch.tensor(tensor.weights, dtype=torch.float32, device=device)
    if tensor.rule is Rule.GAUSSIAN_VARIANCE:
        assert tensor.mean_names is not None
        return gaussian_bn_stats(list(copies(tensor.mean_names, None)), list(copies(tensor.names, None)), weights)[1]
    if tensor.rule is Rule.AVERAGE:
        return weighted_average(copies(tensor.names, read_buffer), weights)
    return plan.method.merge_tensor(tensor.key, copies(tensor.names, method_buffer), weights)


def _copy_configs(anchor_folder: Path, folder: Path, dtype: str | None) -> None:
    config = json.loads((anchor_folder / CONFIG_NAME).read_text())
    if dtype is not None:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (anchor_folder / PREPROCESSOR_NAME).is_file():
        shutil.copyfile(anchor_folder / PREPROCESSOR_NAME, folder / PREPROCESSOR_NAME)

