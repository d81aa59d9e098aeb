"""Segmentation folders (``images/`` + ``labels/`` PNG pairs) held in memory, with batched augmentation.

The whole CamVid day/dusk split fits in a few tens of MB once resized to the training resolution, so
frames are decoded once and every training step samples from memory: on 2 CPU cores, decoding PNGs
per step would cost as much as the model.  Every random choice is drawn from a generator the caller
seeds per step, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.data import paired_files

#: label value the training losses and the confusion matrix skip
IGNORE = 255


@dataclass(frozen=True)
class LabelSet:
    """A model's classes and how the dataset's label ids map onto them (unknown ids → ``IGNORE``)."""

    name: str
    id2label: dict[int, str]
    lookup: np.ndarray  # uint8[256]: dataset label id -> model class id or IGNORE
    sources: dict[int, tuple[int, ...]]  # model class id -> dataset class ids it covers

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Dataset label ids → this set's class ids (void and unknown ids become ``IGNORE``)."""
        return self.lookup[labels]


def dataset_label_set(data_root: Path) -> LabelSet:
    """The dataset's own classes from ``classes.json`` (``id2label`` and ``ignore_index``)."""
    path = Path(data_root) / "classes.json"
    if not path.is_file():
        raise LwmmError(f"{path}: missing; the data folder needs classes.json with id2label")
    id2label = {int(key): str(value) for key, value in json.loads(path.read_text())["id2label"].items()}
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    lookup[list(id2label)] = list(id2label)
    return LabelSet(name="full", id2label=id2label, lookup=lookup, sources={i: (i,) for i in id2label})


def fold_classes(labels: LabelSet, *, folded: Sequence[str], into: str, name: str) -> LabelSet:
    """A coarser set: the classes in ``folded`` become one class ``into`` at the first one's position."""
    unknown = sorted(set(folded) - set(labels.id2label.values()))
    if unknown:
        raise LwmmError(f"fold_classes: unknown class names {unknown}")
    new_names: list[str] = []
    sources: dict[int, tuple[int, ...]] = {}
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    for old_id, old_name in sorted(labels.id2label.items()):
        new_name = into if old_name in folded else old_name
        if new_name not in new_names:
            new_names.append(new_name)
        new_id = new_names.index(new_name)
        sources[new_id] = sources.get(new_id, ()) + (old_id,)
        lookup[labels.lookup == old_id] = new_id
    return LabelSet(name=name, id2label=dict(enumerate(new_names)), lookup=lookup, sources=sources)


