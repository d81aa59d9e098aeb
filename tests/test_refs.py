"""Model references: parsing, and resolution from the Hugging Face cache without any network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants

from hf_lwmm.recipe import RunOptions, load_recipe
from hf_lwmm import MergeRecipe, merge
from hf_lwmm.errors import LwmmError
from hf_lwmm.io import sha256_of
from hf_lwmm.refs import ModelRef, resolve

from helpers import make_tiny_segformer

QUIET = RunOptions(progress=False)

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("text", "repo_id", "revision", "subfolder"),
    [
        ("org/name", "org/name", None, None),
        ("org/name@v2", "org/name", "v2", None),
        ("org/name@refs/pr/1:checkpoint-4000", "org/name", "refs/pr/1", "checkpoint-4000"),
        ("org/name:runs/ckpt", "org/name", None, "runs/ckpt"),
    ],
)
def test_parse_hub_references(text, repo_id, revision, subfolder):
    ref = ModelRef.parse(text)
    assert (ref.repo_id, ref.revision, ref.subfolder, ref.path) == (repo_id, revision, subfolder, None)
    assert str(ref) == text
    assert str(ref.pinned(SHA)) == f"{repo_id}@{SHA}" + (f":{subfolder}" if subfolder else "")


def test_parse_local_and_invalid(tmp_path):
    assert ModelRef.parse(str(tmp_path)).path == tmp_path
    assert ModelRef.parse("./x") == ModelRef(path=Path("x"))
    with pytest.raises(LwmmError, match="not an existing folder nor a Hub repo id"):
        ModelRef.parse("not a repo")


def _cache_entry(cache: Path, repo_id: str, model: Path, *, ref: str = "main", subfolder: str | None = None) -> None:
    """Lay a model out the way huggingface_hub's cache stores a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(model, snapshot / subfolder if subfolder else snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(SHA)


def test_resolve_from_the_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    _cache_entry(cache, "org/uda-mic", make_tiny_segformer(tmp_path / "a", seed=0))
    _cache_entry(cache, "org/uda-hrda", make_tiny_segformer(tmp_path / "b", seed=1), ref="v2", subfolder="checkpoint-4000")
    mic = resolve("org/uda-mic", local_files_only=True)
    hrda = resolve("org/uda-hrda@v2:checkpoint-4000", local_files_only=True)
    assert mic.commit == SHA and hrda.commit == SHA and hrda.folder.name == "checkpoint-4000"
    assert mic.num_labels == 5 and mic.model_type == "segformer"
    with pytest.raises(LwmmError, match="org/missing: not in the local Hugging Face cache"):
        resolve("org/missing", local_files_only=True)


def test_merge_records_resolved_commits(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _cache_entry(cache, "org/uda-mic", make_tiny_segformer(tmp_path / "a", seed=0))
    local = make_tiny_segformer(tmp_path / "b", seed=1)
    result = merge(MergeRecipe(models=["org/uda-mic", str(local)]), tmp_path / "out", QUIET)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert result.models[0].commit == SHA and f"`{SHA}`" in card.text
    assert card.data.base_model == ["org/uda-mic"] and card.data.base_model_relation == "merge"
    weights = {"model.safetensors": sha256_of(tmp_path / "a" / "model.safetensors")}
    assert card.data.lwmm_sources[0] == {"ref": "org/uda-mic", "commit": SHA, "role": "anchor", "num_labels": 5, "model_type": "segformer",
                                         "weights_sha256": weights}
    assert "lwmm-hub merge --recipe lwmm_recipe.yaml" in card.text  # replaying the recipe pins the Hub source
    assert load_recipe(tmp_path / "out" / "lwmm_recipe.yaml").models == [f"org/uda-mic@{SHA}", str(local)]
