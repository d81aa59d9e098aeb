"""Builds the whole zoo: the base, then every fine-tune from it, each saved, scored and carded.

Resumable at two grains: a model whose folder is complete is not trained again (its scores come back
from its card), and a run interrupted midway restarts from its last saved training state.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

from hf_lwmm.errors import LwmmError
from hf_lwmm.zoo.data import FrameSet, LabelSet, concatenate_frames, dataset_label_set, fold_classes, load_frames
from hf_lwmm.zoo.evaluate import EvalSet, load_eval_set, mean_iou
from hf_lwmm.zoo.export import ModelCardInfo, Scores, ZooMetadata, is_complete, model_card, read_card, recipe_dict, write_model_folder
from hf_lwmm.zoo.model import Resolution, count_parameters, model_from_base, processor_normalisation, zoo_config, zoo_processor
from hf_lwmm.zoo.plan import BASE_NAME, COARSE_CLASS, COARSE_FOLD, SOURCE_ONLY, ModelSpec, zoo_plan
from hf_lwmm.zoo.strategies import uses_target_images
from hf_lwmm.zoo.train import TrainingData, TrainingRecipe, train

MANIFEST = "zoo.json"
TRIES_DIR = ".tries"


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
    sha256: str  # of its model.safetensors
    recipe: dict[str, object]  # the training recipe (see TrainingRecipe), as its card records it
    device: str  # where it was trained
    code_commit: str | None  # the code that trained it (a resumed build keeps the models earlier code trained)


@dataclass(frozen=True)
class TuningTry:
    """One setting of a UDA strategy that was trained and scored on dusk/val (recorded in ``zoo.json``)."""

    run: str
    number: int
    strategy_options: dict[str, float]
    dusk_val: float
    source_only_dusk_val: float
    accepted: bool


@dataclass(frozen=True)
class ZooData:
    """Training frames and evaluation splits, decoded once for the whole build."""

    day_train: FrameSet
    dusk_train: FrameSet
    day_test: EvalSet
    dusk_val: EvalSet
    labels: LabelSet
    coarse_labels: LabelSet


def labelled_day_splits(data_root: Path) -> list[Path]:
    """Every labelled day split but ``day/test`` (CamVid: train and val), in name order."""
    return sorted(split for split in (Path(data_root) / "day").iterdir()
                  if split.name != "test" and (split / "labels").is_dir())


def load_zoo_data(data_root: Path, *, processor: SegformerImageProcessorPil, resolution: Resolution) -> ZooData:
    """The CamVid day/dusk splits the zoo uses (dusk/train without labels, as UDA requires)."""
    if not Path(data_root).is_dir():
        raise LwmmError(f"{data_root}: data folder not found")
    labels = dataset_label_set(data_root)
    day = [load_frames(split, size=resolution.size, with_labels=True) for split in labelled_day_splits(data_root)]
    return ZooData(
        day_train=concatenate_frames(day),
        dusk_train=load_frames(data_root / "dusk" / "train", size=resolution.size, with_labels=False),
        day_test=load_eval_set(data_root / "day" / "test", processor=processor, name="day/test"),
        dusk_val=load_eval_set(data_root / "dusk" / "val", processor=processor, name="dusk/val"),
        labels=labels,
        coarse_labels=fold_classes(labels, folded=COARSE_FOLD, into=COARSE_CLASS, name="coarse"),
    )


def weights_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_commit() -> str | None:
    """The git commit of the code that trains the zoo (``+dirty`` when ``hf_lwmm/`` has uncommitted changes)."""
    package = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=package, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


class ZooBuilder:
    """Trains, scores and writes the models of :func:`zoo_plan` into ``settings.output_dir``."""

    def __init__(self, settings: BuildSettings, data: ZooData) -> None:
        self.settings = settings
        self.data = data
        self.processor = zoo_processor(settings.resolution)
        self.work_dir = settings.output_dir / ".training-state"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tuning: list[TuningTry] = []
        self.code_commit = code_commit()  # the code that starts the build is the code that trains it

    def label_set(self, spec: ModelSpec) -> LabelSet:
        return self.data.coarse_labels if spec.coarse_classes else self.data.labels

    def scores(self, model: SegformerForSemanticSegmentation, label_set: LabelSet) -> Scores:
        return Scores(day_test=mean_iou(model, self.data.day_test, label_set=label_set),
                      dusk_val=mean_iou(model, self.data.dusk_val, label_set=label_set))

    def card_recipe(self, spec: ModelSpec, recipe: TrainingRecipe, step: int) -> dict[str, object]:
        """The recipe a model's card and ``zoo.json`` record: the training recipe and what it trained on."""
        return {**recipe_dict(recipe), "stopped_at_step": step, "classes": self.label_set(spec).name,
                "decoder_hidden_size": spec.decoder_hidden_size, "resolution": list(self.settings.resolution.size),
                "source_splits": [f"day/{split.name}" for split in labelled_day_splits(self.settings.data_root)]}

    def save(self, spec: ModelSpec, recipe: TrainingRecipe, folder: Path, model: SegformerForSemanticSegmentation, *,
             step: int, started: float) -> ZooEntry:
        """Scores ``model`` and writes its folder; checkpoints before the last are tagged as such."""
        is_final = folder.name == spec.name
        label_set = self.label_set(spec)
        scores = self.scores(model, label_set)
        seconds = time.perf_counter() - started
        card_recipe = self.card_recipe(spec, recipe, step)
        role = spec.role if is_final else "checkpoint"
        summary = spec.summary if is_final else f"Checkpoint at step {step} of {recipe.steps} of the `{spec.name}` run. {spec.summary}"
        metadata: ZooMetadata = {"role": role, "strategy": recipe.strategy, "run": spec.name, "step": step,
                    "train_seconds": round(seconds, 1), "device": self.settings.device.type, "code_commit": self.code_commit,
                    "recipe": card_recipe}
        info = ModelCardInfo(name=folder.name, summary=summary, role=role, recipe=card_recipe, scores=scores,
                             parameters=count_parameters(model), train_seconds=seconds,
                             base=None if spec.role == "base" else BASE_NAME, zoo_metadata=metadata,
                             uses_dusk_images=uses_target_images(recipe.strategy))
        write_model_folder(folder, model=model, processor=self.processor, card=model_card(info, model))
        return read_entry(folder)

    def finished_entries(self, spec: ModelSpec, recipe: TrainingRecipe, root: Path) -> list[ZooEntry] | None:
        """Entries of a run whose every folder is complete and was trained by ``recipe``, else None."""
        folders = [root / name for name in spec.folder_names()]
        if not all(is_complete(folder) for folder in folders):
            return None
        entries = [read_entry(folder) for folder in folders]
        wanted = recipe_dict(recipe)
        if any({key: entry.recipe.get(key) for key in wanted} != wanted for entry in entries):
            return None  # left by a build with other settings or code: trained again
        return entries

    def run(self, spec: ModelSpec, recipe: TrainingRecipe, start: SegformerForSemanticSegmentation, *, root: Path,
            state_name: str) -> list[ZooEntry]:
        """Trains ``recipe`` from ``start`` (resuming a saved state), writing each checkpoint's folder under ``root``."""
        finished = self.finished_entries(spec, recipe, root)
        if finished is not None:
            return finished
        label_set = self.label_set(spec)
        data = TrainingData(source=self.data.day_train, target=self.data.dusk_train, label_set=label_set,
                            normalisation=processor_normalisation(self.processor))
        started = time.perf_counter()
        entries: list[ZooEntry] = []

        def on_checkpoint(model: SegformerForSemanticSegmentation, number: int, step: int) -> None:
            entries.append(self.save(spec, recipe, root / spec.folder_names()[number - 1], model, step=step, started=started))

        train(start, recipe=recipe, data=data, device=self.settings.device, state_path=self.work_dir / f"{state_name}.pt",
              on_checkpoint=on_checkpoint, description=state_name)
        return entries

    def base_model(self, spec: ModelSpec) -> tuple[SegformerForSemanticSegmentation, list[ZooEntry]]:
        """The base: loaded when its folder is complete, else trained from a seeded random initialisation."""
        root = self.settings.output_dir
        finished = self.finished_entries(spec, spec.recipe, root)
        if finished is None:
            torch.manual_seed(spec.recipe.seed)
            model = SegformerForSemanticSegmentation(zoo_config(label_set=self.data.labels, decoder_hidden_size=spec.decoder_hidden_size))
            finished = self.run(spec, spec.recipe, model, root=root, state_name=spec.name)
        return SegformerForSemanticSegmentation.from_pretrained(root / spec.name), finished

    def fine_tune(self, spec: ModelSpec, base: SegformerForSemanticSegmentation, source_only: ZooEntry | None) -> list[ZooEntry]:
        """A fine-tune from the base; a UDA strategy tries its settings until one beats source-only on dusk/val.

        Tries live in ``.tries/<run>/<n>/`` until one is accepted (or, when none beats source-only,
        the best is taken and ``zoo.json`` says so); the accepted try's folders move into the zoo.
        """
        root = self.settings.output_dir

        def start() -> SegformerForSemanticSegmentation:
            return model_from_base(base, base_labels=self.data.labels, label_set=self.label_set(spec),
                                   decoder_hidden_size=spec.decoder_hidden_size, seed=spec.recipe.seed)

        if not spec.must_beat_source_only or source_only is None:
            return self.run(spec, spec.recipe, start(), root=root, state_name=spec.name)
        bar = source_only.scores.dusk_val
        tries: list[tuple[TrainingRecipe, list[ZooEntry], Path]] = []
        for number, recipe in enumerate(spec.tries(), start=1):
            accepted = self.finished_entries(spec, recipe, root)
            if accepted is not None:  # accepted in an earlier build
                tries.append((recipe, accepted, root))
                break
            try_root = root / TRIES_DIR / spec.name / str(number)
            try_root.mkdir(parents=True, exist_ok=True)
            entries = self.run(spec, recipe, start(), root=try_root, state_name=f"{spec.name}-try{number}")
            tries.append((recipe, entries, try_root))
            if entries[-1].scores.dusk_val > bar:
                break
        best = max(range(len(tries)), key=lambda index: tries[index][1][-1].scores.dusk_val)
        for number, (recipe, entries, _) in enumerate(tries, start=1):
            self.tuning.append(TuningTry(run=spec.name, number=number, strategy_options=dict(recipe.strategy_options),
                                         dusk_val=entries[-1].scores.dusk_val, source_only_dusk_val=bar,
                                         accepted=number - 1 == best))
        _, entries, try_root = tries[best]
        if try_root != root:
            for name in spec.folder_names():
                shutil.rmtree(root / name, ignore_errors=True)
                (try_root / name).rename(root / name)
            entries = [read_entry(root / name) for name in spec.folder_names()]
        return entries

    def build(self) -> list[ZooEntry]:
        started = time.perf_counter()
        base_spec, fine_tunes = zoo_plan(seed=self.settings.seed, steps_scale=self.settings.steps_scale, crop=self.settings.crop)
        base, entries = self.base_model(base_spec)
        self.write_manifest(entries, fine_tunes, started)
        base.to(self.settings.device).eval()  # type: ignore[arg-type]  # transformers' @wraps(Module.to) typing
        source_only: ZooEntry | None = None
        for spec in fine_tunes:
            finished = self.fine_tune(spec, base, source_only)
            if spec.name == SOURCE_ONLY:
                source_only = finished[-1]
            entries.extend(finished)
            self.write_manifest(entries, fine_tunes, started)
        return entries

    def write_manifest(self, entries: list[ZooEntry], fine_tunes: list[ModelSpec], started: float) -> None:
        """``zoo.json``: every model (role, scores, sha256, recipe, device, the code commit that trained it), the checkpoint
        series, the tuning tries, and the code commit of this build run (``build_code_commit``)."""
        series = {spec.name: spec.folder_names() for spec in fine_tunes if spec.recipe.checkpoints > 1}
        manifest = {"models": [asdict(entry) for entry in entries], "checkpoint_series": series,
                    "tuning": [asdict(entry) for entry in self.tuning], "build_code_commit": self.code_commit,
                    "device": self.settings.device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "build_seconds_this_run": round(time.perf_counter() - started, 1)}
        (self.settings.output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_entry(folder: Path) -> ZooEntry:
    """A finished model's entry from its folder: classes from its config, scores, recipe and time from its card."""
    model = SegformerForSemanticSegmentation.from_pretrained(folder)
    scores, zoo = read_card(folder)
    assert model.config.num_labels is not None  # a segmentation config always has id2label
    return ZooEntry(name=folder.name, role=zoo["role"], strategy=zoo["strategy"], num_labels=model.config.num_labels,
                    decoder_hidden_size=model.config.decoder_hidden_size, parameters=count_parameters(model),
                    scores=scores, train_seconds=float(zoo["train_seconds"]), sha256=weights_sha256(folder),
                    recipe=dict(zoo.get("recipe", {})), device=str(zoo.get("device", "unknown")), code_commit=zoo.get("code_commit"))


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
