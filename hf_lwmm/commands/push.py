"""Upload a merged folder to the Hub in one commit (also the retry of a failed push).

examples:
  lwmm-hub push merged me/segformer-merged
  lwmm-hub push merged me/segformer-merged --private --collection "me/Merged segmenters"
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="push a merged folder to the Hub in one commit", description=__doc__)
    parser.add_argument("folder", type=Path, help="a folder written by lwmm-hub merge")
    parser.add_argument("repo", help="Hub repo id namespace/name (created when missing)")
    add_push_options(parser)
    parser.set_defaults(run=run)


def add_push_options(parser: argparse.ArgumentParser, *, with_repo_flag: bool = False) -> None:
    """Flags shared by ``push`` and ``merge`` (which also gets ``--push-to-hub REPO``)."""
    group = parser.add_argument_group("Hub")
    if with_repo_flag:
        group.add_argument("--push-to-hub", metavar="REPO", help="push the merged folder to this Hub repo in one commit")
    group.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    group.add_argument("--revision", help="branch to commit to (default: main); a tag is refused")
    group.add_argument("--create-branch", action="store_true", help="create the --revision branch from main when missing")
    group.add_argument("--commit-message", help="commit title (default: names the method and the number of models)")
    group.add_argument("--collection", metavar="SLUG_OR_TITLE",
                       help="add the repo to this collection: a slug, 'namespace/Title' or a title (created when missing)")


def push_options(args: argparse.Namespace):
    from hf_lwmm.hub import PushOptions

    return PushOptions(private=args.private, revision=args.revision, create_branch=args.create_branch,
                       commit_message=args.commit_message, collection=args.collection)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.hub import push_folder

    print(push_folder(args.folder, args.repo, push_options(args)).summary())
    return 0
