"""Which dataset class each model class predicts: by ``id2label`` name, or by a mapping file.

A model trained on other classes (16 Synthia classes on 19-class Cityscapes, Cityscapes on CamVid)
is evaluated over the classes both share: its predictions land on the matching dataset class, and
dataset pixels of classes no evaluated model knows are left out like void pixels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hf_lwmm.errors import LwmmError

#: a model class with no dataset counterpart; its pixels count as wrong predictions
NO_CLASS = -1


def normalized(name: str) -> str:
    """Class names compare case-, space-, ``-``- and ``_``-insensitively (``traffic_sign`` = ``Traffic sign``)."""
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def load_label_map(path: Path) -> dict[str, str | None]:
    """``--label-map FILE``: a JSON object ``{model class: dataset class or null}``, names or ids."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LwmmError(f"--label-map {path}: unreadable ({err.__class__.__name__})") from None
    if not isinstance(document, dict) or not all(value is None or isinstance(value, (str, int)) for value in document.values()):
        raise LwmmError(f"--label-map {path}: expected a JSON object of model class → dataset class (or null)")
    return {str(key): None if value is None else str(value) for key, value in document.items()}


def _find(name_or_id: str, names: Sequence[str]) -> int | None:
    """Index of a class given by name, or by id when it is a number."""
    wanted = normalized(name_or_id)
    for index, name in enumerate(names):
        if normalized(name) == wanted:
            return index
    if name_or_id.strip().isdigit() and int(name_or_id) < len(names):
        return int(name_or_id)
    return None


def model_to_dataset_classes(model_names: Sequence[str], dataset_names: Sequence[str], *, label_map: Mapping[str, str | None],
                             model: str) -> np.ndarray:
    """For each model class, the dataset class it predicts (or :data:`NO_CLASS`)."""
    found = [_find(name, dataset_names) for name in model_names]
    mapping = np.array([NO_CLASS if index is None else index for index in found], dtype=np.int64)
    for key, target in label_map.items():
        source = _find(key, model_names)
        if source is None:
            continue
        if target is None:
            mapping[source] = NO_CLASS
            continue
        target_index = _find(target, dataset_names)
        if target_index is None:
            raise LwmmError(f"--label-map: {target!r} is not a dataset class ({', '.join(dataset_names)})")
        mapping[source] = target_index
    if (mapping == NO_CLASS).all():
        raise LwmmError(f"model {model}: none of its classes ({', '.join(model_names[:6])}…) is a dataset class "
                        f"({', '.join(dataset_names[:6])}…); give a --label-map file")
    return mapping


def unused_label_map_keys(label_map: Mapping[str, str | None], models_names: Sequence[Sequence[str]]) -> list[str]:
    """Keys of ``--label-map`` that name no class of any model (typos)."""
    return [key for key in label_map if all(_find(key, names) is None for names in models_names)]
