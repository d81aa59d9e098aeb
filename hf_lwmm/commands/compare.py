"""Layer-wise merging against single models, isotropic and Fisher merges and the output ensemble:
mean IoU, difference to the anchor, and relative inference cost, as tables, compare.json and compare.png.

example:
  lwmm-hub compare org/uda-a org/uda-b org/uda-c --dataset ./dusk-val --fisher-data ./dusk-train-images
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_lwmm.commands.eval import add_data_arguments, evaluation_options, load_data
from hf_lwmm.methods.base import parameter_help
from hf_lwmm.methods.layerwise import LayerwiseMerge

DEFAULT_OUTPUT = Path("lwmm-compare")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="compare layer-wise merging with its baselines on a dataset", description=__doc__)
    parser.add_argument("models", nargs="+", help="local folders or Hub repos org/name[@revision][:subfolder]")
    add_data_arguments(parser, flag="--dataset", required=True)
    group = parser.add_argument_group("merges")
    group.add_argument("--anchor", help="anchor of the merges (default: the best single model)")
    group.add_argument("--alpha", type=float, help=f"layer-wise: {parameter_help(LayerwiseMerge, 'alpha')}")
    group.add_argument("--start-layer", help=f"layer-wise: {parameter_help(LayerwiseMerge, 'start_layer')}")
    group.add_argument("--fisher-data", help="unlabelled images for the Fisher merge (without it, no Fisher row)")
    group.add_argument("--fisher-samples", type=int, help="images to estimate the Fisher on (default: 32)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where compare.json and compare.png go (default: ./{DEFAULT_OUTPUT})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.console import note
    from hf_lwmm.evaluation.compare import compare_models
    from hf_lwmm.evaluation.report import bar_plot, comparison_table, per_class_table, write_json
    from hf_lwmm.io.output import check_output_dir

    check_output_dir(args.output_dir, name="--output-dir")  # before the evaluation, not after it
    layerwise = {"alpha": args.alpha, "start_layer": args.start_layer}
    fisher = {"fisher_data": args.fisher_data, "fisher_samples": args.fisher_samples} if args.fisher_data else {}
    comparison = compare_models(args.models, load_data(args), anchor=args.anchor,
                                fisher_options={name: value for name, value in fisher.items() if value is not None},
                                layerwise_options={name: value for name, value in layerwise.items() if value is not None},
                                evaluation=evaluation_options(args))
    report = comparison.report
    print(per_class_table(report))
    note("", f"anchor: {comparison.anchor}" + ("" if args.fisher_data else "  (no --fisher-data: Fisher merge skipped)"))
    print(comparison_table(report, anchor=comparison.anchor))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "compare.json", report, anchor=comparison.anchor, recipes=comparison.recipes)
    bar_plot(args.output_dir / "compare.png", report, anchor=comparison.anchor)
    note(f"results → {args.output_dir / 'compare.json'}, {args.output_dir / 'compare.png'}")
    return 0
