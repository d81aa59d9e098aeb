"""``lwmm-hub reproduce REPO_OR_DIR``: merge again from the recorded recipe and compare the weights' sha256.

Every Hub source is pulled at the commit the original merge resolved; exits 1 when the weights differ.
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
