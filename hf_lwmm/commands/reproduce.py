"""Merge again from the recorded recipe and compare the weights' sha256 with the published ones.

Every Hub source is pulled at the commit the original merge resolved; a local folder has no commit
to pin, so it is used as it is now. Exits 1 when the weights differ, naming the sources that changed.

examples:
  lwmm-hub reproduce me/segformer-merged
  lwmm-hub reproduce ./merged
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reproduce", help="re-run a merge from its lwmm_recipe.yaml and compare sha256",
                                   description=__doc__)
    parser.add_argument("target", metavar="REPO_OR_DIR",
                        help="a merged folder, or a Hub repo org/name[@revision][:subfolder] pushed by lwmm-hub")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.hub import reproduce

    reproduction = reproduce(args.target)
    print(reproduction.summary())
    return 0 if reproduction.matches else 1
