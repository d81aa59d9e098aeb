"""Per layer, the fraction of shared parameters whose relative difference |a-b| / max(|a|, |b|, eps)
exceeds tau (the paper's Fig. 2), as a table, a plot and JSON.

example:
  lwmm-hub diff org/uda-a org/uda-b --tau 0.1 0.5 --plot diff.png --json diff.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: formats the plot is saved in, by file suffix
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def register(subparsers: argparse._SubParsersAction) -> None:
    from hf_lwmm.diff import DEFAULT_EPSILON, DEFAULT_TAUS

    parser = subparsers.add_parser("diff", help="per-layer fraction of parameters that differ by more than τ", description=__doc__)
    parser.add_argument("models", nargs=2, metavar="MODEL", help="two local folders or Hub repos org/name[@revision][:subfolder]")
    parser.add_argument("--tau", type=float, nargs="+", default=list(DEFAULT_TAUS),
                        help=f"relative-difference thresholds (default: {' '.join(map(str, DEFAULT_TAUS))})")
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON, help=f"floor of the denominator (default: {DEFAULT_EPSILON:g})")
    parser.add_argument("--plot", type=Path, help="save a plot (layer on x, fraction on y, one line per τ) to this PNG (or SVG, PDF)")
    parser.add_argument("--json", type=Path, help="write the per-layer counts and fractions to this JSON file")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pytorch_model.bin (local or from the Hub) with torch.load(weights_only=True)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.console import note
    from hf_lwmm.diff import discrepancy_plot, discrepancy_table, model_discrepancy
    from hf_lwmm.io.output import check_output_file
    from hf_lwmm.plan import plan_merge, with_weights
    from hf_lwmm.recipe import MergeRecipe, RunOptions

    if args.plot:
        check_output_file(args.plot, name="--plot", suffixes=PLOT_SUFFIXES)
    if args.json:
        check_output_file(args.json, name="--json")
    options = RunOptions(allow_pickle=args.allow_pickle)
    plan = with_weights(plan_merge(MergeRecipe(models=args.models, method="isotropic"), options), options)
    discrepancy = model_discrepancy(plan, taus=args.tau, epsilon=args.epsilon)
    print(discrepancy_table(discrepancy))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        lines = {f"τ = {tau:g}": discrepancy.fractions_at(tau) for tau in discrepancy.taus}
        discrepancy_plot(args.plot, lines, title=f"{discrepancy.labels[0]} vs {discrepancy.labels[1]}")
        note(f"plot → {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(discrepancy.to_dict(), indent=2) + "\n")
        note(f"results → {args.json}")
    return 0
