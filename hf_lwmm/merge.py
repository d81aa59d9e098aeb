"""Run a merge recipe: resolve → align → plan → merge tensor by tensor → write → card.

Everything is written into a temporary sibling of the output folder, renamed into place only when
complete, so a failed merge leaves nothing half-written.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import queue
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_lwmm.align import Alignment, TensorStatus, align
from hf_lwmm.console import progress_bar
from hf_lwmm.errors import CorruptWeightsError
from hf_lwmm.io import ShardedSafetensorsWriter, TensorInfo, TensorSource, open_weights
from hf_lwmm.io.output import check_output_folder, staged_folder
from hf_lwmm.layers import layer_of, order_layers
from hf_lwmm.methods import METHODS, MergeMethod
from hf_lwmm.methods.functional import gaussian_bn_stats, weighted_average
from hf_lwmm.plan import LayerWeights
from hf_lwmm.recipe import MergeRecipe
from hf_lwmm.refs import CONFIG_NAME, PREPROCESSOR_NAME, ResolvedModel, resolve
from hf_lwmm.system import resolve_device

_RUNNING_VAR = ".running_var"
_RUNNING_MEAN = ".running_mean"


@dataclass
class MergeResult:
    """What a merge produced and everything the card and recipe record about it."""

    output_dir: Path
    recipe: MergeRecipe
    models: list[ResolvedModel]
    alignment: Alignment
    layer_weights: list[LayerWeights]
    method_parameters: dict[str, object]
    sha256: dict[str, str]
    merged_tensors: int = 0
    anchor_tensors: int = 0
    files: list[str] = field(default_factory=list)
    #: the Hub repo the folder is meant for (named in the card's usage snippet)
    hub_repo: str | None = None
    #: model-index results (huggingface_hub ``EvalResult``) recorded in the card
    eval_results: list = field(default_factory=list)

    @property
    def anchor(self) -> int:
        return self.alignment.anchor


def merge(recipe: MergeRecipe, output_dir: str | Path, *, overwrite: bool = False, token: str | bool | None = None,
          progress: bool = True, hub_repo: str | None = None) -> MergeResult:
    """Merge the recipe's models into ``output_dir`` (a stock transformers model folder with its card).

    ``hub_repo`` is where the folder will be pushed, so that the card's usage snippet names it.
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite=overwrite, inputs=[ref.path for ref in recipe.refs if ref.path is not None])
    recipe.validate()
    device = resolve_device(recipe.device)
    method = METHODS[recipe.method](recipe)
    anchor = recipe.anchor_index

    models = [resolve(ref, token=token) for ref in recipe.refs]
    sources = [
        open_weights(model.folder, label=str(model.ref), allow_pickle=recipe.allow_pickle and model.ref.is_local)
        for model in models
    ]
    alignment = align(sources, [model.model_type for model in models], anchor=anchor)
    layers = order_layers(alignment.shared)
    layer_weights = method.layer_weights(layers, anchor=anchor)
    method.prepare(models, alignment)

    with staged_folder(output_dir, overwrite=overwrite) as staging:
        result = MergeResult(output_dir, recipe, models, alignment, layer_weights, method.describe(layers), sha256={}, hub_repo=hub_repo)
        card = _Beside(_card_beside_the_merge, result, staging)  # the plot needs only the plan; the card waits for the weights
        try:
            written = _write_weights(result, sources, method, staging, device=device, progress=progress)
            written.record_in(result)
            _copy_configs(models[anchor].folder, staging, recipe.dtype)
            card.finish(written)
        except BaseException:
            card.cancel()
            raise
        result.files = sorted(path.name for path in staging.iterdir())
    return result


@dataclass(frozen=True)
class WrittenWeights:
    """What writing the weights tells the card: file hashes and where each tensor came from."""

    sha256: dict[str, str]
    merged_tensors: int
    anchor_tensors: int

    def record_in(self, result: MergeResult) -> None:
        result.sha256, result.merged_tensors, result.anchor_tensors = dict(self.sha256), self.merged_tensors, self.anchor_tensors


def _card_beside_the_merge(receive: Callable[[], WrittenWeights | None], result: MergeResult, folder: Path) -> None:
    """Draw the plot and import the card machinery while the weights stream, then write the card once they are written."""
    from hf_lwmm.card import PLOT_NAME, plot_layer_weights, write_card_files

    plot_layer_weights(result, folder / PLOT_NAME)
    importlib.import_module("huggingface_hub.repocard")
    written = receive()
    if written is not None:
        written.record_in(result)
        write_card_files(result, folder)


