"""Convert an mmsegmentation checkpoint (SegFormer, DAFormer, HRDA, MIC) into a stock transformers SegFormer
folder that merges like any Hub model.

CHECKPOINT is a local .pth file or org/name[@revision]:path/to/file.pth on the Hub; it is read with
torch.load(weights_only=True) only. A SegFormer head becomes a SegformerForSemanticSegmentation; any other
head has no stock transformers class, so only the encoder is written (a bare SegformerModel) and what was
left out is listed.

examples:
  lwmm-hub convert ./mic_gta2cs/latest.pth -o ./mic-converted
  lwmm-hub convert org/uda-models:Segmentation_Models/latest.pth --weights ema_model -o ./teacher
  lwmm-hub convert ./daformer.pth --num-attention-heads 1,2,5,8 --id2label classes.json -o ./daf --push-to-hub me/daf
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert an mmsegmentation checkpoint into a transformers SegFormer folder",
                                   description=__doc__)
    parser.add_argument("checkpoint", help="a .pth file, or org/name[@revision]:path/to/file.pth on the Hub")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write (must not exist or be empty)")
    parser.add_argument("--weights", choices=("model", "ema_model"),
                        help="which model of a UDA checkpoint: the student (model, default) or its EMA teacher")
    parser.add_argument("--num-attention-heads", type=_int_list, metavar="N,N,N,N",
                        help="attention heads per stage (not stored in checkpoints; default: MiT's 1,2,5,8)")
    parser.add_argument("--id2label", type=Path, metavar="FILE",
                        help="class names (JSON list or {id: name}) when the checkpoint's meta has no CLASSES")
    parser.add_argument("--push-to-hub", metavar="REPO", help="push the converted folder to this Hub repo in one commit")
    parser.add_argument("--private", action="store_true", help="create the repo private (with --push-to-hub)")
    parser.set_defaults(run=run)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.convert import convert_checkpoint

    if args.push_to_hub:  # checked before the conversion: a bad repo id or a missing token should not cost one
        from hf_lwmm.errors import LwmmError
        from hf_lwmm.hub import require_token
        from hf_lwmm.refs import is_repo_id

        if not is_repo_id(args.push_to_hub):
            raise LwmmError(f"--push-to-hub {args.push_to_hub!r}: expected a Hub repo id 'namespace/name'")
        require_token()
    result = convert_checkpoint(args.checkpoint, args.output, weights=args.weights, num_attention_heads=args.num_attention_heads,
                                id2label_file=args.id2label, hub_repo=args.push_to_hub)
    print(result.summary())
    if args.push_to_hub:
        from hf_lwmm.hub import PushOptions, push_folder

        print(push_folder(result.output_dir, args.push_to_hub, PushOptions(private=args.private)).summary())
    return 0
