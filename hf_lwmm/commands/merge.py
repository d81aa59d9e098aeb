"""Merge models into a stock transformers folder (config, safetensors weights, card, recipe).

Layer-wise by default: every shared layer averages the models, with the anchor's weight rising from
--alpha in early layers to 1 in the deepest ones; heads and tensors the models do not share come from
the anchor.

examples:
  lwmm-hub merge org/uda-a org/uda-b org/uda-c --anchor org/uda-a -o merged
  lwmm-hub merge ./a ./b --method isotropic -o merged-iso --push-to-hub me/merged-iso
  lwmm-hub merge --recipe merged/lwmm_recipe.yaml --alpha 0.5 -o merged-alpha05
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("merge", help="merge models layer-wise (or with a baseline method)", description=__doc__)
    parser.add_argument("models", nargs="*", help="local folders or Hub repos org/name[@revision][:subfolder]")
    parser.add_argument("--output", "-o", type=Path, help="output folder (default: ./merged)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--recipe", type=Path, help="run the merge described by a recipe file (flags override it)")
    add_recipe_arguments(parser)
    from hf_lwmm.commands.push import add_push_options

    add_push_options(parser, with_repo_flag=True)
    from hf_lwmm.commands.eval import add_data_arguments

    add_data_arguments(parser, flag="--eval-dataset", required=False)
    parser.set_defaults(run=run)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for every :class:`~hf_lwmm.recipe.MergeRecipe` field; ``None`` means "not given"."""
    from hf_lwmm.methods import METHODS
    from hf_lwmm.plan import SCHEDULES
    from hf_lwmm.recipe import BN_STATS_MODES, OUTPUT_DTYPES

    group = parser.add_argument_group("recipe")
    group.add_argument("--anchor", help="the model whose heads and deep layers win (default: the first)")
    group.add_argument("--method", choices=sorted(METHODS), help="merge method (default: layerwise)")
    group.add_argument("--alpha", type=float, help="anchor weight in early layers (default: 1/M)")
    group.add_argument("--start-layer", help="layer index or name where the anchor weight starts rising (default: L//2)")
    group.add_argument("--schedule", choices=sorted(SCHEDULES), help="how the anchor weight rises (default: linear)")
    group.add_argument("--weights", type=_float_list, help="comma-separated model weights for --method linear")
    group.add_argument("--bn-stats", choices=BN_STATS_MODES, help="BatchNorm running statistics (default: gaussian)")
    group.add_argument("--dtype", choices=OUTPUT_DTYPES, help="output dtype of floating tensors (default: the anchor's)")
    group.add_argument("--device", help="where the merge math runs: auto (default), cpu, cuda, …")
    group.add_argument("--max-shard-size", help="largest output weights file (default: 5GB)")
    group.add_argument("--allow-pickle", action="store_true", default=None,
                       help="load local pytorch_model.bin files with torch.load(weights_only=True)")
    group.add_argument("--fisher-data", help="--method fisher: unlabelled images (a dataset, like --dataset of eval)")
    group.add_argument("--fisher-samples", type=int, help="--method fisher: images to estimate the Fisher on (default: 32)")


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def recipe_from_args(args: argparse.Namespace):
    """A recipe from ``--recipe`` (if any) overridden by the flags given on the command line."""
    from hf_lwmm.errors import LwmmError
    from hf_lwmm.recipe import MergeRecipe

    recipe = MergeRecipe.load(args.recipe) if args.recipe else MergeRecipe(models=[])
    if args.models:
        recipe.models = list(args.models)
    overrides = {"anchor": args.anchor, "method": args.method, "alpha": args.alpha, "schedule": args.schedule,
                 "weights": args.weights, "bn_stats": args.bn_stats, "dtype": args.dtype, "device": args.device,
                 "max_shard_size": args.max_shard_size, "allow_pickle": args.allow_pickle}
    if args.start_layer is not None:
        overrides["start_layer"] = int(args.start_layer) if args.start_layer.lstrip("-").isdigit() else args.start_layer
    for name, value in overrides.items():
        if value is not None:
            setattr(recipe, name, value)
    fisher_options = {"fisher_data": args.fisher_data, "fisher_samples": args.fisher_samples}
    recipe.method_options.update({name: value for name, value in fisher_options.items() if value is not None})
    if not recipe.models:
        raise LwmmError("no models given (pass two or more model references, or --recipe FILE)")
    return recipe


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.merge import merge

    recipe = recipe_from_args(args)
    output = args.output or Path("merged")
    if args.push_to_hub:
        from hf_lwmm.commands.push import push_options
        from hf_lwmm.hub import check_push_target

        check_push_target(args.push_to_hub, push_options(args))  # a bad repo, token or branch should not cost a merge
    from hf_lwmm.commands.eval import evaluation_options, load_data

    eval_data = load_data(args) if args.dataset else None  # before the merge: bad data should not cost a merge
    result = merge(recipe, output, overwrite=args.overwrite, hub_repo=args.push_to_hub)
    print(summary(result))
    if eval_data is not None:
        from hf_lwmm.evaluation.card_results import record_evaluation
        from hf_lwmm.evaluation.report import per_class_table

        print(per_class_table(record_evaluation(result, eval_data, **evaluation_options(args))))
    if args.push_to_hub:
        from hf_lwmm.hub import push_folder

        print(push_folder(result.output_dir, args.push_to_hub, push_options(args)).summary())
    return 0


def summary(result) -> str:
    """A few lines on what was merged, for the terminal."""
    labels = result.alignment.labels
    lines = [
        f"merged {len(labels)} models with {result.recipe.method} → {result.output_dir}",
        f"  anchor: {labels[result.anchor]}",
        f"  tensors: {result.merged_tensors} merged, {result.anchor_tensors} from the anchor; {len(result.layer_weights)} shared layers",
    ]
    lines += [f"  {name}  sha256 {digest}" for name, digest in result.sha256.items()]
    return "\n".join(lines)
