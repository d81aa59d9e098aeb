"""Mean IoU of the layer-wise merge over a grid of alpha (anchor weight in early layers) and start
layers (where it begins rising to 1), against the anchor alone: a table, sweep.json and sweep.png
(mean IoU against the start layer, one line per alpha).

example:
  lwmm-hub sweep org/uda-a org/uda-b --anchor org/uda-a --dataset ./dusk-val --alphas 0.25,0.5 --start-layers 0,4,8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_lwmm.commands.eval import add_data_arguments, evaluation_options, load_data
from hf_lwmm.errors import LwmmError

DEFAULT_OUTPUT = Path("lwmm-sweep")
DEFAULT_ALPHAS = "0.25,0.5,0.75"


def register(subparsers: argparse._SubParsersAction) -> None:
    from hf_lwmm.evaluation.sweep import DEFAULT_MODELS_PER_PASS, DEFAULT_START_COUNT

    parser = subparsers.add_parser("sweep", help="mIoU of layer-wise merges over α and the start layer", description=__doc__)
    parser.add_argument("models", nargs="+", help="local folders or Hub repos org/name[@revision][:subfolder]")
    add_data_arguments(parser, flag="--dataset", required=True)
    group = parser.add_argument_group("grid")
    group.add_argument("--anchor", help="the anchor of every merge (default: the first model)")
    group.add_argument("--alphas", default=DEFAULT_ALPHAS, help=f"comma-separated α values in [0, 1] (default: {DEFAULT_ALPHAS})")
    group.add_argument("--start-layers",
                       help=f"comma-separated start layers, indices or names like block.2.0 (default: {DEFAULT_START_COUNT} evenly spaced)")
    group.add_argument("--bn-stats", choices=("gaussian", "anchor", "linear"), help="how BatchNorm statistics merge (default: gaussian)")
    group.add_argument("--models-per-pass", type=int, default=DEFAULT_MODELS_PER_PASS,
                       help=f"merged models held at once; each pass reads the data once (default: {DEFAULT_MODELS_PER_PASS})")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where sweep.json and sweep.png go (default: ./{DEFAULT_OUTPUT})")
    parser.set_defaults(run=run)


def parse_alphas(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LwmmError(f"--alphas {text!r}: expected comma-separated numbers, e.g. 0.25,0.5") from None


def parse_start_layers(text: str | None) -> list[int | str] | None:
    """Comma-separated indices or names (each read by :func:`~hf_lwmm.schedules.resolve_start_layer`)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()] or None


def run(args: argparse.Namespace) -> int:
    import json

    from hf_lwmm.console import note
    from hf_lwmm.evaluation.sweep import sweep_layerwise, sweep_plot, sweep_table
    from hf_lwmm.io.output import check_output_dir

    if len(args.models) < 2:
        raise LwmmError(f"need at least two models to sweep merges of, got {len(args.models)}")
    check_output_dir(args.output_dir, name="--output-dir")  # before the evaluation, not after it
    result = sweep_layerwise(args.models, load_data(args), anchor=args.anchor or args.models[0], alphas=parse_alphas(args.alphas),
                             start_layers=parse_start_layers(args.start_layers),
                             merge_options={"bn_stats": args.bn_stats} if args.bn_stats else None,
                             evaluation=evaluation_options(args), models_per_pass=args.models_per_pass)
    print(sweep_table(result))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "sweep.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    sweep_plot(args.output_dir / "sweep.png", result)
    note(f"results → {args.output_dir / 'sweep.json'}, {args.output_dir / 'sweep.png'}")
    return 0
