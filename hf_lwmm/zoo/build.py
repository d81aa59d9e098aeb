"""Builds the whole zoo: the base, then every fine-tune from it, each saved, scored and carded.

Resumable at two grains: a model whose folder is complete is not trained again (its scores come back
from its card), and a run interrupted midway restarts from its last saved training state.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

from hf_lwmm.errors import LwmmError
from hf_lwmm.zoo.data import FrameSet, LabelSet, dataset_label_set, fold_classes, load_frames
from hf_lwmm.zoo.evaluate import EvalSet, load_eval_set, mean_iou
from hf_lwmm.zoo.export import ModelCardInfo, Scores, is_complete, model_card, read_card, recipe_dict, write_model_folder
from hf_lwmm.zoo.model import Resolution, count_parameters, model_from_base, processor_normalisation, zoo_config, zoo_processor
from hf_lwmm.zoo.plan import BASE_NAME, COARSE_CLASS, COARSE_FOLD, ModelSpec, zoo_plan
from hf_lwmm.zoo.strategies import uses_target_images
from hf_lwmm.zoo.train import TrainingData, train

MANIFEST = "zoo.json"


@dataclass(frozen=True)
class BuildSettings:
    """Where the data is, where the zoo goes, and how hard to train."""

    data_root: Path
    output_dir: Path
    device: torch.device
    steps_scale: float = 1.0
    seed: int = 0
    resolution: Resolution = Resolution(height=180, width=240)
    crop: tuple[int, int] = (160, 160)


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo as the final table and ``zoo.json`` list it."""

    name: str
    role: str
    strategy: str
    num_labels: int
    decoder_hidden_size: int
    parameters: int
    scores: Scores
    train_seconds: float  # wall time of its run up to this model (training + scoring of earlier checkpoints)


@dataclass(frozen=True)
class ZooData:
    """Training frames and evaluation splits, decoded once for the whole build."""

    day_train: FrameSet
    dusk_train: FrameSet
    day_test: EvalSet
    dusk_val: EvalSet
    labels: LabelSet
    coarse_labels: LabelSet


def load_zoo_data(data_root: Path, *, processor: SegformerImageProcessorPil, resolution: Resolution) -> ZooData:
    """The four CamVid day/dusk splits the zoo uses (dusk/train without labels, as UDA requires)."""
    if not Path(data_root).is_dir():
        raise LwmmError(f"{data_root}: data folder not found")
    labels = dataset_label_set(data_root)
    return ZooData(
        day_train=load_frames(data_root / "day" / "train", size=resolution.size, with_labels=True),
        dusk_train=load_frames(data_root / "dusk" / "train", size=resolution.size, with_labels=False),
        day_test=load_eval_set(data_root / "day" / "test", processor=processor, name="day/test"),
        dusk_val=load_eval_set(data_root / "dusk" / "val", processor=processor, name="dusk/val"),
        labels=labels,
        coarse_labels=fold_classes(labels, folded=COARSE_FOLD, into=COARSE_CLASS, name="coarse"),
    )


