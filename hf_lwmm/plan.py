"""Plan a merge: everything decided before any weight byte is read.

:func:`plan_merge` resolves every reference, opens the weight headers (a Hub model's safetensors headers
are read by HTTP range requests: no weight is downloaded until :func:`with_weights`), checks the architectures,
aligns the tensors, orders the shared layers, asks the method for its per-layer weights, and decides
for every output tensor where it comes from, its output dtype and its shard. The executor
(:mod:`hf_lwmm.merge`) then streams the plan; ``align``, ``diff``, ``sweep`` and the experiments read
plans without executing them.

Layering: builds on the recipe, references, weight headers, alignment and methods; imported by the
executor, the card and the commands, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import torch

from hf_lwmm.align import Alignment, TensorStatus, align, check_architectures
from hf_lwmm.io import TensorInfo, TensorSource, open_weights
from hf_lwmm.io.writer import shard_layout
from hf_lwmm.layers import layer_of, order_layers
from hf_lwmm.methods import METHODS, MergeMethod
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.refs import RemoteModel, ResolvedModel, fetch, locate, open_headers
from hf_lwmm.schedules import LayerWeights

RUNNING_MEAN = ".running_mean"
RUNNING_VAR = ".running_var"


class Rule(str, Enum):
    """Where an output tensor comes from."""

    #: the anchor's copy (not shared, not floating, or BN statistics under ``bn_stats: anchor``)
    ANCHOR = "anchor"
    #: the method's ``merge_tensor`` over every model's copy
    METHOD = "method"
    #: the weighted average (BN running statistics under ``bn_stats: linear``, and every running mean)
    AVERAGE = "average"
    #: the variance of the Gaussian mixture (BN running variance under ``bn_stats: gaussian``)
    GAUSSIAN_VARIANCE = "gaussian-variance"


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its canonical key and layer, its rule, its weights and its output name/dtype/shape."""

    key: str
    layer: str
    rule: Rule
    output: TensorInfo
    #: file name of this tensor in each model (index → name); only the anchor's for :attr:`Rule.ANCHOR`
    names: dict[int, str]
    #: one weight per model (``None`` for :attr:`Rule.ANCHOR`)
    weights: tuple[float, ...] | None = None
    #: for :attr:`Rule.GAUSSIAN_VARIANCE`: the running means' file names (index → name)
    mean_names: dict[int, str] | None = None


@dataclass
class MergePlan:
    """A merge with every decision made and no weight byte read: what :func:`~hf_lwmm.merge.execute` streams."""

    recipe: MergeRecipe
    #: Hub models stay :class:`RemoteModel` (headers only) until :func:`with_weights` downloads them
    models: list[ResolvedModel | RemoteModel]
    sources: list[TensorSource]
    alignment: Alignment
    #: the shared layers, shallowest first (what start-layer indices count)
    layers: list[str]
    layer_weights: list[LayerWeights]
    method: MergeMethod
    #: the method's parameters as applied (defaults resolved), for the card
    method_parameters: dict[str, object]
    #: output tensors in the anchor's file order
    tensors: list[TensorPlan]
    #: output files and the tensors each holds
    shards: list[tuple[str, list[TensorInfo]]]

    @property
    def anchor(self) -> int:
        return self.alignment.anchor

    @property
    def labels(self) -> list[str]:
        return self.alignment.labels

    @property
    def merged_tensors(self) -> int:
        return sum(tensor.rule is not Rule.ANCHOR for tensor in self.tensors)

    @property
    def anchor_tensors(self) -> int:
        return sum(tensor.rule is Rule.ANCHOR for tensor in self.tensors)


def plan_merge(recipe: MergeRecipe, options: RunOptions | None = None, *, same_depths: bool = True) -> MergePlan:
    """Resolve, open headers, check architectures, align and decide every output tensor (no weight bytes read).

    ``same_depths=False`` also plans models whose encoders differ in depth, on what they still share: a plan
    to report on (``lwmm-hub align``), not one to execute.
    """
    options = options or RunOptions()
    anchor = recipe.anchor_index
    # a Hub model is known from its safetensors headers: weights are downloaded only to execute (with_weights)
    models = [locate(ref, token=options.token, allow_pickle=options.allow_pickle) for ref in recipe.refs]
    labels = [str(model.ref) for model in models]
    check_architectures(labels, [model.model_type for model in models])
    sources = [open_headers(model, token=options.token, allow_pickle=options.allow_pickle) for model in models]
    alignment = align(sources, [model.model_type for model in models], anchor=anchor, same_depths=same_depths)
    layers = order_layers(alignment.shared)
    method = METHODS[recipe.method](recipe.parameters, num_models=len(models), anchor=anchor)
    layer_weights = method.layer_weights(layers)
    weights_of_layer = {entry.layer: entry.weights for entry in layer_weights}
    tensors = [_tensor_plan(key, alignment, sources[anchor], weights_of_layer, recipe) for key in alignment.anchor_keys()]
    shards = shard_layout([tensor.output for tensor in tensors], recipe.max_shard_bytes)
    return MergePlan(recipe, models, sources, alignment, layers, layer_weights, method, method.describe(layers), tensors, shards)


def with_weights(plan: MergePlan, options: RunOptions | None = None) -> MergePlan:
    """The plan with every Hub model's weights downloaded and every source readable (a plan holds headers only)."""
    options = options or RunOptions()
    fetched = [fetch(model, token=options.token) for model in plan.models]
    sources = [source if not isinstance(model, RemoteModel) or model.tensors is None  # already readable
               else open_weights(on_disk.folder, label=source.label, allow_pickle=options.allow_pickle)
               for model, source, on_disk in zip(plan.models, plan.sources, fetched)]
    models: list[ResolvedModel | RemoteModel] = [*fetched]
    return replace(plan, models=models, sources=sources)


def _tensor_plan(key: str, alignment: Alignment, anchor_source: TensorSource, weights_of_layer: dict[str, tuple[float, ...]],
                 recipe: MergeRecipe) -> TensorPlan:
    aligned = alignment.tensors[key]
    info = anchor_source.infos[aligned.names[alignment.anchor]]
    floating = info.dtype.is_floating_point
    output = TensorInfo(info.name, getattr(torch, recipe.dtype) if recipe.dtype and floating else info.dtype, info.shape)
    layer = layer_of(key)
    weights = weights_of_layer.get(layer)
    statistic = key.endswith((RUNNING_MEAN, RUNNING_VAR))
    anchor_only = {alignment.anchor: aligned.names[alignment.anchor]}
    if aligned.status is not TensorStatus.SHARED or weights is None or not floating or (statistic and recipe.bn_stats == "anchor"):
        return TensorPlan(key, layer, Rule.ANCHOR, output, anchor_only)
    if key.endswith(RUNNING_VAR) and recipe.bn_stats == "gaussian":
        mean = alignment.tensors.get(key[: -len(RUNNING_VAR)] + RUNNING_MEAN)
        if mean is not None and mean.status is TensorStatus.SHARED:
            return TensorPlan(key, layer, Rule.GAUSSIAN_VARIANCE, output, dict(aligned.names), weights, dict(mean.names))
    return TensorPlan(key, layer, Rule.AVERAGE if statistic else Rule.METHOD, output, dict(aligned.names), weights)
