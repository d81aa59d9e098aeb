"""Evaluate models, merged models and output ensembles on one dataset, in one pass over the data.

Each batch is read, preprocessed and labelled once; every model runs once on it; each row
("predictor": one model, or the ensemble of several) folds its predictions into its own streaming
:class:`~hf_lwmm.evaluation.metric.MeanIoU`. Runs under ``accelerate``: ``accelerate launch`` on
several GPUs shards the data and ``gather_for_metrics`` gives the same numbers as one process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hf_lwmm.console import progress_bar
from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.data import DataSource, Sample, SegmentationData
from hf_lwmm.evaluation.labels import NO_CLASS, model_to_dataset_classes, unused_label_map_keys
from hf_lwmm.evaluation.metric import MeanIoU
from hf_lwmm.system import usable_cores

#: label value of void pixels, pixels of classes a row does not evaluate, and batch padding
VOID = -1
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class Predictor:
    """One row of results: a model alone, or the output ensemble (mean softmax) of several."""

    name: str
    members: tuple[int, ...]

    @property
    def relative_cost(self) -> int:
        """Forward passes per image, relative to one model (a merged model costs 1)."""
        return len(self.members)


@dataclass
class RowResult:
    name: str
    relative_cost: int
    mean_iou: float
    mean_accuracy: float
    overall_accuracy: float
    #: per dataset class; ``None`` where the class was not evaluated (absent, or unknown to the model)
    per_class_iou: dict[str, float | None]
    #: one ``C × (C + 1)`` confusion matrix per image, in data order (only when asked for: ``per_image=True``);
    #: what :mod:`hf_lwmm.evaluation.bootstrap` resamples
    image_confusions: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The scores as JSON-able values (without the per-image counts)."""
        return {key: value for key, value in asdict(self).items() if key != "image_confusions"}