class ZooBuilder:
    """Trains, scores and writes the models of :func:`zoo_plan` into ``settings.output_dir``."""

    def __init__(self, settings: BuildSettings, data: ZooData) -> None:
        self.settings = settings
        self.data = data
        self.processor = zoo_processor(settings.resolution)
        self.work_dir = settings.output_dir / ".training-state"
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def label_set(self, spec: ModelSpec) -> LabelSet:
        return self.data.coarse_labels if spec.coarse_classes else self.data.labels

    def scores(self, model: SegformerForSemanticSegmentation, label_set: LabelSet) -> Scores:
        return Scores(day_test=mean_iou(model, self.data.day_test, label_set=label_set),
                      dusk_val=mean_iou(model, self.data.dusk_val, label_set=label_set))

    def save(self, spec: ModelSpec, folder_name: str, model: SegformerForSemanticSegmentation, *, step: int,
             started: float) -> ZooEntry:
        """Scores ``model`` and writes its folder; checkpoints before the last are tagged as such."""
        is_final = folder_name == spec.name
        label_set = self.label_set(spec)
        scores = self.scores(model, label_set)
        seconds = time.perf_counter() - started
        recipe = {**recipe_dict(spec.recipe), "stopped_at_step": step,
                  "classes": label_set.name, "decoder_hidden_size": spec.decoder_hidden_size,
                  "resolution": list(self.settings.resolution.size)}
        role = spec.role if is_final else "checkpoint"
        summary = spec.summary if is_final else f"Checkpoint at step {step} of {spec.recipe.steps} of the `{spec.name}` run. {spec.summary}"
        metadata = {"role": role, "strategy": spec.recipe.strategy, "run": spec.name, "step": step,
                    "train_seconds": round(seconds, 1)}
        info = ModelCardInfo(name=folder_name, summary=summary, role=role, recipe=recipe, scores=scores,
                             parameters=count_parameters(model), train_seconds=seconds,
                             base=None if spec.role == "base" else BASE_NAME, zoo_metadata=metadata,
                             uses_dusk_images=uses_target_images(spec.recipe.strategy))
        write_model_folder(self.settings.output_dir / folder_name, model=model, processor=self.processor,
                           card=model_card(info, model))
        return ZooEntry(name=folder_name, role=role, strategy=spec.recipe.strategy, num_labels=model.config.num_labels,
                        decoder_hidden_size=model.config.decoder_hidden_size, parameters=count_parameters(model),
                        scores=scores, train_seconds=seconds)

    def finished_entries(self, spec: ModelSpec) -> list[ZooEntry] | None:
        """Entries of a run whose every folder is complete (read back, not retrained), else None."""
        folders = [self.settings.output_dir / name for name in spec.folder_names()]
        if not all(is_complete(folder) for folder in folders):
            return None
        return [read_entry(folder) for folder in folders]

    def run(self, spec: ModelSpec, start: SegformerForSemanticSegmentation) -> list[ZooEntry]:
        """Trains ``spec`` from ``start`` (resuming a saved state), writing each checkpoint's folder."""
        label_set = self.label_set(spec)
        data = TrainingData(source=self.data.day_train, target=self.data.dusk_train, label_set=label_set,
                            normalisation=processor_normalisation(self.processor))
        started = time.perf_counter()
        entries: list[ZooEntry] = []

        def on_checkpoint(model: SegformerForSemanticSegmentation, number: int, step: int) -> None:
            folder_name = spec.folder_names()[number - 1]
            if is_complete(self.settings.output_dir / folder_name):
                entries.append(read_entry(self.settings.output_dir / folder_name))
            else:
                entries.append(self.save(spec, folder_name, model, step=step, started=started))

        train(start, recipe=spec.recipe, data=data, device=self.settings.device,
              state_path=self.work_dir / f"{spec.name}.pt", on_checkpoint=on_checkpoint, description=spec.name)
        return entries

    def base_model(self, spec: ModelSpec) -> tuple[SegformerForSemanticSegmentation, list[ZooEntry]]:
        """The base: loaded when its folder is complete, else trained from a seeded random initialisation."""
        finished = self.finished_entries(spec)
        if finished is not None:
            model = SegformerForSemanticSegmentation.from_pretrained(self.settings.output_dir / spec.name)
            return model, finished
        torch.manual_seed(spec.recipe.seed)
        model = SegformerForSemanticSegmentation(zoo_config(label_set=self.data.labels, decoder_hidden_size=spec.decoder_hidden_size))
        entries = self.run(spec, model)
        return model, entries

    def build(self) -> list[ZooEntry]:
        base_spec, fine_tunes = zoo_plan(seed=self.settings.seed, steps_scale=self.settings.steps_scale, crop=self.settings.crop)
        base, entries = self.base_model(base_spec)
        write_manifest(self.settings.output_dir, entries, fine_tunes)
        base.to(self.settings.device).eval()
        for spec in fine_tunes:
            finished = self.finished_entries(spec)
            if finished is None:
                start = model_from_base(base, base_labels=self.data.labels, label_set=self.label_set(spec),
                                        decoder_hidden_size=spec.decoder_hidden_size, seed=spec.recipe.seed)
                finished = self.run(spec, start)
            entries.extend(finished)
            write_manifest(self.settings.output_dir, entries, fine_tunes)
        return entries


def read_entry(folder: Path) -> ZooEntry:
    """A finished model's entry from its folder: classes from its config, scores and time from its card."""
    model = SegformerForSemanticSegmentation.from_pretrained(folder)
    scores, zoo = read_card(folder)
    return ZooEntry(name=folder.name, role=zoo["role"], strategy=zoo["strategy"], num_labels=model.config.num_labels,
                    decoder_hidden_size=model.config.decoder_hidden_size, parameters=count_parameters(model),
                    scores=scores, train_seconds=float(zoo["train_seconds"]))


def write_manifest(output_dir: Path, entries: list[ZooEntry], fine_tunes: list[ModelSpec]) -> None:
    """``zoo.json``: every model with its role and scores, and the checkpoint series in step order."""
    series = {spec.name: spec.folder_names() for spec in fine_tunes if spec.recipe.checkpoints > 1}
    manifest = {"models": [asdict(entry) for entry in entries], "checkpoint_series": series}
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def build_zoo(settings: BuildSettings) -> list[ZooEntry]:
    """Builds (or completes) the zoo in ``settings.output_dir`` and returns one entry per model folder."""
    processor = zoo_processor(settings.resolution)
    data = load_zoo_data(Path(settings.data_root), processor=processor, resolution=settings.resolution)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    return ZooBuilder(settings, data).build()


def zoo_table(entries: list[ZooEntry]) -> str:
    """A plain-text table: one row per model with its classes, head width, training time and both mIoUs."""
    header = (f"{'model':<24} {'role':<18} {'strategy':<17} {'cls':>3} {'head':>4} {'params':>7} {'train':>7} "
              f"{'day/test':>8} {'dusk/val':>8}")
    rows = [header, "-" * len(header)]
    for entry in entries:
        minutes = f"{entry.train_seconds / 60:.1f}m"
        rows.append(f"{entry.name:<24} {entry.role:<18} {entry.strategy:<17} {entry.num_labels:>3} "
                    f"{entry.decoder_hidden_size:>4} {entry.parameters / 1e6:>6.2f}M {minutes:>7} "
                    f"{100 * entry.scores.day_test:>8.1f} {100 * entry.scores.dusk_val:>8.1f}")
    return "\n".join(rows)
