"""Align models by the tensor names in their files.

Each name loses its model prefix (``segformer.``, ``glpn.``, none for a bare ``SegformerModel``), so
the Mix-Transformer encoder of a semantic model meets the encoder of a depth model or a bare backbone.
Models of unrelated architectures are refused first (:func:`check_architectures`): their tensor names
may coincide (``encoder.layer.0…`` in BERT and ViT) without meaning the same thing.

Layering: reads only tensor headers (:mod:`hf_lwmm.io.reader`); the planner builds on it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from hf_lwmm.errors import IncompatibleModelsError
from hf_lwmm.io.reader import TensorInfo, TensorSource

#: Base-model prefixes of encoders in the MiT family, stripped before matching.
KNOWN_MODEL_PREFIXES = ("segformer", "glpn")
#: model types that share one backbone and may merge with each other (besides models of one type)
BACKBONE_FAMILIES: tuple[frozenset[str], ...] = (frozenset(KNOWN_MODEL_PREFIXES),)
ENCODER_PREFIX = "encoder."
_ENCODER_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(\d+)\.")


class TensorStatus(str, Enum):
    SHARED = "shared"
    SHAPE_MISMATCH = "shape-mismatch"
    PARTIAL = "not-in-every-model"


def canonical_name(name: str, model_type: str | None = None) -> str:
    """Name with its base-model prefix removed."""
    prefixes = {*KNOWN_MODEL_PREFIXES, *([model_type] if model_type else [])}
    head, dot, rest = name.partition(".")
    return rest if dot and head in prefixes else name


@dataclass(frozen=True)
class AlignedTensor:
    """One tensor of the anchor (or of other models, when the anchor lacks it)."""

    key: str
    status: TensorStatus
    #: file name of this tensor in each model that has it (index → name)
    names: dict[int, str]
    #: shape in each model that has it
    shapes: dict[int, tuple[int, ...]]


@dataclass
class Alignment:
    """Which tensors all models share; everything else comes from the anchor."""

    labels: list[str]
    anchor: int
    tensors: dict[str, AlignedTensor] = field(default_factory=dict)

    @property
    def shared(self) -> list[str]:
        return [key for key, tensor in self.tensors.items() if tensor.status is TensorStatus.SHARED]

    def anchor_keys(self) -> list[str]:
        """Keys of the anchor's tensors, in the anchor's file order: the output holds exactly these."""
        return [key for key, tensor in self.tensors.items() if self.anchor in tensor.names]

    def only_in(self, index: int) -> list[str]:
        return [key for key, tensor in self.tensors.items() if list(tensor.names) == [index]]


def check_architectures(labels: list[str], model_types: list[str | None]) -> None:
    """Model types must match or belong to one backbone family; a model without ``model_type`` is not judged."""
    known = [(label, model_type) for label, model_type in zip(labels, model_types) if model_type]
    for label, model_type in known[1:]:
        first_label, first_type = known[0]
        related = model_type == first_type or any({model_type, first_type} <= family for family in BACKBONE_FAMILIES)
        if not related:
            families = "; ".join(", ".join(sorted(family)) for family in BACKBONE_FAMILIES)
            raise IncompatibleModelsError(
                f"models {first_label} ({first_type}) and {label} ({model_type}) have unrelated architectures: "
                f"model types must match or belong to one backbone family ({families})")


def align(sources: list[TensorSource], model_types: list[str | None], *, anchor: int, same_depths: bool = True) -> Alignment:
    """Match tensors across models by canonical name and shape.

    ``same_depths``: refuse models whose encoders have different numbers of blocks per stage (what a
    merge needs); without it, such models are aligned on what they still share (for a report).
    """
    canonical: list[dict[str, TensorInfo]] = []
    for source, model_type in zip(sources, model_types):
        canonical.append({canonical_name(name, model_type): info for name, info in source.infos.items()})
    order = list(canonical[anchor]) + [k for table in canonical for k in table if k not in canonical[anchor]]
    alignment = Alignment(labels=[source.label for source in sources], anchor=anchor)
    for key in dict.fromkeys(order):
        present = {i: table[key] for i, table in enumerate(canonical) if key in table}
        shapes = {i: info.shape for i, info in present.items()}
        if len(present) < len(sources):
            status = TensorStatus.PARTIAL
        elif len(set(shapes.values())) > 1:
            status = TensorStatus.SHAPE_MISMATCH
        else:
            status = TensorStatus.SHARED
        alignment.tensors[key] = AlignedTensor(key, status, {i: info.name for i, info in present.items()}, shapes)
    _check_compatible(alignment, canonical, same_depths=same_depths)
    return alignment


def _check_compatible(alignment: Alignment, canonical: list[dict[str, TensorInfo]], *, same_depths: bool) -> None:
    shared = alignment.shared
    has_encoder = any(key.startswith(ENCODER_PREFIX) for key in canonical[alignment.anchor])
    if not shared or (has_encoder and not any(key.startswith(ENCODER_PREFIX) for key in shared)):
        raise IncompatibleModelsError(
            f"models {', '.join(alignment.labels)} share no encoder tensor (same name and shape): they do not share a backbone"
        )
    depths = [_encoder_depths(table) for table in canonical]
    for label, depth in zip(alignment.labels, depths if same_depths else []):
        if depth != depths[alignment.anchor]:
            raise IncompatibleModelsError(
                f"model {label} has encoder depths {depth}, the anchor {alignment.labels[alignment.anchor]} has {depths[alignment.anchor]}"
            )


def _encoder_depths(keys: Iterable[str]) -> list[int]:
    """Blocks per encoder stage, read from ``encoder.block.{stage}.{block}`` names."""
    blocks: dict[int, set[int]] = defaultdict(set)
    for key in keys:
        match = _ENCODER_BLOCK.match(key)
        if match:
            blocks[int(match.group(1))].add(int(match.group(2)))
    return [len(blocks[stage]) for stage in sorted(blocks)]


def alignment_counts(alignment: Alignment) -> dict[str, int]:
    """How many tensors have each status, plus the anchor-only count."""
    counts = {status.value: 0 for status in TensorStatus}
    for tensor in alignment.tensors.values():
        counts[tensor.status.value] += 1
    return counts


def alignment_report(alignment: Alignment) -> str:
    """Plain-text report, one line per layer: its tensors by status, and who lacks what."""
    from hf_lwmm.layers import layer_of, order_layers

    by_layer: dict[str, list[AlignedTensor]] = defaultdict(list)
    for tensor in alignment.tensors.values():
        by_layer[layer_of(tensor.key)].append(tensor)
    labels = alignment.labels
    lines = ["models: " + ", ".join(f"[{i}] {label}" + (" (anchor)" if i == alignment.anchor else "") for i, label in enumerate(labels))]
    counts = alignment_counts(alignment)
    lines.append("tensors: " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    lines += _depth_report(alignment)
    width = max(len(layer) for layer in by_layer)
    for layer in order_layers(list(alignment.tensors)):
        tensors = by_layer[layer]
        parts = []
        shared = sum(t.status is TensorStatus.SHARED for t in tensors)
        if shared:
            parts.append(f"{shared} shared")
        partial: dict[str, list[str]] = defaultdict(list)  # who has them → their short names
        for tensor in tensors:
            short = tensor.key.rsplit(".", 1)[-1] if tensor.key.count(".") else tensor.key
            if tensor.status is TensorStatus.SHAPE_MISMATCH:
                shapes = " vs ".join(f"[{i}]{list(shape)}" for i, shape in tensor.shapes.items())
                parts.append(f"shape-mismatch {short} {shapes}")
            elif tensor.status is TensorStatus.PARTIAL:
                partial[",".join(f"[{i}]" for i in tensor.names)].append(short)
        parts += [f"{names[0] if len(names) == 1 else f'{len(names)} tensors'} only in {owners}" for owners, names in partial.items()]
        lines.append(f"  {layer:<{width}}  " + "; ".join(parts))
    return "\n".join(lines)


def _depth_report(alignment: Alignment) -> list[str]:
    """When encoder depths differ: each model's depths and, per stage, the first blocks all models share."""
    depths = [_encoder_depths(key for key, tensor in alignment.tensors.items() if index in tensor.names)
              for index in range(len(alignment.labels))]
    if all(depth == depths[alignment.anchor] for depth in depths):
        return []
    lines = ["encoder depths differ (blocks per stage): " + ", ".join(f"[{i}] {depth}" for i, depth in enumerate(depths))]
    blocks: dict[int, dict[int, bool]] = defaultdict(dict)
    for key, tensor in alignment.tensors.items():
        match = _ENCODER_BLOCK.match(key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage][block] = blocks[stage].get(block, True) and tensor.status is TensorStatus.SHARED
    shared = []
    for stage in sorted(blocks):
        count = next((block for block in sorted(blocks[stage]) if not blocks[stage][block]), len(blocks[stage]))
        first = {0: "none", 1: "block 0"}.get(count, f"blocks 0–{count - 1}")
        shared.append(f"stage {stage}: {first} of {len(blocks[stage])}")
    lines.append("shared by all: " + "; ".join(shared))
    lines.append("(lwmm-hub merge refuses models of different depths; the layers below show what they share)")
    return lines
