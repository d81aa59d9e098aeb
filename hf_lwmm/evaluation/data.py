"""Segmentation data in the three forms users have: a Hub dataset, a folder ``datasets`` loads, or
a plain folder of ``images/`` + ``labels/`` pairs (the common layout of segmentation benchmarks).

Every form becomes a :class:`SegmentationData`: a map-style dataset of :class:`Sample` (RGB image,
integer label mask or ``None``) plus what is known about its classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hf_lwmm.errors import LwmmError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: files read for class names: ``{"id2label": {...}, "ignore_index": N}`` or a bare ``{"0": "sky", …}``
CLASS_FILES = ("classes.json", "id2label.json")
IMAGE_COLUMNS = ("image", "pixel_values", "img")
LABEL_COLUMNS = ("label", "annotation", "semantic_map", "segmentation", "mask", "labels", "gt")
#: what most segmentation datasets mark void with, when nothing says otherwise
DEFAULT_IGNORE_INDEX = 255
_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


@dataclass(frozen=True)
class DataSource:
    """Where the data came from, as a model card's eval results record it."""

    id: str
    revision: str | None = None
    split: str | None = None
    #: a folder on this machine (``id`` is its path), not a Hub dataset
    local: bool = False

    @property
    def name(self) -> str:
        """How cards and tables name the data: a Hub id as is, a local folder by its name (never its path)."""
        return Path(self.id).expanduser().resolve().name if self.local else self.id


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    label: np.ndarray | None
    name: str


@dataclass
class SegmentationData:
    """Samples plus the dataset's classes (``None`` when the data does not say: ids are the model's)."""

    samples: torch.utils.data.Dataset
    source: DataSource
    class_names: list[str] | None
    #: label value of void pixels (:data:`DEFAULT_IGNORE_INDEX` unless the data says otherwise)
    ignore_index: int = DEFAULT_IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]  # a map-style Dataset with __len__


class PairedFolder(torch.utils.data.Dataset):
    """``images/NAME.*`` with ``labels/NAME.*`` (labels optional: unlabelled images for Fisher)."""

    def __init__(self, images: list[Path], labels: list[Path] | None) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image_path = self.images[index]
        label = read_label(open_image(self.labels[index]), where=str(self.labels[index])) if self.labels else None
        return checked_sample(open_image(image_path), label, name=str(image_path))