@dataclass
class EvaluationReport:
    source: DataSource
    class_names: list[str]
    samples: int
    rows: list[RowResult] = field(default_factory=list)

    def row(self, name: str) -> RowResult:
        return next(row for row in self.rows if row.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {**{key: value for key, value in asdict(self).items() if key != "rows"}, "rows": [row.to_dict() for row in self.rows]}


@dataclass
class LoadedModel:
    """A model ready to run, with where its classes land among the dataset's (+1 slot: "no class")."""

    label: str
    model: torch.nn.Module
    class_names: list[str]
    processor_index: int
    to_dataset: torch.Tensor
    #: model class i is dataset class i for every i (predictions need no mapping)
    same_classes: bool = field(init=False)

    def __post_init__(self) -> None:
        self.same_classes = torch.equal(self.to_dataset.cpu(), torch.arange(len(self.to_dataset)))


@dataclass
class Collator:
    """Preprocesses a batch once per distinct image processor and checks and pads its labels."""

    processors: list[Any]
    num_classes: int
    ignore_index: int

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        images = [sample.image for sample in samples]
        labels = [dataset_label(sample, num_classes=self.num_classes, ignore_index=self.ignore_index) for sample in samples]
        height, width = max(label.shape[0] for label in labels), max(label.shape[1] for label in labels)
        padded = torch.full((len(labels), height, width), VOID, dtype=torch.int16)
        for index, label in enumerate(labels):
            padded[index, : label.shape[0], : label.shape[1]] = torch.from_numpy(label)
        return {
            "pixel_values": [processor(images=images, return_tensors="pt")["pixel_values"] for processor in self.processors],
            "labels": padded,
            "sizes": torch.tensor([label.shape for label in labels]),
        }


def dataset_label(sample: Sample, *, num_classes: int, ignore_index: int) -> np.ndarray:
    """The label as int16 class ids with :data:`VOID` for ignored pixels; other values are an error.

    One-byte labels (PNG masks, the common case) go through a 256-entry lookup table: one pass.
    """
    if sample.label is None:
        raise LwmmError(f"{sample.name}: no label")
    if sample.label.dtype.itemsize == 1 and sample.label.dtype.kind in "ub":
        table = np.full(256, _BAD_LABEL, dtype=np.int16)
        table[: min(num_classes, 256)] = np.arange(min(num_classes, 256))
        if 0 <= ignore_index < 256:
            table[ignore_index] = VOID
        label = table[sample.label]
        bad = label == _BAD_LABEL
    else:
        label = sample.label.astype(np.int64)
        void = label == ignore_index
        bad = ~void & ((label < 0) | (label >= num_classes))
        label[void] = VOID
    if bad.any():
        value = int(sample.label[bad][0])
        raise LwmmError(f"{sample.name}: label value {value} is neither a class id 0–{num_classes - 1} nor the ignore index {ignore_index}")
    return label.astype(np.int16, copy=False)


#: marks byte values that are neither a class nor the ignore index (never a valid class id: classes ≥ 0)
_BAD_LABEL = -2


def load_models(folders: Sequence[tuple[str, Path]], *, class_names: Sequence[str] | None,
                label_map: Mapping[str, str | None]) -> tuple[list[LoadedModel], list[Any], list[str]]:
    """Load ``(label, folder)`` models and their image processors (shared when identical).

    Returns the models, the distinct processors and the dataset class names (the first model's when
    the data names none).
    """
    from hf_lwmm.loading import load_segmentation_model

    loaded, processors, processor_keys = [], [], []
    for label, folder in folders:
        model, processor = load_segmentation_model(folder, label=label)
        key = processor.to_json_string()
        if key not in processor_keys:
            processor_keys.append(key)
            processors.append(processor)
        id2label = {int(key): str(name) for key, name in (model.config.id2label or {}).items()}
        model_names = [id2label[i] for i in range(len(id2label))]
        if class_names is None:
            class_names = model_names  # the data names no classes: its ids are the first model's
        mapping = model_to_dataset_classes(model_names, class_names, label_map=label_map, model=label)
        mapping[mapping == NO_CLASS] = len(class_names)
        loaded.append(LoadedModel(label, model, model_names, processor_keys.index(key), torch.from_numpy(mapping)))
    unused = unused_label_map_keys(label_map, [entry.class_names for entry in loaded])
    if unused:
        raise LwmmError(f"--label-map: {unused[0]!r} is not a class of any model")
    assert class_names is not None
    return loaded, processors, list(class_names)


def evaluate_predictors(models: Sequence[tuple[str, Path]], predictors: Sequence[Predictor], data: SegmentationData, *,
                        label_map: Mapping[str, str | None] | None = None, batch_size: int = 4, mixed_precision: str = "no",
                        num_workers: int | None = None, progress: bool = True, per_image: bool = False) -> EvaluationReport:
    """mean IoU of every predictor on ``data`` (one pass; each model runs once per batch).

    ``per_image``: also keep each image's confusion counts (``RowResult.image_confusions``), for
    bootstrap intervals over images.

    ``num_workers``: processes that read and preprocess images while the models run; by default none
    on a CPU (they would compete with the forward passes for the same cores), else up to 4.
    """
    from accelerate import Accelerator

    if mixed_precision not in MIXED_PRECISION:
        raise LwmmError(f"--mixed-precision {mixed_precision!r}: choose from {', '.join(MIXED_PRECISION)}")
    if batch_size < 1:
        raise LwmmError(f"--batch-size {batch_size}: must be at least 1")
    if num_workers is not None and num_workers < 0:
        raise LwmmError(f"--num-workers {num_workers}: must be 0 (read images in the main process) or more")
    loaded, processors, class_names = load_models(models, class_names=data.class_names, label_map=label_map or {})
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision)
    except ValueError as err:
        raise LwmmError(f"--mixed-precision {mixed_precision}: {str(err).splitlines()[0]}") from None
    if num_workers is None:
        num_workers = 0 if accelerator.device.type == "cpu" else min(4, max(0, usable_cores() - 1))
    collate = Collator(processors, len(class_names), data.ignore_index)
    loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(data.samples, batch_size=batch_size, collate_fn=collate,
                                                                         num_workers=num_workers))
    for entry in loaded:
        entry.model = accelerator.prepare_model(entry.model, evaluation_mode=True)
        entry.to_dataset = entry.to_dataset.to(accelerator.device)
    covered = [_covered_mask(loaded, predictor, len(class_names), accelerator.device) for predictor in predictors]
    metrics = [MeanIoU() for _ in predictors]
    image_confusions: list[list[np.ndarray]] = [[] for _ in predictors]
    with torch.inference_mode(), _one_line_from_workers():
        for batch in progress_bar(loader, desc="evaluating", unit="batch", enabled=progress and accelerator.is_local_main_process):
            for index, predicted in _predictions(loaded, predictors, batch, len(class_names)):
                reference = batch["labels"]
                if covered[index] is not None:
                    reference = torch.where(covered[index][reference.long().clamp(min=0)], reference, VOID)
                predicted, reference = _gathered(accelerator, predicted.to(torch.int16), reference)
                metrics[index].add_batch(predictions=predicted, references=reference)
                if per_image:
                    image_confusions[index].append(per_image_confusions(predicted, reference, len(class_names)))
    report = EvaluationReport(data.source, class_names, len(data))
    for predictor, metric, confusions in zip(predictors, metrics, image_confusions):
        row = _row(predictor, metric.compute(num_labels=len(class_names), ignore_index=VOID), class_names)
        row.image_confusions = np.concatenate(confusions) if per_image else None
        report.rows.append(row)
    return report


