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
    parser.add_argument("--allow-pickle", action="store_true", help="read local pytorch_model.bin files")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.align import align, alignment_report
    from hf_lwmm.errors import LwmmError
    from hf_lwmm.io import open_weights
    from hf_lwmm.recipe import MergeRecipe
    from hf_lwmm.refs import resolve

    if len(args.models) < 2:
        raise LwmmError(f"need at least two models to align, got {len(args.models)}")
    anchor = MergeRecipe(models=args.models, anchor=args.anchor).anchor_index
    models = [resolve(model) for model in args.models]
    sources = [open_weights(m.folder, label=str(m.ref), allow_pickle=args.allow_pickle and m.ref.is_local) for m in models]
    print(alignment_report(align(sources, [m.model_type for m in models], anchor=anchor, same_depths=False)))
    return 0
