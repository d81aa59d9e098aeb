"""Benchmark: ``lwmm-hub eval``'s loop against the model's pure forward passes on the same batches.

Makes a MiT-B0-size SegFormer (random weights, 19 classes) and a folder of images + labels, then, in
the same run, times (a) the forward passes alone on the preprocessed batches and (b) the whole eval
loop (reading and preprocessing images, forward, resizing logits to the label size, argmax, gather,
streaming mIoU; model loading included). Prints throughput ratio (b)/(a) (goal: ≥ 0.9) and each other
stage timed alone, so that what the forward cannot hide is visible (on a CPU every stage shares its cores).

    python scripts/bench_eval.py [--images 16] [--height 512] [--width 1024] [--batch-size 4] [--num-workers N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

from hf_lwmm.evaluation.data import load_segmentation_data
from hf_lwmm.evaluation.metric import MeanIoU
from hf_lwmm.evaluation.runner import Collator, Predictor, evaluate_predictors, resize_to_labels

NUM_LABELS = 19


def make_model(folder: Path) -> Path:
    """MiT-B0 encoder with a 256-wide decode head, as the SegFormer paper's B0."""
    config = SegformerConfig(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], num_attention_heads=[1, 2, 5, 8],
                             decoder_hidden_size=256, num_labels=NUM_LABELS)
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(folder)
    return folder


def make_data(folder: Path, *, count: int, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / "images" / f"{index:04d}.png")
        Image.fromarray(rng.integers(0, NUM_LABELS, (height, width), dtype=np.uint8)).save(folder / "labels" / f"{index:04d}.png")
    return folder


def outside_the_loop(model_folder: Path, data_folder: Path, *, batch_size: int, device: torch.device) -> tuple[Any, Collator, Any, list[range]]:
    """What the eval loop would use, set up by hand: the model on ``device``, the collator, the data, the batches' indices."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(model_folder).eval().to(device)
    data = load_segmentation_data(str(data_folder))
    collate = Collator([AutoImageProcessor.from_pretrained(model_folder)], NUM_LABELS, data.ignore_index)
    return model, collate, data, [range(start, min(start + batch_size, len(data))) for start in range(0, len(data), batch_size)]


def forward_seconds(model_folder: Path, data_folder: Path, *, batch_size: int, device: torch.device) -> float:
    """Forward passes alone, on the batches the eval loop sees (preprocessed and on the device beforehand, not timed)."""
    model, collate, data, indices = outside_the_loop(model_folder, data_folder, batch_size=batch_size, device=device)
    batches = [collate([data.samples[i] for i in batch])["pixel_values"][0].to(device) for batch in indices]
    with torch.inference_mode():
        model(pixel_values=batches[0])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for pixel_values in batches:
            model(pixel_values=pixel_values)
        synchronize(device)
        return time.perf_counter() - start


def stage_seconds(model_folder: Path, data_folder: Path, *, batch_size: int, device: torch.device) -> dict[str, float]:
    """The eval loop's other stages, each timed alone on the same batches: where time beyond the forward goes."""
    model, collate, data, indices = outside_the_loop(model_folder, data_folder, batch_size=batch_size, device=device)
    seconds = dict.fromkeys(("read images and labels (PNG decode)", "preprocess images, check labels", "resize logits to labels + argmax",
                             "streaming mIoU"), 0.0)
    metric = MeanIoU()
    for batch_indices in indices:
        began = time.perf_counter()
        samples = [data.samples[i] for i in batch_indices]
        read = time.perf_counter()
        batch = collate(samples)
        collated = time.perf_counter()
        with torch.inference_mode():
            logits = model(pixel_values=batch["pixel_values"][0].to(device)).logits
            synchronize(device)
            forwarded = time.perf_counter()
            predicted = resize_to_labels(logits, batch).argmax(dim=1).to(torch.int16)
            synchronize(device)
        resized = time.perf_counter()
        metric.add_batch(predictions=predicted, references=batch["labels"].to(device))
        counted = time.perf_counter()
        for stage, duration in zip(seconds, (read - began, collated - read, resized - forwarded, counted - resized)):
            seconds[stage] += duration
    return seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_seconds(model_folder: Path, data_folder: Path, *, batch_size: int, num_workers: int) -> float:
    data = load_segmentation_data(str(data_folder))
    start = time.perf_counter()
    evaluate_predictors([("b0", model_folder)], [Predictor("b0", (0,))], data, batch_size=batch_size, num_workers=num_workers,
                        progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, help="eval loop's image-reading processes (default: lwmm-hub eval's)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings of each; medians are compared (default: 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lwmm-bench-eval-") as scratch:
        model = make_model(Path(scratch) / "model")
        data = make_data(Path(scratch) / "data", count=args.images, height=args.height, width=args.width)
        eval_seconds(model, data, batch_size=args.batch_size, num_workers=args.num_workers)  # warm-up: imports, file cache
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where accelerate puts the model
        forwards, loops = [], []
        for _ in range(args.rounds):  # alternating, so that load from other jobs on the machine hits both alike
            forwards.append(forward_seconds(model, data, batch_size=args.batch_size, device=device))
            loops.append(eval_seconds(model, data, batch_size=args.batch_size, num_workers=args.num_workers))
        stages = stage_seconds(model, data, batch_size=args.batch_size, device=device)
    forward, loop = float(np.median(forwards)), float(np.median(loops))
    print(f"{args.images} images of {args.height}×{args.width} (labels too), batches of {args.batch_size}, MiT-B0 SegFormer at 512×512, "
          f"{torch.get_num_threads()} torch threads, {'default' if args.num_workers is None else args.num_workers} reading workers, device {device.type}, "
          f"median of {args.rounds} rounds")
    print(f"{'':<26}{'seconds':>9}{'images/s':>10}")
    print(f"{'forward passes only':<26}{forward:>9.2f}{args.images / forward:>10.2f}")
    print(f"{'eval loop (everything)':<26}{loop:>9.2f}{args.images / loop:>10.2f}")
    print("other stages, each timed alone on the same batches:")
    for stage, seconds in stages.items():
        print(f"  {stage:<38}{seconds:>7.2f} s  {seconds / forward:>6.1%} of the forward time")
    ratio = forward / loop
    print(f"eval throughput / forward throughput: {ratio:.2f} {'(goal ≥ 0.9 met)' if ratio >= 0.9 else '(goal ≥ 0.9 NOT met)'}")


if __name__ == "__main__":
    main()
