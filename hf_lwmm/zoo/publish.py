"""Publish a built zoo: every model as a Hub repo with its card, gathered in one collection.

Each folder goes up in one commit as ``<namespace>/<prefix><name>``; the card keeps its training
recipe and its day/test and dusk/val mIoU (``model-index``) and, for fine-tunes, gains
``base_model`` pointing at the pushed base, so the Hub draws the zoo's family tree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from hf_lwmm.errors import LwmmError
from hf_lwmm.hub import add_to_collection, describe_hub_error, require_token
from hf_lwmm.zoo.build import MANIFEST
from hf_lwmm.zoo.export import REQUIRED_FILES, is_complete
from hf_lwmm.zoo.plan import BASE_NAME

DEFAULT_PREFIX = "camvid-daydusk-"
DEFAULT_COLLECTION = "CamVid day-to-dusk UDA zoo"


@dataclass(frozen=True)
class PublishedModel:
    name: str
    repo_id: str
    commit: str


def zoo_names(zoo: Path) -> list[str]:
    """The models ``zoo.json`` lists, in build order; every folder must be complete."""
    try:
        names = [entry["name"] for entry in json.loads((Path(zoo) / MANIFEST).read_text())["models"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LwmmError(f"--zoo {zoo}: no readable {MANIFEST} ({err.__class__.__name__})") from None
    incomplete = [name for name in names if not is_complete(Path(zoo) / name)]
    if incomplete:
        raise LwmmError(f"--zoo {zoo}: model folder {incomplete[0]} is incomplete (finish the build first)")
    return names


def hub_card(folder: Path, *, base_repo: str | None) -> ModelCard:
    """The model's card as pushed: ``base_model`` names the pushed base (fine-tunes only)."""
    card = ModelCard.load(Path(folder) / "README.md")
    if base_repo is not None:
        card.data.base_model = base_repo
        card.data.base_model_relation = "finetune"
    return card


def publish_zoo(zoo: Path, *, namespace: str, prefix: str = DEFAULT_PREFIX, collection: str | None = DEFAULT_COLLECTION,
                private: bool = False, token: str | None = None) -> list[PublishedModel]:
    """Push every zoo model (base first) and file each in ``namespace/collection`` (``None``: no collection)."""
    names = zoo_names(zoo)
    api = HfApi(token=require_token(token))
    base_repo = f"{namespace}/{prefix}{BASE_NAME}" if BASE_NAME in names else None
    published = []
    for name in names:
        folder, repo_id = Path(zoo) / name, f"{namespace}/{prefix}{name}"
        card = hub_card(folder, base_repo=None if name == BASE_NAME else base_repo)
        operations = [CommitOperationAdd(path_in_repo=file, path_or_fileobj=folder / file)
                      for file in REQUIRED_FILES if file != "README.md"]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.create_commit(repo_id, operations, commit_message=f"Add zoo model {name} (hf_lwmm CamVid day→dusk zoo)")
        except Exception as err:  # any transfer failure ends the same way: one line naming the model
            raise LwmmError(f"push of zoo model {name} to {repo_id} failed: {describe_hub_error(err)}") from err
        if collection:
            add_to_collection(api, f"{namespace}/{collection}", repo_id, note=f"{name}: {card.data.to_dict()['lwmm_zoo']['role']}")
        published.append(PublishedModel(name, repo_id, commit.oid))
    return published
