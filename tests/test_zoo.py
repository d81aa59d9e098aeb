"""The zoo's training code on a tiny synthetic CamVid-like dataset: shapes, determinism, folders, cards."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, SegformerForSemanticSegmentation

from hf_lwmm.errors import LwmmError
from hf_lwmm.zoo.build import BuildSettings, build_zoo, zoo_table
from hf_lwmm.zoo.data import (IGNORE, Augmentation, FrameSet, Normalisation, dataset_label_set, fold_classes,
                              load_frames, sample_batch)
from hf_lwmm.zoo.evaluate import EvalSet, mean_iou
from hf_lwmm.zoo.export import read_card
from hf_lwmm.zoo.model import Resolution, model_from_base, zoo_config
from hf_lwmm.zoo.plan import zoo_plan
from hf_lwmm.zoo.train import TrainingData, TrainingRecipe, checkpoint_steps, learning_rate_at, train

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist"]
VOID = 11
FRAME = (48, 64)  # full-resolution height, width of the synthetic frames
RESOLUTION = Resolution(height=36, width=48)
CROP = (32, 32)  # the smallest crop MiT-B0's stage-1 reduction (ratio 8 on a 1/4 map) accepts
NORMALISATION = Normalisation(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def synthetic_label(seed: int) -> np.ndarray:
    """Horizontal bands of classes (sky on top, road at the bottom) with a void stripe."""
    rng = np.random.default_rng(seed)
    bands = np.sort(rng.choice(len(CLASSES), size=4, replace=False))
    label = np.repeat(bands, FRAME[0] // 4)[:, None].repeat(FRAME[1], axis=1).astype(np.uint8)
    label[:, rng.integers(0, FRAME[1] - 2):][:, :2] = VOID
    return label


def write_split(folder: Path, *, count: int, seed: int, dark: bool, with_labels: bool) -> None:
    palette = np.random.default_rng(0).integers(40, 255, size=(VOID + 1, 3))
    (folder / "images").mkdir(parents=True)
    if with_labels:
        (folder / "labels").mkdir()
    for index in range(count):
        label = synthetic_label(seed + index)
        noise = np.random.default_rng(seed + index).integers(-20, 20, size=(*FRAME, 3))
        image = np.clip(palette[label] * (0.4 if dark else 1.0) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"frame_{index:03d}.png")
        if with_labels:
            Image.fromarray(label).save(folder / "labels" / f"frame_{index:03d}.png")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One torch thread: with these tiny tensors, extra threads only add synchronisation and, on shared
    cores, OpenMP spinning that made this file 20x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    """A CamVid day/dusk look-alike: classes.json, labelled day splits, unlabelled dusk/train, dusk/val."""
    root = tmp_path / "camvid"
    root.mkdir()
    (root / "classes.json").write_text(json.dumps({"id2label": dict(enumerate(CLASSES)), "ignore_index": VOID}))
    write_split(root / "day" / "train", count=6, seed=0, dark=False, with_labels=True)
    write_split(root / "day" / "val", count=2, seed=50, dark=False, with_labels=True)
    write_split(root / "day" / "test", count=3, seed=100, dark=False, with_labels=True)
    write_split(root / "dusk" / "train", count=4, seed=200, dark=True, with_labels=False)
    write_split(root / "dusk" / "val", count=3, seed=300, dark=True, with_labels=True)
    return root


def test_coarse_label_set_folds_pole_sign_fence_into_object(camvid: Path) -> None:
    full = dataset_label_set(camvid)
    coarse = fold_classes(full, folded=("pole", "sign_symbol", "fence"), into="object", name="coarse")
    assert coarse.id2label == {0: "sky", 1: "building", 2: "object", 3: "road", 4: "pavement", 5: "tree",
                               6: "car", 7: "pedestrian", 8: "bicyclist"}
    assert coarse.sources[2] == (2, 6, 7)
    assert coarse.encode(np.arange(12, dtype=np.uint8)).tolist() == [0, 1, 2, 3, 4, 5, 2, 2, 6, 7, 8, IGNORE]
    with pytest.raises(LwmmError, match="lamp"):
        fold_classes(full, folded=("lamp",), into="object", name="x")


def test_sample_batch_shapes_labels_and_determinism(camvid: Path) -> None:
    frames = load_frames(camvid / "day" / "train", size=RESOLUTION.size, with_labels=True)
    assert frames.images.shape == (6, 3, 36, 48) and frames.labels.shape == (6, 36, 48)
    labels = dataset_label_set(camvid)
    augmentation = Augmentation(crop=CROP, photometric=0.5)

    def draw(seed: int):
        return sample_batch(frames, batch_size=3, augmentation=augmentation, normalisation=NORMALISATION,
                            label_set=labels, generator=torch.Generator().manual_seed(seed))

    batch = draw(1)
    assert batch.pixel_values.shape == (3, 3, 32, 32) and batch.labels.shape == (3, 32, 32)
    assert set(batch.labels.unique().tolist()) <= set(range(11)) | {IGNORE}
    assert (batch.labels == IGNORE).any()  # the void stripe is ignored, never a class
    assert torch.equal(batch.pixel_values, draw(1).pixel_values) and torch.equal(batch.labels, draw(1).labels)
    assert not torch.equal(batch.pixel_values, draw(2).pixel_values)
    # no augmentation at scale 1 with a full-frame crop: exactly the normalised frame
    identity = Augmentation(crop=RESOLUTION.size, scale_range=(1.0, 1.0), flip=False)
    single = FrameSet(frames.images[:1], frames.labels[:1], frames.names[:1])
    plain = sample_batch(single, batch_size=1, augmentation=identity, normalisation=NORMALISATION, label_set=labels,
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain.pixel_values[0], (frames.images[0].float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert torch.equal(plain.labels[0], torch.from_numpy(labels.encode(frames.labels[0].numpy())).long())


def test_missing_label_is_one_clear_error(camvid: Path) -> None:
    (camvid / "day" / "train" / "labels" / "frame_002.png").unlink()
    with pytest.raises(LwmmError, match="frame_002.png"):
        load_frames(camvid / "day" / "train", size=RESOLUTION.size, with_labels=True)


def test_model_from_base_shares_encoder_and_folds_classifier_rows(camvid: Path) -> None:
    full = dataset_label_set(camvid)
    coarse = fold_classes(full, folded=("pole", "sign_symbol", "fence"), into="object", name="coarse")
    torch.manual_seed(0)
    base = SegformerForSemanticSegmentation(zoo_config(label_set=full))
    folded = model_from_base(base, base_labels=full, label_set=coarse, decoder_hidden_size=128, seed=1)
    wide = model_from_base(base, base_labels=full, label_set=full, decoder_hidden_size=256, seed=1)
    base_state, folded_state, wide_state = base.state_dict(), folded.state_dict(), wide.state_dict()
    encoder = [name for name in base_state if name.startswith("segformer.")]
    assert encoder and all(torch.equal(base_state[n], folded_state[n]) and torch.equal(base_state[n], wide_state[n]) for n in encoder)
    rows = base_state["decode_head.classifier.weight"]
    assert folded_state["decode_head.classifier.weight"].shape[0] == 9
    assert torch.allclose(folded_state["decode_head.classifier.weight"][2], rows[[2, 6, 7]].mean(dim=0))
    assert torch.equal(folded_state["decode_head.classifier.weight"][6], rows[8])
    assert wide_state["decode_head.linear_fuse.weight"].shape == (256, 4 * 256, 1, 1)
    assert sum(p.numel() for p in base.parameters()) <= 4_000_000 and sum(p.numel() for p in wide.parameters()) <= 4_000_000


def test_learning_rate_schedule_and_checkpoint_steps() -> None:
    recipe = TrainingRecipe(strategy="supervised", steps=100, learning_rate=1.0, seed=0, augmentation=Augmentation(),
                            strategy_options={}, checkpoints=4)
    assert checkpoint_steps(recipe) == [25, 50, 75, 100]
    assert [learning_rate_at(step, recipe) for step in (0, 4, 5, 99)] == pytest.approx([0.2, 1.0, 1.0, 1 / 95])


STRATEGIES = {
    "supervised": {},
    "entropy": {"weight": 0.5},
    "mean_teacher_mix": {"ema": 0.9, "confidence": 0.5, "weight": 1.0},
    "adversarial": {"weight": 0.01, "discriminator_width": 4, "discriminator_lr": 1e-3},
    "fourier": {"beta": 0.1},
}


def trained_weights(data: TrainingData, recipe: TrainingRecipe, state_path: Path, on_checkpoint=lambda *_: None) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    model = SegformerForSemanticSegmentation(zoo_config(label_set=data.label_set))
    train(model, recipe=recipe, data=data, device=torch.device("cpu"), state_path=state_path,
          on_checkpoint=on_checkpoint, description="test", state_every=2)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.fixture
def training_data(camvid: Path) -> TrainingData:
    return TrainingData(source=load_frames(camvid / "day" / "train", size=RESOLUTION.size, with_labels=True),
                        target=load_frames(camvid / "dusk" / "train", size=RESOLUTION.size, with_labels=False),
                        label_set=dataset_label_set(camvid), normalisation=NORMALISATION)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_is_deterministic_and_learns(strategy: str, training_data: TrainingData, tmp_path: Path) -> None:
    recipe = TrainingRecipe(strategy=strategy, steps=3, learning_rate=1e-3, seed=0, batch_size=2,
                            augmentation=Augmentation(crop=CROP, photometric=0.3), strategy_options=STRATEGIES[strategy])
    first = trained_weights(training_data, recipe, tmp_path / "a.pt")
    again = trained_weights(training_data, recipe, tmp_path / "b.pt")
    other_seed = trained_weights(training_data, replace(recipe, seed=1), tmp_path / "c.pt")
    torch.manual_seed(7)
    initial = SegformerForSemanticSegmentation(zoo_config(label_set=training_data.label_set)).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["decode_head.classifier.weight"], other_seed["decode_head.classifier.weight"])
    for name in ("segformer.stages.0.patch_embeddings.proj.weight", "decode_head.classifier.weight"):
        assert not torch.equal(first[name], initial[name])  # both ends of the network were trained
    assert not (tmp_path / "a.pt").exists()  # the resume state is removed once the run is complete


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_identical_weights(training_data: TrainingData, tmp_path: Path) -> None:
    recipe = TrainingRecipe(strategy="mean_teacher_mix", steps=4, learning_rate=1e-3, seed=0, batch_size=2,
                            augmentation=Augmentation(crop=CROP), strategy_options=STRATEGIES["mean_teacher_mix"], checkpoints=4)
    uninterrupted = trained_weights(training_data, recipe, tmp_path / "full.pt")

    def crash_after_step_3(model, number: int, step: int) -> None:
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        trained_weights(training_data, recipe, tmp_path / "resumed.pt", crash_after_step_3)
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["step"] == 2
    shutil.copy(tmp_path / "resumed.pt", tmp_path / "other.pt")
    restarted: list[int] = []  # a state saved by another recipe is not resumed
    trained_weights(training_data, replace(recipe, learning_rate=2e-3), tmp_path / "other.pt",
                    lambda model, number, step: restarted.append(step))
    assert restarted == [1, 2, 3, 4]
    seen: list[int] = []
    resumed = trained_weights(training_data, recipe, tmp_path / "resumed.pt", lambda model, number, step: seen.append(step))
    assert seen == [3, 4]
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)


class ConstantPredictor(torch.nn.Module):
    """Stands in for a SegFormer: logits that argmax to ``prediction`` (given at the label size)."""

    def __init__(self, prediction: torch.Tensor, num_labels: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.nn.functional.one_hot(prediction.long(), num_labels).permute(0, 3, 1, 2).float()

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[: len(pixel_values)])


def test_mean_iou_matches_hand_count_with_void_ignored(camvid: Path) -> None:
    labels = dataset_label_set(camvid)
    reference = np.zeros((1, 8, 8), dtype=np.uint8)
    reference[0, 4:] = 3  # road bottom half
    reference[0, :, :2] = VOID
    prediction = np.zeros((1, 8, 8), dtype=np.uint8)
    prediction[0, 2:] = 3  # road predicted over 2 sky rows too
    model = ConstantPredictor(torch.from_numpy(prediction), labels.num_labels)
    eval_set = EvalSet(name="hand", pixel_values=torch.zeros(1, 3, 8, 8), labels=reference)
    # non-void: sky 4x6 = 24 pixels, road 24; predicted road covers 6x6 = 36 (12 of them sky)
    assert mean_iou(model, eval_set, label_set=labels) == pytest.approx(np.mean([12 / 24, 24 / 36]))


def test_build_zoo_writes_loadable_hub_folders_and_resumes(camvid: Path, tmp_path: Path, capsys) -> None:
    settings = BuildSettings(data_root=camvid, output_dir=tmp_path / "zoo", device=torch.device("cpu"),
                             steps_scale=0.01, seed=0, resolution=RESOLUTION, crop=CROP)
    entries = build_zoo(settings)
    names = [entry.name for entry in entries]
    series = ["mean-teacher-step0001", "mean-teacher-step0002", "mean-teacher-step0003", "mean-teacher"]
    assert names == ["base", "source-only", "minent", *series, "adversarial", "fourier", "coarse-objects", "head-256"]
    manifest = json.loads((settings.output_dir / "zoo.json").read_text())
    assert manifest["checkpoint_series"] == {"mean-teacher": series}
    assert {model["code_commit"] for model in manifest["models"]} == {manifest["build_code_commit"]}  # trained by this build
    source_only = manifest["models"][1]["scores"]["dusk_val"]
    settings_per_run = {spec.name: len(spec.tries()) for spec in zoo_plan(seed=0, steps_scale=0.01, crop=CROP)[1]}
    for run in ("minent", "mean-teacher", "adversarial", "fourier"):  # each UDA run beat source-only, or tried every setting
        tries = [entry for entry in manifest["tuning"] if entry["run"] == run]
        accepted = [entry for entry in tries if entry["accepted"]]
        assert len(accepted) == 1 and all(entry["source_only_dusk_val"] == source_only for entry in tries)
        final = next(model for model in manifest["models"] if model["name"] == run)
        assert final["scores"]["dusk_val"] == pytest.approx(accepted[0]["dusk_val"], abs=1e-4)
        assert final["recipe"]["strategy_options"] == accepted[0]["strategy_options"]
        assert accepted[0]["dusk_val"] > source_only or len(tries) == settings_per_run[run] == 3
    for entry, recorded in zip(entries, manifest["models"]):
        folder = settings.output_dir / entry.name
        assert recorded["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert recorded["recipe"]["steps"] >= 1 and recorded["device"] == "cpu"
        model = AutoModelForSemanticSegmentation.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
        assert processor.size == {"height": 36, "width": 48}
        assert any(name.startswith("segformer.encoder.block.0.0.") for name in load_file(folder / "model.safetensors"))
        scores, metadata = read_card(folder)
        assert scores.dusk_val == pytest.approx(entry.scores.dusk_val, abs=1e-4) and 0 <= scores.dusk_val <= 1
        assert metadata["role"] == entry.role and model.config.num_labels == entry.num_labels
        card = (folder / "README.md").read_text()
        assert "library_name: transformers" in card and "pipeline_tag: image-segmentation" in card and "strategy:" in card
    assert manifest["models"][0]["recipe"]["source_splits"] == ["day/train", "day/val"]
    assert "unlabelled CamVid `dusk/train`" in (settings.output_dir / "minent" / "README.md").read_text()
    assert "labelled CamVid `day/train` and `day/val` only" in (settings.output_dir / "source-only" / "README.md").read_text()
    assert "unlabelled CamVid `dusk/train`" not in (settings.output_dir / "source-only" / "README.md").read_text()
    coarse = AutoModelForSemanticSegmentation.from_pretrained(settings.output_dir / "coarse-objects")
    assert coarse.config.id2label[2] == "object" and coarse.config.num_labels == 9
    assert AutoModelForSemanticSegmentation.from_pretrained(settings.output_dir / "head-256").config.decoder_hidden_size == 256
    base = load_file(settings.output_dir / "base" / "model.safetensors")
    wide = load_file(settings.output_dir / "head-256" / "model.safetensors")
    assert not torch.equal(base["segformer.encoder.block.0.0.attention.self.query.weight"],
                           wide["segformer.encoder.block.0.0.attention.self.query.weight"])  # fine-tuned, not copied

    again = build_zoo(settings)  # resumed: nothing is trained again
    assert [entry.name for entry in again] == names
    assert [(entry.sha256, entry.train_seconds) for entry in again] == [(entry.sha256, entry.train_seconds) for entry in entries]
    assert json.loads((settings.output_dir / "zoo.json").read_text())["models"] == manifest["models"]
    table = zoo_table(again)
    assert table.count("\n") == len(names) + 1 and "coarse-objects" in table

    rebuilt = build_zoo(replace(settings, output_dir=tmp_path / "zoo-again"))  # a second build from scratch
    assert [(entry.name, entry.sha256) for entry in rebuilt] == [(entry.name, entry.sha256) for entry in entries]
