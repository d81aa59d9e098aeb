"""Tiny SegFormer-family models built in the tests (seconds, kilobytes)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

TINY_ENCODER = dict(
    num_channels=3,
    num_encoder_blocks=4,
    depths=[1, 1, 1, 1],
    sr_ratios=[8, 4, 2, 1],
    hidden_sizes=[8, 16, 24, 32],
    num_attention_heads=[1, 2, 3, 4],
)


def tiny_config(*, num_labels: int = 5, decoder_hidden_size: int = 16, **overrides) -> SegformerConfig:
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    return SegformerConfig(**{**TINY_ENCODER, **overrides}, decoder_hidden_size=decoder_hidden_size,
                           id2label=id2label, label2id={v: k for k, v in id2label.items()})


def make_tiny_segformer(folder: Path, *, num_labels: int = 5, seed: int = 0, decoder_hidden_size: int = 16,
                        bn_stats: bool = True, **overrides) -> Path:
    """Save a randomly initialised tiny SegFormer (with non-trivial BatchNorm statistics) to ``folder``."""
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(tiny_config(num_labels=num_labels, decoder_hidden_size=decoder_hidden_size, **overrides))
    if bn_stats:
        bn = model.decode_head.batch_norm
        generator = torch.Generator().manual_seed(seed + 1000)
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
        bn.num_batches_tracked.fill_(10 + seed)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return Path(folder)
