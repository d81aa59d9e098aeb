#!/usr/bin/env python
"""Push a built zoo to the Hub: one repo per model (card with training recipe and mIoU), one collection.

    python scripts/push_zoo.py --zoo zoo --namespace my-org [--prefix camvid-daydusk-] [--collection TITLE] [--private]

Needs a token with write access (HF_TOKEN or `hf auth login`).  The code is hf_lwmm/zoo/publish.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_lwmm.errors import LwmmError
from hf_lwmm.zoo.publish import DEFAULT_COLLECTION, DEFAULT_PREFIX, publish_zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, required=True, help="zoo folder with zoo.json (scripts/build_zoo.py --out)")
    parser.add_argument("--namespace", required=True, help="Hub user or organisation the repos go to")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"repo name prefix (default: {DEFAULT_PREFIX})")
    parser.add_argument("--collection", default=DEFAULT_COLLECTION, help=f"collection title (default: {DEFAULT_COLLECTION!r}; '' for none)")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    args = parser.parse_args(argv)
    try:
        published = publish_zoo(args.zoo, namespace=args.namespace, prefix=args.prefix, collection=args.collection or None,
                                private=args.private)
    except LwmmError as err:
        print(f"push_zoo: error: {err}", file=sys.stderr)
        return 2
    for model in published:
        print(f"{model.name:<24} → {model.repo_id} ({model.commit[:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