@dataclass(frozen=True)
class FrameSet:
    """Frames of one split at the training resolution: uint8 images N×3×H×W, labels N×H×W or None."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


@overload
def split_files(split_dir: Path, *, with_labels: Literal[True]) -> Sequence[tuple[Path, Path]]: ...
@overload
def split_files(split_dir: Path, *, with_labels: bool) -> Sequence[tuple[Path, Path | None]]: ...
def split_files(split_dir: Path, *, with_labels: bool) -> Sequence[tuple[Path, Path | None]]:
    """(image, label) pairs of a split (``images/`` + ``labels/``), as ``lwmm-hub eval`` pairs them."""
    image_dir = Path(split_dir) / "images"
    if not image_dir.is_dir():
        raise LwmmError(f"{image_dir}: no such folder (expected <split>/images/)")
    images, labels = paired_files(Path(split_dir), labelled=with_labels, name=f"split {split_dir}")
    if not images:
        raise LwmmError(f"{image_dir}: no images")
    return list(zip(images, labels if labels is not None else [None] * len(images)))


def concatenate_frames(frame_sets: Sequence[FrameSet]) -> FrameSet:
    """Several splits as one (e.g. CamVid day/train and day/val); all labelled or all unlabelled."""
    labelled = [frames.labels is not None for frames in frame_sets]
    if not frame_sets or len(set(labelled)) != 1:
        raise LwmmError("concatenate_frames: needs one or more splits, all labelled or all unlabelled")
    labels = torch.cat([frames.labels for frames in frame_sets if frames.labels is not None]) if labelled[0] else None
    return FrameSet(torch.cat([frames.images for frames in frame_sets]), labels,
                    tuple(name for frames in frame_sets for name in frames.names))


def load_frames(split_dir: Path, *, size: tuple[int, int], with_labels: bool) -> FrameSet:
    """Decode a split once, resized to ``size`` = (height, width): bilinear images, nearest labels."""
    height, width = size
    images, labels, names = [], [], []
    for image_path, label_path in split_files(split_dir, with_labels=with_labels):
        image = Image.open(image_path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        if label_path is not None:
            label = Image.open(label_path).resize((width, height), Image.Resampling.NEAREST)
            labels.append(torch.from_numpy(np.array(label, dtype=np.uint8)))
        names.append(image_path.name)
    return FrameSet(torch.stack(images), torch.stack(labels) if with_labels else None, tuple(names))


@dataclass(frozen=True)
class Augmentation:
    """Random rescale, crop and flip, plus optional photometric jitter (brightness, contrast, gamma)."""

    crop: tuple[int, int] = (160, 160)
    scale_range: tuple[float, float] = (0.9, 1.5)
    flip: bool = True
    photometric: float = 0.0  # strength s: 0 = off; brightness/contrast ×[1-s, 1+s], gamma in 2^[-s, s]


@dataclass(frozen=True)
class Normalisation:
    """The image processor's rescale + normalise, applied to uint8 tensors so training matches inference."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def _uniform(generator: torch.Generator, low: float, high: float, count: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _rescale_crop(image: torch.Tensor, label: torch.Tensor | None, augmentation: Augmentation,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frame rescaled, padded (label ``IGNORE``) to at least the crop, cropped and maybe flipped."""
    crop_h, crop_w = augmentation.crop
    scale = float(_uniform(generator, *augmentation.scale_range))
    height, width = max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale))
    image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0]
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        if label is not None:
            label = F.pad(label, (0, pad_w, 0, pad_h), value=float(IGNORE))
    top = int(torch.randint(0, image.shape[-2] - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, image.shape[-1] - crop_w + 1, (1,), generator=generator))
    image = image[:, top:top + crop_h, left:left + crop_w]
    label = label[top:top + crop_h, left:left + crop_w] if label is not None else None
    if augmentation.flip and bool(torch.rand(1, generator=generator) < 0.5):
        image = image.flip(-1)
        label = label.flip(-1) if label is not None else None
    return image, label


def _photometric(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Gamma, contrast and brightness jitter on a [0, 1] image; darkening gamma mimics dusk frames."""
    gamma = float(torch.exp(_uniform(generator, -strength, strength) * np.log(2.0)))
    contrast, brightness = (float(v) for v in _uniform(generator, 1 - strength, 1 + strength, 2))
    image = image.clamp(0, 1) ** gamma
    mean = image.mean()
    return (((image - mean) * contrast + mean) * brightness).clamp(0, 1)


@dataclass(frozen=True)
class Batch:
    """Normalised pixels B×3×h×w and model-class labels B×h×w (``IGNORE`` where void or padded)."""

    pixel_values: torch.Tensor
    labels: torch.Tensor | None


def sample_batch(frames: FrameSet, *, batch_size: int, augmentation: Augmentation, normalisation: Normalisation,
                 label_set: LabelSet | None, generator: torch.Generator) -> Batch:
    """A random batch (with replacement) drawn and augmented using only ``generator``."""
    indices = torch.randint(0, len(frames), (batch_size,), generator=generator).tolist()
    lookup = torch.from_numpy(label_set.lookup.astype(np.int64)) if label_set is not None else None
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for index in indices:
        image = frames.images[index].float() / 255.0
        label = lookup[frames.labels[index].long()] if (frames.labels is not None and lookup is not None) else None
        image, label = _rescale_crop(image, label, augmentation, generator)
        if augmentation.photometric > 0:
            image = _photometric(image, augmentation.photometric, generator)
        images.append(image)
        if label is not None:
            labels.append(label)
    stacked_labels = torch.stack(labels).long() if lookup is not None and frames.labels is not None else None
    return Batch(pixel_values=normalisation(torch.stack(images)), labels=stacked_labels)
