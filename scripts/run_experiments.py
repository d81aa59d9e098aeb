#!/usr/bin/env python
"""The paper's experiments in miniature on the CamVid day→dusk zoo (built by ``scripts/build_zoo.py``).

    python scripts/run_experiments.py --zoo zoo --data ../shared/data/camvid-daydusk --out results/day-to-dusk \\
        [--test-dir DIR] [--device auto|cpu|cuda]

Writes Markdown + JSON tables and PNG plots into --out and summarises them in results.md: the zoo
ranked on dusk/val, Fig. 5 sweeps for every merge size (and the settings chosen from them), Table 2
(best k merged), Table 3 (every pair), Table 4 (other classes / head widths), Fig. 3 (checkpoints) and
Fig. 2 (per-layer discrepancy).  Every score carries a 95 % bootstrap interval over images.  The code
is hf_lwmm/experiments/.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning on cores shared with other processes (see build_zoo.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from hf_lwmm.console import Verbosity, configure  # noqa: E402
from hf_lwmm.errors import LwmmError  # noqa: E402
from hf_lwmm.experiments.run import ExperimentOptions, run_experiments  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, required=True, help="zoo folder with zoo.json (scripts/build_zoo.py --out)")
    parser.add_argument("--data", type=Path, required=True, help="camvid-daydusk folder: dusk/val (labelled), dusk/train (unlabelled)")
    parser.add_argument("--test-dir", type=Path, help="held-out images/ + labels/ folder: every final table is computed there too")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: ./results)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where merges and evaluation run")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per evaluation batch (default: 4)")
    parser.add_argument("--fisher-samples", type=int, default=32, help="dusk/train images the Fisher is estimated on (default: 32)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval (default: 2000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (even on a terminal)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    configure(Verbosity.QUIET if args.quiet else Verbosity.NORMAL)  # the libraries' own bars and logs would drown the tables
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the evaluation runs under accelerate, which would pick a GPU
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("run_experiments: error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/run_experiments.py", *(sys.argv[1:] if argv is None else argv)])
    options = ExperimentOptions(zoo=args.zoo, data=args.data, out=args.out, test_dir=args.test_dir, device=args.device,
                                batch_size=args.batch_size, fisher_samples=args.fisher_samples, resamples=args.resamples,
                                progress=not args.quiet, command=command)
    try:
        run_experiments(options)
    except LwmmError as err:
        print(f"run_experiments: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
