"""mmsegmentation 0.x checkpoints (SegFormer, DAFormer, HRDA, MIC) → stock transformers SegFormer tensors and config.

A checkpoint is mmcv's ``{"meta": …, "state_dict": …}``, read with ``torch.load(weights_only=True)``
only. UDA wrappers prefix the state dict with ``model.`` (the student, what DAFormer/HRDA/MIC's test
script evaluates), ``ema_model.`` (the EMA teacher) and ``imnet_model.`` (an ImageNet feature
distance model, never converted).

**Backbone** (``backbone.``, the Mix Transformer of NVlabs/SegFormer's ``mix_transformer.py`` that these
repos copy): ``patch_embed{i}.proj|norm``, ``block{i}.{j}.norm1|norm2``, ``attn.q|kv|sr|norm|proj``,
``mlp.fc1|dwconv.dwconv|fc2`` and ``norm{i}`` (``i`` from 1) become ``encoder.patch_embeddings.{i-1}…``,
``encoder.block.{i-1}.{j}…`` and ``encoder.layer_norm.{i-1}``; the fused ``kv`` projection is split in
its two halves, key then value (``kv(x).reshape(B, N, 2, heads, C // heads)``). The config comes from
the shapes: hidden sizes and patch sizes from the patch embeddings (strides follow MiT's rule, 4 for the
7×7 stem and 2 for the 3×3 ones: ``patch // 2 + 1``), depths from the block indices, reduction ratios
from ``attn.sr``, MLP ratios from ``mlp.fc1``. Attention heads are not stored anywhere: the published MiT
``[1, 2, 5, 8]`` unless given. (MiT's ``norm1``/``norm2``/``norm{i}`` use ``eps=1e-6`` where transformers'
SegFormer uses PyTorch's 1e-5, a difference transformers' own conversion keeps.)

**SegFormer head** (``decode_head.``): NVlabs' ``linear_c1…linear_c4`` (concatenated deepest first, as
transformers does) or DAFormer's loop-built ``linear_c.0…linear_c.3`` (concatenated shallowest first:
the fuse weight's input blocks are reversed), ``linear_fuse.conv`` + ``linear_fuse.bn`` (mmcv's
``ConvModule``: conv, BN, ReLU; a conv bias, if any, is folded into the BN running mean) and
``linear_pred``: a ``SegformerForSemanticSegmentation`` whose logits are the original head's. Any other
head (DAFormer's ``embed_layers``/``fuse_layer``, HRDA's ``head``/``scale_attention``, a 3×3 fuse) has no
stock transformers class: only the encoder is converted, as a bare ``SegformerModel``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_lwmm.errors import LwmmError
from hf_lwmm.io.pickles import load_checkpoint

#: the UDA wrappers' model prefixes; ``imnet_model`` is a frozen ImageNet model, never converted
WEIGHT_CHOICES = ("model", "ema_model")
UDA_PREFIXES = ("model.", "ema_model.", "imnet_model.")
#: published MiT attention heads per stage (mit_b0 … mit_b5)
MIT_HEADS = (1, 2, 5, 8)
_BACKBONE = "backbone."
_HEAD = "decode_head."
_UNUSED_HEAD = "decode_head.conv_seg."  # BaseDecodeHead's classifier, unused by the SegFormer head's forward
_BLOCK_RENAMES = {"norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
                  "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
                  "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
                  "mlp.fc2": "mlp.dense2"}
_PATCH = re.compile(r"^patch_embed(\d+)\.(proj|norm)\.(weight|bias)$")
_BLOCK = re.compile(r"^block(\d+)\.(\d+)\.(.+)\.(weight|bias)$")
_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")
_NVLABS_PROJ = re.compile(r"^linear_c(\d)\.proj\.(weight|bias)$")
_LOOP_PROJ = re.compile(r"^linear_c\.(\d)\.proj\.(weight|bias)$")
_BN_STATS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass
class Conversion:
    """What a checkpoint converts to: transformers file names → tensors, the config, and what was left out."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    has_head: bool
    weights: str  # the UDA model converted ("model", "ema_model") or "" for a plain checkpoint
    left_out: list[str] = field(default_factory=list)  # "prefix (N tensors)" lines, for the card and the terminal


