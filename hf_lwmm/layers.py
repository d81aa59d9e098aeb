"""Which layer a tensor belongs to, and the order of layers by depth.

SegFormer (MiT encoder + all-MLP decode head) is known: per stage ``s`` the layers are
``patch_embeddings.s``, ``block.s.j`` for each block ``j``, ``layer_norm.s``; then the decode head's
``linear_c.k``, ``linear_fuse``, ``batch_norm``, ``classifier``. Other tensors fall back to their
module path, ordered as the anchor's modules (numbers compared as numbers).
"""

from __future__ import annotations

import re

_SEGFORMER_LAYERS = (
    (re.compile(r"^encoder\.patch_embeddings\.(\d+)\."), lambda m: ((int(m[1]), 0, 0), f"patch_embeddings.{m[1]}")),
    (re.compile(r"^encoder\.block\.(\d+)\.(\d+)\."), lambda m: ((int(m[1]), 1, int(m[2])), f"block.{m[1]}.{m[2]}")),
    (re.compile(r"^encoder\.layer_norm\.(\d+)\."), lambda m: ((int(m[1]), 2, 0), f"layer_norm.{m[1]}")),
    (re.compile(r"^decode_head\.linear_c\.(\d+)\."), lambda m: ((10**6, 0, int(m[1])), f"linear_c.{m[1]}")),
    (re.compile(r"^decode_head\.linear_fuse\."), lambda m: ((10**6, 1, 0), "linear_fuse")),
    (re.compile(r"^decode_head\.batch_norm\."), lambda m: ((10**6, 2, 0), "batch_norm")),
    (re.compile(r"^decode_head\.classifier\."), lambda m: ((10**6, 3, 0), "classifier")),
)
_FALLBACK_RANK = (10**7, 0, 0)
_NUMBER = re.compile(r"(\d+)")


def layer_of(key: str) -> str:
    """Layer name of a canonical tensor key."""
    for pattern, describe in _SEGFORMER_LAYERS:
        match = pattern.match(key)
        if match:
            return describe(match)[1]
    module, _, _ = key.rpartition(".")
    return module or key


def _depth_rank(key: str) -> tuple:
    for pattern, describe in _SEGFORMER_LAYERS:
        match = pattern.match(key)
        if match:
            return describe(match)[0]
    module = layer_of(key)
    natural = tuple(int(part) if part.isdigit() else part for part in _NUMBER.split(module))
    return (*_FALLBACK_RANK, natural)


def order_layers(keys: list[str]) -> list[str]:
    """Distinct layers of ``keys``, shallowest first."""
    first_key: dict[str, str] = {}
    for key in keys:
        first_key.setdefault(layer_of(key), key)
    return sorted(first_key, key=lambda layer: _depth_rank(first_key[layer]))
