"""Pickle checkpoints, opt-in only: ``torch.load(weights_only=True)``, never a full unpickle.

``weights_only=True`` lets the unpickler build tensors, containers and primitive values only, so a
checkpoint that names any other class or function (the way a malicious pickle runs code) is refused
before anything of it runs. Zip-format checkpoints are memory-mapped instead of read into memory.

Checkpoints saved with ``torch.save(model.state_dict())`` under transformers 5 hold the in-memory
names of SegFormer (``segformer.stages.0.blocks.0.attention.q_proj…``), not the names transformers
writes to files (``segformer.encoder.block.0.0.attention.self.query…``); :func:`file_names` maps
them back so such a checkpoint aligns with every SegFormer folder.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from hf_lwmm.errors import CorruptWeightsError, LwmmError

#: transformers 5's SegFormer renames (conversion_mapping "SegformerModel" and
#: "SegformerForSemanticSegmentation"), inverted: in-memory name pattern → file name.
#: transformers keeps that mapping in a private module, so it is spelled out here and tested both ways.
_IN_MEMORY_TO_FILE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"(^|\.)stages\.(\d+)\.patch_embeddings\.", r"\1encoder.patch_embeddings.\2."),
        (r"(^|\.)stages\.(\d+)\.blocks\.", r"\1encoder.block.\2."),
        (r"(^|\.)stages\.(\d+)\.layer_norm\.", r"\1encoder.layer_norm.\2."),
        (r"\.attention\.q_proj\.", ".attention.self.query."),
        (r"\.attention\.k_proj\.", ".attention.self.key."),
        (r"\.attention\.v_proj\.", ".attention.self.value."),
        (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
        (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
        (r"\.attention\.o_proj\.", ".attention.output.dense."),
        (r"\.mlp\.fc1\.", ".mlp.dense1."),
        (r"\.mlp\.fc2\.", ".mlp.dense2."),
        (r"\.layernorm_before\.", ".layer_norm_1."),
        (r"\.layernorm_after\.", ".layer_norm_2."),
        (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
    )
)
_IN_MEMORY_MARK = re.compile(r"(^|\.)stages\.\d+\.(blocks|patch_embeddings|layer_norm)\.")


def load_checkpoint(file: Path, *, label: str) -> Any:
    """``torch.load(file, weights_only=True)`` (memory-mapped when the file is a zip checkpoint); one-line errors."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except FileNotFoundError:
        raise LwmmError(f"{label}: no such file {file}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for refused or broken pickles
        named = re.search(r"GLOBAL (\S+)", str(err))
        detail = f": it names {named.group(1)}, not a tensor or plain value" if named else f" ({err.__class__.__name__})"
        raise LwmmError(f"{label}: {file.name} cannot be read with torch.load(weights_only=True), "
                        f"which never runs code from a pickle{detail}") from None


def file_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict under the names transformers writes to files (in-memory transformers 5 names mapped back)."""
    if not any(_IN_MEMORY_MARK.search(name) for name in state):
        return state
    renamed = {}
    for name, tensor in state.items():
        for pattern, replacement in _IN_MEMORY_TO_FILE:
            name = pattern.sub(replacement, name)
        renamed[name] = tensor
    return renamed


def load_pickle_weights(label: str, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``pytorch_model.bin`` or of the shards its ``pytorch_model.bin.index.json`` lists, by file name."""
    parts = [file]
    if file.name.endswith(".index.json"):
        try:
            weight_map = json.loads(file.read_text())["weight_map"]
            names = list(dict.fromkeys(str(name) for name in weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptWeightsError(f"model {label}: unreadable {file.name} ({err.__class__.__name__})") from None
        outside = [name for name in names if Path(name).name != name or not name.endswith(".bin")]
        if outside:
            raise CorruptWeightsError(f"model {label}: {file.name} lists {outside[0]!r}, not a .bin file beside it")
        parts = [file.parent / name for name in names]
    tensors: dict[str, torch.Tensor] = {}
    for part in parts:
        state = load_checkpoint(part, label=f"model {label}")
        if not isinstance(state, dict):
            raise CorruptWeightsError(f"model {label}: {part.name} holds no state dict")
        tensors.update({str(name): value for name, value in state.items() if isinstance(value, torch.Tensor)})
    return file_names(tensors)
