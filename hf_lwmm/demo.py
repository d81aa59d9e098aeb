"""The embedded default job: build small UDA-like source models, merge them with every method.

The sources imitate what the Hub offers: fine-tunes of one shared pretrained SegFormer, one of them
with a coarser class set (so its classifier differs) — no token, no network, no data needed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_lwmm.console import progress_bar
from hf_lwmm.errors import LwmmError
from hf_lwmm.io.output import check_output_folder
from hf_lwmm.merge import MergeResult, merge
from hf_lwmm.methods import METHODS
from hf_lwmm.recipe import MergeRecipe, RunOptions

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist")
COARSE_CLASSES = ("sky", "building", "object", "road", "pavement", "tree", "car", "pedestrian", "bicyclist")
#: (folder name, class names, seed of its "fine-tuning" drift)
SOURCES = (("uda_mic", CLASSES, 1), ("uda_hrda", CLASSES, 2), ("uda_daformer", CLASSES, 3), ("uda_coarse", COARSE_CLASSES, 4))


@dataclass(frozen=True)
class DemoRow:
    method: str
    result: MergeResult
    agreement: float


def build_sources(folder: Path, *, image_size: int = 64) -> list[Path]:
    """A shared "pretrained" SegFormer and drifted copies of it, saved as Hub-style folders."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    def config(classes: tuple[str, ...]) -> SegformerConfig:
        id2label = dict(enumerate(classes))
        return SegformerConfig(depths=[2, 2, 2, 2], hidden_sizes=[16, 32, 64, 96], num_attention_heads=[1, 2, 4, 6],
                               decoder_hidden_size=64, id2label=id2label, label2id={v: k for k, v in id2label.items()})

    torch.manual_seed(0)
    pretrained = SegformerForSemanticSegmentation(config(CLASSES)).state_dict()
    paths = []
    for name, classes, seed in SOURCES:
        torch.manual_seed(seed)
        model = SegformerForSemanticSegmentation(config(classes))
        state = model.state_dict()
        for key, value in pretrained.items():
            if key in state and state[key].shape == value.shape and value.is_floating_point():
                spread = float(value.std().nan_to_num())  # the head's BatchNorm, constant at init, drifts too
                drift = 0.05 * (spread if spread > 0 or "batch_norm" not in key else 1.0) * torch.randn_like(value)
                state[key] = value + drift if "running_var" not in key else value.abs() + drift.abs()
        model.load_state_dict(state)
        model.save_pretrained(folder / name)
        SegformerImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder / name)
        paths.append(folder / name)
    return paths


def prediction_agreement(model_dir: Path, anchor_dir: Path, *, image_size: int = 64) -> float:
    """Fraction of pixels where the merged model predicts the anchor's class on a fixed random image."""
    from hf_lwmm.loading import load_segmentation_model

    pixels = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = load_segmentation_model(model_dir, label=str(model_dir))[0](pixel_values=pixels).logits.argmax(1)
        anchor = load_segmentation_model(anchor_dir, label=str(anchor_dir))[0](pixel_values=pixels).logits.argmax(1)
    return float((merged == anchor).float().mean())


def run_demo(output: Path, *, overwrite: bool = False, methods: Sequence[str] | None = None,
             progress: bool = True) -> list[DemoRow]:
    """Build the sources under ``output/sources`` and write one merged model per method (default: every one)."""
    methods = list(methods or METHODS)
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise LwmmError(f"--methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    check_output_folder(output, overwrite=overwrite)
    if output.exists():
        shutil.rmtree(output)
    rows = []
    with progress_bar(total=1 + len(methods), desc="demo", unit="step", enabled=progress) as bar:
        sources = build_sources(output / "sources")
        bar.update()
        models = [str(path) for path in sources]
        for method in methods:
            recipe = MergeRecipe(models=models, anchor=models[0], method=method, parameters=demo_parameters(method, len(models), output))
            result = merge(recipe, output / f"merged-{method}", RunOptions(progress=False))
            rows.append(DemoRow(method, result, prediction_agreement(result.output_dir, sources[0])))
            bar.update()
    return rows


def demo_parameters(method: str, count: int, output: Path) -> dict[str, object]:
    """Parameters a method needs beyond its defaults."""
    if method == "linear":
        return {"weights": [0.4] + [0.6 / (count - 1)] * (count - 1)}
    if method == "fisher":
        return {"fisher_data": str(write_unlabelled_images(output / "fisher-images")), "fisher_samples": 4}
    return {}


def write_unlabelled_images(folder: Path, *, count: int = 4, size: int = 64) -> Path:
    """Random target-domain stand-ins for the Fisher estimate (``images/`` layout)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / "images" / f"{index}.png")
    return folder