def open_image(path: Path) -> Image.Image:
    """The decoded image at ``path``; a corrupt or truncated file is an error naming it."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable, truncated or malformed files
        raise LwmmError(f"{path}: not a readable image ({_first_line(err)})") from None
    return image


class TableSamples(torch.utils.data.Dataset):
    """Rows of a ``datasets.Dataset``: an image column and (optionally) a label column."""

    def __init__(self, table: Any, image_column: str, label_column: str | None, *, source: str) -> None:
        self.table, self.image_column, self.label_column, self.source = table, image_column, label_column, source

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Sample:
        row = self.table[index]
        name = f"{self.source} row {index}"
        label = read_label(row[self.label_column], where=name) if self.label_column else None
        return checked_sample(row[self.image_column], label, name=name)


class Subset(torch.utils.data.Dataset):
    """The first ``count`` samples (``--max-samples``)."""

    def __init__(self, samples: torch.utils.data.Dataset, count: int) -> None:
        self.samples, self.count = samples, min(count, len(samples))  # type: ignore[arg-type]  # map-style, sized

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def read_label(value: Any, *, where: str) -> np.ndarray:
    """A 2-D integer mask from a label image (L, P, I, I;16 modes) or an array."""
    if isinstance(value, Image.Image):
        if value.mode not in ("L", "P", "I", "I;16", "1"):
            raise LwmmError(f"{where}: label image is {value.mode}; expected single-channel class ids (mode L, P or I)")
        value = np.array(value)
    label = np.asarray(value)
    if label.ndim != 2 or label.dtype.kind not in "iub":
        raise LwmmError(f"{where}: label is a {label.ndim}-D {label.dtype} array; expected a 2-D integer mask")
    return label


def checked_sample(image: Any, label: np.ndarray | None, *, name: str) -> Sample:
    if not isinstance(image, Image.Image):
        try:
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        except (TypeError, ValueError):
            raise LwmmError(f"{name}: image is not an image or an H×W×3 array") from None
    if label is not None and label.shape != (image.height, image.width):
        raise LwmmError(f"{name}: image is {image.width}×{image.height} but its label is {label.shape[1]}×{label.shape[0]}")
    return Sample(image.convert("RGB"), label, name)


def load_segmentation_data(spec: str, *, split: str | None = None, image_column: str | None = None,
                           label_column: str | None = None, labelled: bool = True, max_samples: int | None = None) -> SegmentationData:
    """Open ``spec``: a plain ``images/`` + ``labels/`` folder, a local ``datasets`` folder, or a Hub dataset id."""
    if max_samples is not None and max_samples < 1:
        raise LwmmError(f"max_samples {max_samples}: must be at least 1")
    path = Path(spec).expanduser()
    if path.is_dir() and _paired_root(path, split) is not None:
        data = _load_paired_folder(path, split=split, labelled=labelled)
    elif path.is_dir() or not path.exists():
        data = _load_table(spec, split=split, image_column=image_column, label_column=label_column, labelled=labelled)
    else:
        raise LwmmError(f"dataset {spec}: a file; expected a dataset folder or a Hub dataset id")
    if max_samples is not None:
        data.samples = Subset(data.samples, max_samples)
    if not len(data):
        raise LwmmError(f"dataset {spec}: no samples")
    return data


def _paired_root(path: Path, split: str | None) -> Path | None:
    """The folder holding ``images/``: ``path`` or ``path/split``; ``None`` for ``datasets`` folders."""
    if any((path / name).is_file() for name in _METADATA_FILES):
        return None
    for root in ([path / split] if split else []) + [path]:
        if (root / "images").is_dir():
            return root
    return None


def paired_files(root: Path, *, labelled: bool, name: str) -> tuple[list[Path], list[Path] | None]:
    """Images of ``root/images`` (sorted) and, when ``labelled``, the label of the same stem in ``root/labels``."""
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not labelled:
        return images, None
    if not (root / "labels").is_dir():
        raise LwmmError(f"{name}: no labels/ folder beside {root / 'images'}")
    by_stem = {p.stem: p for p in (root / "labels").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [image.name for image in images if image.stem not in by_stem]
    if missing:
        raise LwmmError(f"{name}: no label for {missing[0]} in {root / 'labels'} ({len(missing)} images lack one)")
    return images, [by_stem[image.stem] for image in images]


def _load_paired_folder(path: Path, *, split: str | None, labelled: bool) -> SegmentationData:
    root = _paired_root(path, split)
    assert root is not None
    if split and root == path and not (path / split).is_dir():
        raise LwmmError(f"--split {split}: no folder {path / split} (the images are directly in {path})")
    images, labels = paired_files(root, labelled=labelled, name=f"dataset {path}")
    class_names, ignore_index = _class_file(root)
    source = DataSource(id=str(path), split=split, local=True)
    return SegmentationData(PairedFolder(images, labels), source, class_names, _or_default(ignore_index))


def _class_file(folder: Path) -> tuple[list[str] | None, int | None]:
    """Class names and void id from the nearest class file in ``folder`` or its parents.

    Benchmarks keep one class file above their domain/split folders (``camvid/classes.json`` for
    ``camvid/dusk/val``), hence the climb.
    """
    for directory in [folder, *folder.parents]:
        for name in CLASS_FILES:
            if (directory / name).is_file():
                return parse_class_file(directory / name)
    return None, None


def parse_class_file(path: Path) -> tuple[list[str], int | None]:
    try:
        document = json.loads(path.read_text())
        id2label = document.get("id2label", document)
        names = {int(key): str(value) for key, value in id2label.items() if str(key).lstrip("-").isdigit()}
    except (OSError, ValueError, AttributeError):
        raise LwmmError(f"{path}: not a JSON object of class id → name") from None
    if sorted(names) != list(range(len(names))) or not names:
        raise LwmmError(f"{path}: class ids must be 0…N-1, got {sorted(names)[:5]}…")
    ignore = document.get("ignore_index")
    return [names[i] for i in range(len(names))], int(ignore) if ignore is not None else None


def _load_table(spec: str, *, split: str | None, image_column: str | None, label_column: str | None,
                labelled: bool) -> SegmentationData:
    table, source = _open_table(spec, split)
    columns = list(table.column_names)
    image_column = _pick_column(columns, image_column, IMAGE_COLUMNS, role="image", spec=spec)
    label_column = _pick_column(columns, label_column, LABEL_COLUMNS, role="label", spec=spec) if labelled else None
    class_names, ignore_index = _class_file(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else (None, None)
    return SegmentationData(TableSamples(table, image_column, label_column, source=spec), source, class_names, _or_default(ignore_index))


def _or_default(ignore_index: int | None) -> int:
    return DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index


def _open_table(spec: str, split: str | None) -> tuple[Any, DataSource]:
    import datasets

    local = Path(spec).expanduser().is_dir()
    name, _, revision = (spec, "", "") if local else spec.partition("@")
    try:
        splits = datasets.load_dataset(str(Path(name).expanduser()) if local else name, revision=revision or None)
    except FileNotFoundError as err:  # includes datasets' DatasetNotFoundError
        raise LwmmError(f"dataset {spec}: not found ({_first_line(err)})") from None
    except (ConnectionError, OSError, ValueError) as err:
        raise LwmmError(f"dataset {spec}: cannot be loaded ({_first_line(err)})") from None
    chosen = _choose_split(spec, list(splits), split)
    return splits[chosen], DataSource(id=spec if local else name, revision=revision or None, split=chosen, local=local)


def _choose_split(spec: str, available: list[str], split: str | None) -> str:
    if split is not None:
        if split not in available:
            raise LwmmError(f"--split {split}: dataset {spec} has splits {', '.join(available)}")
        return split
    if len(available) == 1:
        return available[0]
    for preferred in ("validation", "val", "test"):
        if preferred in available:
            return preferred
    raise LwmmError(f"dataset {spec}: several splits ({', '.join(available)}); choose one with --split")


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], *, role: str, spec: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise LwmmError(f"--{role}-column {wanted}: not a column of {spec} (columns: {', '.join(columns)})")
        return wanted
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise LwmmError(f"dataset {spec}: no {role} column among {', '.join(columns)} (name it with --{role}-column)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__