class _Beside:
    """Run ``function(receive, *args)`` beside the merge loop; :meth:`finish` hands ``receive`` one value.

    Drawing and rendering are pure Python and would compete with the loop for the GIL in a thread, so
    the function runs in a forked process on another core, but only while this is the process's only
    thread (forking with other threads alive can deadlock the child on a lock they held); otherwise
    it runs in a thread.
    """

    def __init__(self, function: Callable[..., None], *args: object) -> None:
        self.name = getattr(function, "__name__", "task")
        self._process = None
        self._executor = None
        if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
            context = multiprocessing.get_context("fork")
            receiving, sending = context.Pipe(duplex=False)
            self._send: Callable[[object], None] = sending.send
            self._process = context.Process(target=function, args=(receiving.recv, *args), daemon=True)
            self._process.start()
        else:
            values: queue.SimpleQueue[object] = queue.SimpleQueue()
            self._send = values.put
            self._executor = ThreadPoolExecutor(max_workers=1)
            self._future = self._executor.submit(function, values.get, *args)

    def finish(self, value: object) -> None:
        """Hand the task its value and wait for it; re-raise its failure."""
        self._send(value)
        if self._process is not None:
            self._process.join()
            if self._process.exitcode != 0:
                raise RuntimeError(f"{self.name} failed in its background process (exit code {self._process.exitcode})")
        else:
            assert self._executor is not None
            self._executor.shutdown(wait=True)
            self._future.result()

    def cancel(self) -> None:
        """Stop the task (the merge failed): its output is discarded with the staging folder."""
        if self._process is not None:
            self._process.terminate()
            self._process.join()
        else:
            assert self._executor is not None
            self._send(None)
            self._executor.shutdown(wait=True, cancel_futures=True)


def _output_dtype(info: TensorInfo, dtype: str | None) -> torch.dtype:
    if dtype is None or not info.dtype.is_floating_point:
        return info.dtype
    return getattr(torch, dtype)


def _write_weights(result: MergeResult, sources: list[TensorSource], method: MergeMethod, folder: Path, *,
                   device: torch.device, progress: bool) -> WrittenWeights:
    alignment, recipe = result.alignment, result.recipe
    anchor_source = sources[alignment.anchor]
    weights_of_layer = {entry.layer: torch.tensor(entry.weights, dtype=torch.float32, device=device) for entry in result.layer_weights}
    keys = alignment.anchor_keys()
    plan = []
    for key in keys:
        info = anchor_source.infos[alignment.tensors[key].names[alignment.anchor]]
        plan.append(TensorInfo(info.name, _output_dtype(info, recipe.dtype), info.shape))

    # every copy of every merged tensor is read into this one buffer (the largest copy's size), so
    # neither memory nor allocator churn grows with the number of models
    largest_copy = max((sources[index].infos[name].nbytes for key in alignment.shared
                        for index, name in alignment.tensors[key].names.items()), default=0)
    read_buffer = torch.empty(largest_copy, dtype=torch.uint8)

    def tensors_of(key: str, *, kept: bool = False) -> Iterator[torch.Tensor]:
        """Each model's copy of a tensor, read lazily into the read buffer: a copy is valid until the next is drawn.

        ``kept``: a buffer each, for callers that hold every copy (tiny BN statistics).
        """
        names = alignment.tensors[key].names
        tensors = (source.get(names[i], into=None if kept else read_buffer) for i, source in enumerate(sources))
        return tensors if device.type == "cpu" else (tensor.to(device) for tensor in tensors)

    merged_tensors = anchor_tensors = 0
    bar = progress_bar(total=len(keys), desc="merging", unit="tensor", enabled=progress)
    with bar, ShardedSafetensorsWriter(folder, plan, max_shard_size=recipe.max_shard_size, metadata={"merged_by": "hf_lwmm"}) as writer:
        for key, out in zip(keys, plan):
            bar.update()
            aligned = alignment.tensors[key]
            weights = weights_of_layer.get(layer_of(key))
            from_anchor = (aligned.status is not TensorStatus.SHARED or weights is None or not out.dtype.is_floating_point
                           or (recipe.bn_stats == "anchor" and key.endswith((_RUNNING_MEAN, _RUNNING_VAR))))
            if from_anchor:
                tensor = anchor_source.get(out.name).to(out.dtype)
                anchor_tensors += 1
            else:
                tensor = _merge_one(key, tensors_of, weights, method, recipe.bn_stats).to(out.dtype)
                if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():  # a finite sum proves it cheaply
                    raise CorruptWeightsError(f"merged tensor {out.name!r} has NaN or inf values: check the inputs ({', '.join(alignment.labels)})")
                merged_tensors += 1
            writer.write(out.name, tensor)
    return WrittenWeights(dict(writer.sha256), merged_tensors, anchor_tensors)


def _merge_one(key: str, tensors_of: Callable[..., Iterator[torch.Tensor]], weights: torch.Tensor, method: MergeMethod,
               bn_stats: str) -> torch.Tensor:
    """Merge one shared floating tensor; BatchNorm running statistics follow ``bn_stats`` (gaussian or linear)."""
    if key.endswith(_RUNNING_VAR) and bn_stats == "gaussian":
        means = list(tensors_of(key[: -len(_RUNNING_VAR)] + _RUNNING_MEAN, kept=True))
        return gaussian_bn_stats(means, list(tensors_of(key, kept=True)), weights)[1]
    if key.endswith((_RUNNING_MEAN, _RUNNING_VAR)):
        return weighted_average(tensors_of(key), weights)
    return method.merge_tensor(key, tensors_of(key), weights)


def _copy_configs(anchor_folder: Path, folder: Path, dtype: str | None) -> None:
    config = json.loads((anchor_folder / CONFIG_NAME).read_text())
    if dtype is not None:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (anchor_folder / PREPROCESSOR_NAME).is_file():
        shutil.copyfile(anchor_folder / PREPROCESSOR_NAME, folder / PREPROCESSOR_NAME)