def read_checkpoint(file: Path, *, label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and meta of an mmcv checkpoint (or of a bare state dict), read with ``weights_only=True``."""
    loaded = load_checkpoint(file, label=label)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        state, meta = loaded["state_dict"], loaded.get("meta")
    elif isinstance(loaded, dict) and loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        state, meta = loaded, None
    else:
        raise LwmmError(f"{label}: not an mmsegmentation checkpoint (no 'state_dict' of tensors)")
    tensors = {str(name): value for name, value in state.items() if isinstance(value, torch.Tensor)}
    return tensors, meta if isinstance(meta, dict) else {}


def select_weights(state: dict[str, torch.Tensor], weights: str | None, *, label: str) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """The tensors of one model of a UDA checkpoint (prefix removed), its name, and the other models' summaries."""
    wrapped = Counter(prefix[:-1] for name in state for prefix in UDA_PREFIXES if name.startswith(prefix))
    if not wrapped:
        if weights not in (None, "model"):
            raise LwmmError(f"--weights {weights}: {label} is a plain mmsegmentation checkpoint with one model (no "
                            "UDA wrapper prefixes)")
        return state, "", []
    chosen = weights or "model"
    if chosen not in wrapped:
        raise LwmmError(f"--weights {chosen}: {label} has no {chosen}.* weights (it has {', '.join(sorted(wrapped))})")
    selected = {name[len(chosen) + 1:]: tensor for name, tensor in state.items() if name.startswith(chosen + ".")}
    others = [f"{prefix}.* ({_tensors(count)}: the UDA wrapper's {'ImageNet feature model' if prefix == 'imnet_model' else 'other model'})"
              for prefix, count in sorted(wrapped.items()) if prefix != chosen]
    return selected, chosen, others + _summarise([name for name in state if not name.startswith(UDA_PREFIXES)])


def convert_state(state: dict[str, torch.Tensor], *, num_attention_heads: list[int] | None = None,
                  id2label: dict[int, str] | None = None, weights: str = "", label: str) -> Conversion:
    """Convert one mmseg model's state dict (``backbone.*``, ``decode_head.*``, …) to transformers names."""
    backbone = {name[len(_BACKBONE):]: tensor for name, tensor in state.items() if name.startswith(_BACKBONE)}
    encoder, config, unused_backbone = _convert_backbone(backbone, num_attention_heads, label=label)
    head_state = {name[len(_HEAD):]: tensor for name, tensor in state.items()
                  if name.startswith(_HEAD) and not name.startswith(_UNUSED_HEAD)}
    head = _convert_head(head_state, config)
    left_out = [_BACKBONE + name for name in unused_backbone]
    left_out += [name for name in state if not name.startswith((_BACKBONE, _HEAD))]
    if head is None:
        left_out += [name for name in state if name.startswith(_HEAD)]
        config.update(architectures=["SegformerModel"])
        return Conversion(encoder, config, False, weights, _summarise(left_out))
    left_out += [name for name in state if name.startswith(_UNUSED_HEAD)]
    num_labels = head["decode_head.classifier.weight"].shape[0]
    if id2label is None:
        raise LwmmError(f"{label}: no class names (meta['CLASSES']): give them with --id2label FILE ({num_labels} classes)")
    if len(id2label) != num_labels:
        raise LwmmError(f"{label}: {len(id2label)} class names for a head with {num_labels} classes")
    config.update(architectures=["SegformerForSemanticSegmentation"],
                  decoder_hidden_size=int(head["decode_head.classifier.weight"].shape[1]),
                  id2label={int(i): str(name) for i, name in id2label.items()},
                  label2id={str(name): int(i) for i, name in id2label.items()})
    tensors = {f"segformer.{name}": tensor for name, tensor in encoder.items()} | head
    return Conversion(tensors, config, True, weights, _summarise(left_out))


def class_names(meta: dict[str, Any]) -> dict[int, str] | None:
    """``meta["CLASSES"]`` of an mmseg checkpoint as id2label."""
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(name, str) for name in classes):
        return dict(enumerate(classes))
    return None