def per_image_confusions(predicted: torch.Tensor, reference: torch.Tensor, num_classes: int) -> np.ndarray:
    """``B × C × (C + 1)`` counts of (reference class, predicted class) per image, void references left
    out; predictions outside the classes (an ensemble's "no class" slot) count in the last column."""
    predicted = predicted.long().clamp(0, num_classes)
    reference = reference.long()
    valid = reference >= 0
    pairs = reference.clamp(min=0) * (num_classes + 1) + predicted
    counts = [torch.bincount(pair[mask], minlength=num_classes * (num_classes + 1)) for pair, mask in zip(pairs, valid)]
    return torch.stack(counts).reshape(-1, num_classes, num_classes + 1).cpu().numpy()


@contextmanager
def _one_line_from_workers() -> Iterator[None]:
    """A bad sample found by a reading worker process stays one line (the loader re-raises it with the
    worker's whole traceback as its message)."""
    try:
        yield
    except LwmmError as err:
        lines = str(err).strip().splitlines()
        if len(lines) > 1:
            raise LwmmError(lines[-1].split(": ", 1)[-1]) from None
        raise


def _covered_mask(models: list[LoadedModel], predictor: Predictor, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Dataset classes a predictor can predict (the others' pixels are left out, like void); ``None``: all."""
    mask = torch.zeros(num_classes + 1, dtype=torch.bool)
    for member in predictor.members:
        mask[models[member].to_dataset.cpu()] = True
    return None if mask[:num_classes].all() else mask[:num_classes].to(device)


def _predictions(models: list[LoadedModel], predictors: Sequence[Predictor], batch: dict[str, Any], num_classes: int):
    """Yield ``(predictor index, predicted dataset classes)``; each model runs once per batch.

    A single model predicts its argmax class (mapped to the dataset's); an ensemble the argmax of its
    members' summed softmax in dataset classes (+ a last slot pooling classes the dataset lacks).
    """
    pending: dict[int, torch.Tensor] = {}
    for model_index, entry in enumerate(models):
        logits = resized_logits(entry, batch)
        for index, predictor in enumerate(predictors):
            if model_index not in predictor.members:
                continue
            if len(predictor.members) == 1:
                classes = logits.argmax(dim=1)
                yield index, classes if entry.same_classes else entry.to_dataset[classes]
                continue
            probabilities = torch.zeros((logits.shape[0], *logits.shape[2:], num_classes + 1), device=logits.device).permute(0, 3, 1, 2)
            probabilities.index_add_(1, entry.to_dataset, logits.softmax(dim=1))
            pending[index] = probabilities if index not in pending else pending[index] + probabilities
            if model_index == max(predictor.members):  # members may be listed in any order
                yield index, pending.pop(index).argmax(dim=1)  # argmax of the sum = argmax of the mean


def resized_logits(entry: LoadedModel, batch: dict[str, Any]) -> torch.Tensor:
    """The model's logits for the batch, resized to each label's size (see :func:`resize_to_labels`)."""
    return resize_to_labels(entry.model(pixel_values=batch["pixel_values"][entry.processor_index]).logits, batch)


def resize_to_labels(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Logits resized (bilinear, float32) to each label's size, in a batch padded like the labels.

    Channels-last, so that the argmax and softmax over classes read contiguous memory (3× faster
    than over channel planes, which costs as much as the forward pass of a small model on a CPU).
    """
    logits = logits.float().contiguous(memory_format=torch.channels_last)
    sizes = batch["sizes"].tolist()
    if all(size == sizes[0] for size in sizes):
        return F.interpolate(logits, size=tuple(batch["labels"].shape[-2:]), mode="bilinear", align_corners=False)
    resized = torch.zeros((len(sizes), *batch["labels"].shape[-2:], logits.shape[1]), device=logits.device).permute(0, 3, 1, 2)
    for index, (height, width) in enumerate(sizes):
        resized[index, :, :height, :width] = F.interpolate(logits[index : index + 1], size=(height, width), mode="bilinear",
                                                           align_corners=False)[0]
    return resized


def _gathered(accelerator: Any, predicted: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks from every process (padded to a common size with void), without the last batch's repeats.

    Across processes the masks travel as int32: neither gloo (CPU) nor NCCL can gather int16.
    """
    if accelerator.num_processes == 1:
        return predicted, reference
    predicted, reference = predicted.to(torch.int32), reference.to(torch.int32)
    for dim in (1, 2):
        predicted = accelerator.pad_across_processes(predicted, dim=dim, pad_index=0)
        reference = accelerator.pad_across_processes(reference, dim=dim, pad_index=VOID)
    predicted, reference = accelerator.gather_for_metrics((predicted, reference))
    return predicted.to(torch.int16), reference.to(torch.int16)


def _row(predictor: Predictor, result: dict[str, Any], class_names: list[str]) -> RowResult:
    per_class = {name: None if math.isnan(value) else float(value) for name, value in zip(class_names, result["per_category_iou"])}
    return RowResult(predictor.name, predictor.relative_cost, float(result["mean_iou"]), float(result["mean_accuracy"]),
                     float(result["overall_accuracy"]), per_class)
