"""``scripts/push_zoo.py`` against the test Hub: one repo per zoo model with its card, one collection."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForSemanticSegmentation, SegformerForSemanticSegmentation

from helpers import make_tiny_segformer
from hf_lwmm.zoo.export import ModelCardInfo, Scores, model_card
from hub_server import hub  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "push_zoo.py"


def tiny_zoo(root: Path) -> Path:
    """A base and a fine-tune with the zoo's cards (recipe, scores) and zoo.json."""
    entries = []
    for seed, (name, role, dusk) in enumerate((("base", "base", 0.10), ("minent", "strategy", 0.25))):
        folder = make_tiny_segformer(root / name, seed=seed)
        model = SegformerForSemanticSegmentation.from_pretrained(folder)
        info = ModelCardInfo(name=name, summary=f"{name} model.", role=role, recipe={"strategy": "entropy", "steps": 3},
                             scores=Scores(day_test=0.5, dusk_val=dusk), parameters=1, train_seconds=1.0,
                             base=None if role == "base" else "base", zoo_metadata={"role": role, "strategy": "x"},
                             uses_dusk_images=role != "base")
        model_card(info, model).save(folder / "README.md")
        entries.append({"name": name, "role": role})
    (root / "zoo.json").write_text(json.dumps({"models": entries}))
    return root


def test_push_zoo_creates_a_repo_per_model_with_its_card_and_one_collection(hub, tmp_path, monkeypatch, capsys):
    zoo = tiny_zoo(tmp_path / "zoo")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    spec = importlib.util.spec_from_file_location("push_zoo", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--zoo", str(zoo), "--namespace", hub.user]) == 0
    printed = capsys.readouterr().out
    assert f"{hub.user}/camvid-daydusk-base" in printed and f"{hub.user}/camvid-daydusk-minent" in printed

    api = HfApi(token=hub.token)
    for name in ("base", "minent"):
        repo = f"{hub.user}/camvid-daydusk-{name}"
        files = sorted(api.list_repo_files(repo))
        assert files == [".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
        card = ModelCard.load(repo)
        results = {result.dataset_split: result.metric_value for result in card.data.eval_results}
        assert results == {"day/test": 0.5, "dusk/val": {"base": 0.1, "minent": 0.25}[name]}
        assert "strategy: entropy" in card.text
        assert card.data.base_model == (None if name == "base" else f"{hub.user}/camvid-daydusk-base")
        model = AutoModelForSemanticSegmentation.from_pretrained(repo)
        assert model.config.num_labels == 5
    (collection,) = api.list_collections(owner=hub.user)
    items = api.get_collection(collection.slug).items
    assert collection.title == "CamVid day-to-dusk UDA zoo"
    assert [item.item_id for item in items] == [f"{hub.user}/camvid-daydusk-base", f"{hub.user}/camvid-daydusk-minent"]
    assert items[1].note == "minent: strategy"

    assert script.main(["--zoo", str(zoo), "--namespace", hub.user]) == 0  # pushed again: same repos, same collection
    assert len(api.get_collection(collection.slug).items) == 2


def test_push_zoo_refuses_an_unfinished_zoo(hub, tmp_path, monkeypatch, capsys):
    zoo = tiny_zoo(tmp_path / "zoo")
    (zoo / "minent" / "README.md").unlink()
    monkeypatch.setenv("HF_TOKEN", hub.token)
    spec = importlib.util.spec_from_file_location("push_zoo", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    capsys.readouterr()  # what building the tiny zoo printed
    assert script.main(["--zoo", str(zoo), "--namespace", hub.user]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "minent" in error[0] and "incomplete" in error[0]
    api = HfApi(token=hub.token)
    assert not any(api.repo_exists(f"{hub.user}/camvid-daydusk-{name}") for name in ("base", "minent"))  # nothing pushed
