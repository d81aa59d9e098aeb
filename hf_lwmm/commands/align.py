"""Which tensors the models share, grouped by layer: shared, shape-mismatch, or only in some models.

examples:
  lwmm-hub align org/uda-a org/uda-b
  lwmm-hub align ./a ./b ./c --anchor ./b
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("align", help="report shared / shape-mismatch / only-in tensors by layer", description=__doc__)
    parser.add_argument("models", nargs="+", help="local folders or Hub repos org/name[@revision][:subfolder]")
    parser.add_argument("--anchor", help="the model that defines the output (default: the first)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pytorch_model.bin (local or from the Hub) with torch.load(weights_only=True)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.align import alignment_report
    from hf_lwmm.plan import plan_merge
    from hf_lwmm.recipe import MergeRecipe, RunOptions

    plan = plan_merge(MergeRecipe(models=args.models, anchor=args.anchor, method="isotropic"),
                      RunOptions(allow_pickle=args.allow_pickle), same_depths=False)
    print(alignment_report(plan.alignment))
    return 0