def _convert_backbone(backbone: dict[str, torch.Tensor], heads: list[int] | None, *,
                      label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    tensors: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    depths: dict[int, set[int]] = {}
    for name, tensor in backbone.items():
        if match := _PATCH.match(name):
            stage, part, kind = int(match.group(1)) - 1, match.group(2), match.group(3)
            tensors[f"encoder.patch_embeddings.{stage}.{'proj' if part == 'proj' else 'layer_norm'}.{kind}"] = tensor
        elif match := _NORM.match(name):
            tensors[f"encoder.layer_norm.{int(match.group(1)) - 1}.{match.group(2)}"] = tensor
        elif (match := _BLOCK.match(name)) and (match.group(3) in _BLOCK_RENAMES or match.group(3) == "attn.kv"):
            stage, block, part, kind = int(match.group(1)) - 1, int(match.group(2)), match.group(3), match.group(4)
            depths.setdefault(stage, set()).add(block)
            prefix = f"encoder.block.{stage}.{block}."
            if part == "attn.kv":
                key, value = tensor.chunk(2, dim=0)
                tensors[f"{prefix}attention.self.key.{kind}"] = key.clone()
                tensors[f"{prefix}attention.self.value.{kind}"] = value.clone()
            else:
                tensors[f"{prefix}{_BLOCK_RENAMES[part]}.{kind}"] = tensor
        else:
            unused.append(name)
    stages = sorted({int(name.split(".")[2]) for name in tensors if name.startswith("encoder.patch_embeddings.")})
    if not stages or stages != list(range(len(stages))) or sorted(depths) != stages:
        raise LwmmError(f"{label}: no Mix Transformer backbone (backbone.patch_embed1…, backbone.block1.0…): not a "
                        "SegFormer-family checkpoint")
    hidden = [int(tensors[f"encoder.patch_embeddings.{s}.proj.weight"].shape[0]) for s in stages]
    patch = [int(tensors[f"encoder.patch_embeddings.{s}.proj.weight"].shape[-1]) for s in stages]
    sr_ratios = [int(tensors[f"encoder.block.{s}.0.attention.self.sr.weight"].shape[-1])
                 if f"encoder.block.{s}.0.attention.self.sr.weight" in tensors else 1 for s in stages]
    mlp_ratios = []
    for s in stages:
        inner = int(tensors[f"encoder.block.{s}.0.mlp.dense1.weight"].shape[0])
        if inner % hidden[s]:
            raise LwmmError(f"{label}: stage {s + 1} has an MLP of {inner} for {hidden[s]} channels, not a whole ratio")
        mlp_ratios.append(inner // hidden[s])
    heads = list(heads) if heads is not None else list(MIT_HEADS[: len(stages)])
    if len(heads) != len(stages):
        raise LwmmError(f"--num-attention-heads {','.join(map(str, heads))}: {len(heads)} values for {len(stages)} stages")
    for s, (count, size) in enumerate(zip(heads, hidden)):
        if count < 1 or size % count:
            raise LwmmError(f"--num-attention-heads {','.join(map(str, heads))}: {count} heads do not divide the "
                            f"{size} channels of stage {s + 1}")
    config = {"model_type": "segformer", "num_channels": int(tensors["encoder.patch_embeddings.0.proj.weight"].shape[1]),
              "num_encoder_blocks": len(stages), "depths": [len(depths[s]) for s in stages], "hidden_sizes": hidden,
              "patch_sizes": patch, "strides": [size // 2 + 1 for size in patch], "sr_ratios": sr_ratios,
              "mlp_ratios": mlp_ratios, "num_attention_heads": heads}
    return tensors, config, unused


def _convert_head(head: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The transformers decode head, or ``None`` when ``head`` is not exactly mmseg's SegFormer head."""
    stages = config["num_encoder_blocks"]
    projections: dict[str, torch.Tensor] = {}
    order = None
    for name, tensor in head.items():
        if match := _NVLABS_PROJ.match(name):
            projections[f"decode_head.linear_c.{int(match.group(1)) - 1}.proj.{match.group(2)}"] = tensor
            order = order or "deepest first"
        elif match := _LOOP_PROJ.match(name):
            projections[f"decode_head.linear_c.{match.group(1)}.proj.{match.group(2)}"] = tensor
            order = order or "shallowest first"
    expected = {f"linear_fuse.bn.{kind}" for kind in _BN_STATS} | {"linear_fuse.conv.weight", "linear_pred.weight", "linear_pred.bias"}
    rest = set(head) - {name for name in head if _NVLABS_PROJ.match(name) or _LOOP_PROJ.match(name)}
    wanted = {f"decode_head.linear_c.{s}.proj.{kind}" for s in range(stages) for kind in ("weight", "bias")}
    if set(projections) != wanted or not expected <= rest <= expected | {"linear_fuse.conv.bias"}:
        return None
    fuse = head["linear_fuse.conv.weight"]
    if fuse.dim() != 4 or fuse.shape[2:] != (1, 1) or fuse.shape[1] != stages * fuse.shape[0]:
        return None  # a 3x3 fuse (DAFormer's conv_kernel_size) has no transformers equivalent
    if order == "shallowest first":  # transformers concatenates the deepest stage first
        fuse = torch.cat(list(fuse.chunk(stages, dim=1))[::-1], dim=1)
    running_mean = head["linear_fuse.bn.running_mean"]
    if "linear_fuse.conv.bias" in head:  # BN(conv(x) + b) = BN'(conv(x)) with the running mean shifted by b
        running_mean = running_mean - head["linear_fuse.conv.bias"]
    return projections | {
        "decode_head.linear_fuse.weight": fuse.contiguous(),
        **{f"decode_head.batch_norm.{kind}": head[f"linear_fuse.bn.{kind}"] for kind in _BN_STATS},
        "decode_head.batch_norm.running_mean": running_mean,
        "decode_head.classifier.weight": head["linear_pred.weight"],
        "decode_head.classifier.bias": head["linear_pred.bias"],
    }


def _summarise(names: list[str]) -> list[str]:
    """Left-out tensors grouped by their first two name parts: ``decode_head.fuse_layer (5 tensors)``."""
    groups = Counter(".".join(name.split(".")[:2]) for name in names)
    return [f"{group} ({_tensors(count)})" for group, count in groups.items()]


def _tensors(count: int) -> str:
    return f"{count} tensor{'s' if count > 1 else ''}"
