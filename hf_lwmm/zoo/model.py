"""The zoo's one SegFormer size, its image processor, and starting a model from the common base.

Size: the SegFormer-B0 encoder (hidden sizes 32/64/160/256, two blocks per stage, 3.3 M parameters)
with a 128-wide decode head, 3.45 M parameters in all (the B0 head is 256 wide: 3.72 M, used as the
head-width variant).  B0 is the smallest published SegFormer, so the zoo keeps the real encoder
layout (four stages, efficient attention with reduction ratios 8/4/2/1) that layer-wise merging is
about, while a supervised step (batch 8, 160×160 crops) takes about 0.6 s on 2 idle CPU cores and about
1 s on the shared machine (measured; the 800-step base took 14 min).  A larger model would leave too
few steps in the 60-minute budget to train from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict, cast

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

from hf_lwmm.zoo.data import LabelSet, Normalisation


class EncoderShape(TypedDict):
    """The encoder arguments of :class:`~transformers.SegformerConfig`."""

    num_channels: int
    num_encoder_blocks: int
    depths: list[int]
    sr_ratios: list[int]
    hidden_sizes: list[int]
    patch_sizes: list[int]
    strides: list[int]
    num_attention_heads: list[int]
    mlp_ratios: list[int]


#: SegFormer-B0's encoder; the zoo's shared architecture
ENCODER = EncoderShape(
    num_channels=3,
    num_encoder_blocks=4,
    depths=[2, 2, 2, 2],
    sr_ratios=[8, 4, 2, 1],
    hidden_sizes=[32, 64, 160, 256],
    patch_sizes=[7, 3, 3, 3],
    strides=[4, 2, 2, 2],
    num_attention_heads=[1, 2, 5, 8],
    mlp_ratios=[4, 4, 4, 4],
)
DEFAULT_DECODER_WIDTH = 128
#: the ImageNet statistics SegformerImageProcessor uses by default
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def zoo_config(*, label_set: LabelSet, decoder_hidden_size: int = DEFAULT_DECODER_WIDTH) -> SegformerConfig:
    """The zoo's SegFormer config for a label set and decode-head width (void is never a class)."""
    return SegformerConfig(
        **ENCODER,
        decoder_hidden_size=decoder_hidden_size,
        id2label=dict(label_set.id2label),
        label2id={name: index for index, name in label_set.id2label.items()},
        semantic_loss_ignore_index=255,
    )


@dataclass(frozen=True)
class Resolution:
    """Inference size of the image processor (height, width); training crops are cut from frames this size."""

    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)


def zoo_processor(resolution: Resolution) -> SegformerImageProcessorPil:
    """The processor saved with every model: resize to the training resolution, ImageNet normalisation.

    The PIL implementation is what ``SegformerImageProcessor`` falls back to without torchvision; it
    saves ``"image_processor_type": "SegformerImageProcessor"``, so either backend loads the folder.
    """
    return SegformerImageProcessorPil(
        do_resize=True,
        size={"height": resolution.height, "width": resolution.width},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_reduce_labels=False,
    )


def processor_normalisation(processor: SegformerImageProcessorPil) -> Normalisation:
    """Training applies exactly the processor's mean/std, so saved models need no other preprocessing."""
    # the processor's statistics are per RGB channel (see zoo_processor)
    return Normalisation(mean=cast("tuple[float, float, float]", tuple(processor.image_mean)),
                         std=cast("tuple[float, float, float]", tuple(processor.image_std)))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _classifier_rows(base_weight: torch.Tensor, sources: dict[int, tuple[int, ...]], base_labels: LabelSet) -> torch.Tensor:
    """Each new class starts as the mean of the base classifier rows of the classes it folds together."""
    base_index = {base_id: row for row, base_id in enumerate(sorted(base_labels.id2label))}
    return torch.stack([base_weight[[base_index[i] for i in sources[new_id]]].mean(dim=0) for new_id in sorted(sources)])


def model_from_base(base: SegformerForSemanticSegmentation, *, base_labels: LabelSet, label_set: LabelSet,
                    decoder_hidden_size: int, seed: int) -> SegformerForSemanticSegmentation:
    """A new model sharing the base's weights wherever shapes allow.

    The encoder always comes from the base.  A head of another width starts from a fresh seeded
    initialisation; a coarser class set keeps the base head and builds each classifier row from the
    rows of the base classes it merges, so the fine-tune starts where the base already is.
    """
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(zoo_config(label_set=label_set, decoder_hidden_size=decoder_hidden_size))
    target = model.state_dict()
    source = base.state_dict()
    classifier = {"decode_head.classifier.weight", "decode_head.classifier.bias"}
    for name, tensor in source.items():
        if name in classifier and label_set.sources != base_labels.sources and decoder_hidden_size == base.config.decoder_hidden_size:
            target[name] = _classifier_rows(tensor, label_set.sources, base_labels).reshape(target[name].shape)
        elif name in target and target[name].shape == tensor.shape:
            target[name] = tensor.clone()
    model.load_state_dict(target)
    return model
