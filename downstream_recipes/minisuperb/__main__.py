"""Command line: ``python -m s3prl_distill.downstream_recipes.minisuperb OUTPUT [--size small] [--seed 0] ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from .generate import TASKS, generate_minisuperb
from .sizes import SIZES


def main(argv: Optional[List[str]] = None) -> int:
    """Generate the corpora; writes the per-task config paths as JSON to standard output."""
    parser = argparse.ArgumentParser(prog="python -m s3prl_distill.downstream_recipes.minisuperb",
                                     description="Generate a seeded, espeak-ng-synthesised mini-SUPERB.")
    parser.add_argument("output", type=Path, help="folder to write into")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    parser.add_argument("--voices", nargs="+", help="espeak-ng voices (default: the built-in English ones)")
    parser.add_argument("--variants", nargs="+", help="espeak-ng variants (default: m1-m8, f1-f5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = generate_minisuperb(args.output, tasks=args.tasks, size=args.size, seed=args.seed, jobs=args.jobs,
                                progress=not args.no_progress, voices=args.voices, variants=args.variants)
    # The paths are the program's result (to feed into configs), so they go to stdout rather than the log.
    json.dump({task: {key: str(path) for key, path in entries.items()} for task, entries in paths.items()},
              sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
