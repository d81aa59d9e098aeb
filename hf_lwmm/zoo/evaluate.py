"""mIoU of zoo models on a labelled split at the labels' full resolution, through each model's processor.

The split is decoded and preprocessed once (:class:`EvalSet`) and reused for every model of the zoo;
the metric itself is :mod:`hf_lwmm.evaluation.confusion`, the project's one mIoU implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

from hf_lwmm.evaluation.confusion import confusion_matrix, iou_from_confusion
from hf_lwmm.zoo.data import IGNORE, LabelSet, split_files


@dataclass(frozen=True)
class EvalSet:
    """A labelled split: processor pixels N×3×h×w and dataset label ids N×H×W at full resolution."""

    name: str
    pixel_values: torch.Tensor
    labels: np.ndarray


def load_eval_set(split_dir: Path, *, processor: SegformerImageProcessorPil, name: str) -> EvalSet:
    """Every frame of a split through ``processor``, with its full-resolution label."""
    files = split_files(split_dir, with_labels=True)
    images = [Image.open(image).convert("RGB") for image, _ in files]
    labels = np.stack([np.asarray(Image.open(label), dtype=np.uint8) for _, label in files])
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    return EvalSet(name=name, pixel_values=pixel_values, labels=labels)


@torch.no_grad()
def predict(model: SegformerForSemanticSegmentation, pixel_values: torch.Tensor, *, size: tuple[int, int],
            batch_size: int = 8) -> np.ndarray:
    """Class ids at ``size`` (height, width): logits upsampled bilinearly, then argmax."""
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    for start in range(0, len(pixel_values), batch_size):
        logits = model(pixel_values=pixel_values[start:start + batch_size].to(device)).logits
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        predictions.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(predictions)


def mean_iou(model: SegformerForSemanticSegmentation, eval_set: EvalSet, *, label_set: LabelSet) -> float:
    """mIoU over ``label_set``'s classes (void ignored); dataset labels are mapped onto the model's classes."""
    predictions = predict(model, eval_set.pixel_values, size=eval_set.labels.shape[-2:])
    reference = label_set.encode(eval_set.labels)
    confusion = confusion_matrix(predictions, reference, label_set.num_labels, ignore_index=IGNORE)
    return float(cast(float, iou_from_confusion(confusion)["mean_iou"]))  # iou_from_confusion's "mean_iou" is a float
