"""s3prl-distill: distil speech SSL students and evaluate them with s3prl.

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
    commands.add_parser(
        "pretrain", help="distillation pretraining: -g CONFIG -n NAME [-p EXPROOT] [-o OVERRIDES] [-e CKPT]",
        add_help=False,
    )
    prepare = commands.add_parser(
        "prepare-data", help="write s3prl len_for_bucket CSVs (file_path, length) for an audio tree"
    )
    prepare.add_argument("audio_root", help="e.g. /data/LibriSpeech, or any folder of .flac/.wav files")
    prepare.add_argument("-o", "--output", default="data/len_for_bucket", help="where the <set>.csv files go")
    prepare.add_argument("--sets", nargs="+", help="subfolders to index (default: every subfolder with audio)")
    prepare.add_argument("--on-bad-file", choices=["stop", "skip"], default="stop",
                         help="a file that is unreadable or not 16 kHz mono: stop (default) or skip with a warning")
    link = commands.add_parser(
        "link-pretrain", help="make our recipes visible to run_pretrain.py of an s3prl git checkout"
    )
    link.add_argument("checkout", help="the s3prl checkout (its root, or the s3prl/ folder holding run_pretrain.py)")
    commands.add_parser("upstreams", help="list the upstream names this package registers in s3prl")
    quick = commands.add_parser(
        "quickstart", help="smallest end-to-end run: a DistilHuBERT-shaped checkpoint through s3prl's ER runner"
    )
    quick.add_argument("--workdir", default="result/quickstart", help="where everything is written")
    quick.add_argument("--steps", type=int, default=40, help="downstream training steps")
    return parser


def prepare_data(audio_root: str, output: str, sets: Optional[List[str]], on_bad_file: str) -> None:
    from .pretrain.data import write_length_csvs

    written = write_length_csvs(Path(audio_root), Path(output), sets, on_bad_file=on_bad_file)
    for name, path in written.items():
        print(f"{name}: {path}")


def link_pretrain(checkout: str) -> None:
    """Make our pretrain recipes visible to s3prl's run_pretrain.py, which lists ``pretrain/`` in its cwd."""
    import importlib

    from .pretrain.task import METHODS

    root = Path(checkout).expanduser().resolve()
    candidates = [root / "s3prl" / "pretrain", root / "pretrain"]
    target = next((c for c in candidates if c.is_dir() and (c.parent / "run_pretrain.py").is_file()), None)
    if target is None:
        raise SystemExit(f"link-pretrain: {root} is not an s3prl checkout (no s3prl/run_pretrain.py beside pretrain/)")
    for method in METHODS:
        source = Path(importlib.import_module(f"s3prl_distill.pretrain.{method}").__file__).parent
        link = target / method
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise SystemExit(f"link-pretrain: {link} exists and is not a link made by this command; not replacing it")
        link.symlink_to(source, target_is_directory=True)
        print(f"{link} -> {source}")
    print(f"now, in {target.parent}: python3 run_pretrain.py -u <method> -g pretrain/<method>/config_model.yaml -n NAME")


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "downstream" / "pretrain" belongs to that runner's parser, --help included.
    if argv and argv[0] == "downstream":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_downstream(argv[1:])
        return
    if argv and argv[0] == "pretrain":
        from .pretrain.runner import main as pretrain_main

        pretrain_main(argv[1:])
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "upstreams":
        list_upstreams()
    elif args.command == "quickstart":
        run_quickstart(args.workdir, args.steps)
    elif args.command == "prepare-data":
        prepare_data(args.audio_root, args.output, args.sets, args.on_bad_file)
    elif args.command == "link-pretrain":
        link_pretrain(args.checkout)


if __name__ == "__main__":
    main()
