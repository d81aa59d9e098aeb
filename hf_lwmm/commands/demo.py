"""Build small source models and merge them with every method: offline, no token, no data.

examples:
  lwmm-hub demo
  lwmm-hub demo -o /tmp/lwmm-demo --overwrite --methods layerwise,isotropic
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="offline end-to-end demo on small built-in models", description=__doc__)
    parser.add_argument("--output", "-o", type=Path, default=Path("lwmm-demo"), help="work folder (default: ./lwmm-demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty work folder")
    parser.add_argument("--methods", type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
                        help="comma-separated merge methods to run, e.g. layerwise,isotropic (default: every method)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.console import note
    from hf_lwmm.demo import run_demo

    rows = run_demo(args.output, overwrite=args.overwrite, methods=args.methods)
    first = rows[0].result
    note(f"sources ({len(first.models)}; anchor {first.models[first.anchor].ref}):",
         *(f"  {model.ref}  labels={model.num_labels}" for model in first.models), "")
    header = f"{'method':<10} {'merged':>7} {'anchor':>7} {'layers':>6} {'agree':>7}  output / sha256"
    print(header)
    print("-" * len(header))
    for row in rows:
        result = row.result
        digest = next(iter(result.sha256.values()))[:16]
        print(f"{row.method:<10} {result.merged_tensors:>7} {result.anchor_tensors:>7} {len(result.layer_weights):>6} "
              f"{row.agreement:>7.1%}  {result.output_dir} ({digest}…)")
    note("\nmerged / anchor: tensors merged vs taken from the anchor; agree: pixels where the merge predicts the anchor's class.",
         "Each folder loads with AutoModelForSemanticSegmentation.from_pretrained and holds README.md (card), "
         "lwmm_recipe.yaml, and for layer-wise and Fisher merges the per-layer plot lwmm_weights.png.")
    return 0
