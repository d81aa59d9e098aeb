"""Mean IoU of each model (and of their output ensemble) on a segmentation dataset.

examples:
  lwmm-hub eval merged org/uda-a --dataset ./dusk-val
  lwmm-hub eval org/uda-a org/uda-b --ensemble --dataset org/cityscapes-val@main --split validation --max-samples 100
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="mean IoU of models (and their output ensemble) on a dataset", description=__doc__)
    parser.add_argument("models", nargs="+", help="local folders or Hub repos org/name[@revision][:subfolder]")
    add_data_arguments(parser, flag="--dataset", required=True)
    parser.add_argument("--ensemble", action="store_true", help="also evaluate the mean-softmax ensemble of all models")
    parser.add_argument("--output-json", type=Path, help="write the results to this JSON file")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load local pytorch_model.bin files (torch.load with weights_only=True)")
    parser.set_defaults(run=run)


def add_data_arguments(parser: argparse.ArgumentParser, *, flag: str, required: bool) -> None:
    """Flags shared by every command that evaluates (eval, compare, merge --eval-dataset)."""
    group = parser.add_argument_group("evaluation data")
    group.add_argument(flag, dest="dataset", required=required, metavar="DATA",
                       help="Hub dataset id[@revision], a local datasets folder, or a folder with images/ + labels/")
    group.add_argument("--split", help="dataset split (default: the only one, else validation)")
    group.add_argument("--image-column", help="image column of a datasets table (default: image, pixel_values or img)")
    group.add_argument("--label-column", help="label column of a datasets table (default: label, annotation, semantic_map, …)")
    group.add_argument("--label-map", type=Path, help="JSON {model class: dataset class or null} for models with other classes")
    group.add_argument("--ignore-index", type=int, help="label value of void pixels (default: classes.json's, else 255)")
    group.add_argument("--batch-size", type=int, default=4, help="images per batch (default: 4)")
    group.add_argument("--max-samples", type=int, help="evaluate only the first N images")
    group.add_argument("--num-workers", type=int, help="processes reading images while the models run "
                       "(default: 0 on CPU, where they would compete for the same cores; else up to 4)")
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="autocast the forward passes")


def load_data(args: argparse.Namespace):
    """The evaluation data named by :func:`add_data_arguments`' flags."""
    from hf_lwmm.evaluation.data import load_segmentation_data

    data = load_segmentation_data(args.dataset, split=args.split, image_column=args.image_column,
                                  label_column=args.label_column, max_samples=args.max_samples)
    if args.ignore_index is not None:
        data.ignore_index = args.ignore_index
    return data


def evaluation_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`~hf_lwmm.evaluation.runner.evaluate_predictors` from the flags."""
    from hf_lwmm.evaluation.labels import load_label_map

    return {"label_map": load_label_map(args.label_map) if args.label_map else None, "batch_size": args.batch_size,
            "mixed_precision": args.mixed_precision, "num_workers": args.num_workers}


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.console import note
    from hf_lwmm.evaluation.report import per_class_table, write_json
    from hf_lwmm.evaluation.runner import Predictor, evaluate_predictors
    from hf_lwmm.io import open_weights
    from hf_lwmm.io.output import check_output_file
    from hf_lwmm.refs import resolve

    if args.output_json:
        check_output_file(args.output_json, name="--output-json")  # before the evaluation, not after it
    resolved = [resolve(name) for name in args.models]
    for model in resolved:  # one line for corrupt weights or an unconsented pickle, before transformers reads them
        open_weights(model.folder, label=str(model.ref), allow_pickle=args.allow_pickle and model.ref.is_local)
    models = [(name, model.folder) for name, model in zip(args.models, resolved)]
    predictors = [Predictor(name, (index,)) for index, name in enumerate(args.models)]
    if args.ensemble:
        predictors.append(Predictor(f"ensemble of {len(models)}", tuple(range(len(models)))))
    report = evaluate_predictors(models, predictors, load_data(args), **evaluation_options(args))
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch` every process holds the same gathered report
        return 0
    print(per_class_table(report))
    if args.output_json:
        write_json(args.output_json, report)
        note(f"results → {args.output_json}")
    return 0
