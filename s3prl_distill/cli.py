"""The ``s3prl-distill`` command.

``s3prl-distill downstream ARGS...`` runs s3prl's own downstream runner with ``ARGS`` passed through unchanged
(after the compat patches and our registration, which the start-up hook would also do).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional


def run_downstream(arguments: List[str]) -> None:
    """s3prl's ``run_downstream.py`` with ``arguments`` exactly as given."""
    from . import register

    register()
    from s3prl import run_downstream as runner

    saved = sys.argv
    sys.argv = ["run_downstream.py", *arguments]
    try:
        runner.main()
    finally:
        sys.argv = saved


def list_upstreams() -> None:
    from .registry import entries

    for name, function in sorted(entries().items()):
        summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
        print(f"{name:28s} {summary}")


def run_quickstart(workdir: str, steps: int) -> None:
    import json

    from .downstream_recipes.quickstart import quickstart

    result = quickstart(Path(workdir), steps=steps)
    print(json.dumps(result, indent=2))
    print(
        f"\nER (toy) test accuracy with {result['upstream']}: {result['test_accuracy']:.3f} "
        f"(chance {result['chance']:.2f}); outputs in {workdir}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3prl-distill", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "downstream",
        help="run s3prl's downstream runner (run_downstream.py) with the remaining arguments unchanged",
        add_help=False,
    )
    commands.add_parser("upstreams", help="list the upstream names this package registers in s3prl")
    quick = commands.add_parser(
        "quickstart", help="smallest end-to-end run: a DistilHuBERT-shaped checkpoint through s3prl's ER runner"
    )
    quick.add_argument("--workdir", default="result/quickstart", help="where everything is written")
    quick.add_argument("--steps", type=int, default=40, help="downstream training steps")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Everything after "downstream" belongs to s3prl's parser, --help included.
    if argv and argv[0] == "downstream":
        run_downstream(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "upstreams":
        list_upstreams()
    elif args.command == "quickstart":
        run_quickstart(args.workdir, args.steps)


if __name__ == "__main__":
    main()
