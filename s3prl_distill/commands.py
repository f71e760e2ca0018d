"""The core's subcommands (s3prl's downstream runner, upstream listing, profiling, export, audio lists) and what every
package's ``commands.py`` shares.

A package contributes subcommands with ``add_commands(subparsers)``: each registers its parser and its handler with
``set_defaults(handler=...)``; ``passthrough=True`` hands the handler every argument after the command's name
unparsed (s3prl's runner and ours parse their own), and ``own_logging=True`` leaves logging to it. Heavy imports
(torch, pydantic, s3prl) happen inside handlers, and an option's ``choices`` come from a module that imports none of
them (:mod:`s3prl_distill.options`), so ``--help`` of every command and every argument error stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List

from .options import EXPORT_FORMATS


def default_device() -> str:
    """``cuda`` where torch sees a GPU, else ``cpu``: the default of the ``--device`` options left at None."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def run_downstream(arguments: List[str]) -> None:
    """s3prl's ``run_downstream.py`` with ``arguments`` exactly as given (after the compat patches and our
    registration, which the start-up hook would also do)."""
    from . import register

    register()
    from s3prl import run_downstream as runner

    saved = sys.argv
    sys.argv = ["run_downstream.py", *arguments]
    try:
        runner.main()
    finally:
        sys.argv = saved


def list_upstreams(args: argparse.Namespace) -> None:
    from .registry import entries

    for name, function in sorted(entries().items()):
        summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
        print(f"{name:28s} {summary}")


def run_profile(args: argparse.Namespace) -> None:
    from .profiler import UpstreamSpec, format_table, profile_upstreams, specs_from_lists

    try:
        specs = specs_from_lists(args.upstream, args.ckpt, args.model_config)
        reference = UpstreamSpec(args.vs, args.vs_ckpt, args.vs_config) if args.vs else None
        result = profile_upstreams(specs, args.seconds, args.batch, args.threads, args.repeats, args.warmup,
                                   args.device, reference, memory=not args.no_memory, feature=args.feature or None,
                                   peak=args.peak, peak_seconds=args.peak_seconds)
    except ValueError as error:  # unknown upstream name, mismatched -k/-g lists, bad settings, unreadable checkpoint
        raise SystemExit(f"profile: {error}")
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"json: {args.json}")


def run_export(args: argparse.Namespace) -> None:
    from .formats.export import export_checkpoint

    print_json(export_checkpoint(Path(args.checkpoint), args.to, Path(args.output)))


def prepare_data(args: argparse.Namespace) -> None:
    from .audio_lists import write_length_csvs

    written = write_length_csvs(Path(args.audio_root), Path(args.output), args.sets, on_bad_file=args.on_bad_file)
    for name, path in written.items():
        print(f"{name}: {path}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The core's subcommands."""
    downstream = commands.add_parser(
        "downstream",
        help="run s3prl's downstream runner (run_downstream.py) with the remaining arguments unchanged",
        add_help=False,
    )
    downstream.set_defaults(handler=run_downstream, passthrough=True)

    export = commands.add_parser(
        "export", help="write a trained student in another layout: safetensors (no pickle; every *_local reads it), "
        "hf (a transformers directory: a stock HubertModel / WavLMModel, else our own class that AutoModel finds once "
        "s3prl-distill is installed), onnx (hidden states, dynamic batch and length), dphubert (the "
        "official DPHuBERT {config, state_dict} of a pruned dphubert/skill student), lightning (the official "
        "Lightning release + training YAML of a fithubert/armhubert/maskhubert/starhubert student)")
    export.add_argument("checkpoint", help="a student checkpoint of ours (e.g. pruned.ckpt from prune, a "
                        "states-<step>.ckpt, or its run directory: the latest step) or s3prl's distiller format")
    export.add_argument("output", help="the file to write (--to hf: the directory; --to lightning: also the YAML "
                        "beside it, OUTPUT with suffix .yaml)")
    export.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="the layout to write")
    export.set_defaults(handler=run_export)

    prepare = commands.add_parser(
        "prepare-data", help="write s3prl len_for_bucket CSVs (file_path, length) for an audio tree"
    )
    prepare.add_argument("audio_root", help="e.g. /data/LibriSpeech, or any folder of .flac/.wav files")
    prepare.add_argument("-o", "--output", default="data/len_for_bucket", help="where the <set>.csv files go")
    prepare.add_argument("--sets", nargs="+", help="subfolders to index (default: every subfolder with audio)")
    prepare.add_argument("--on-bad-file", choices=["stop", "skip"], default="stop",
                         help="a file that is unreadable or not 16 kHz mono: stop (default) or skip with a warning")
    prepare.set_defaults(handler=prepare_data)

    profile = commands.add_parser(
        "profile", help="parameters, MACs, latency / real-time factor and peak memory of s3prl upstreams (--vs: ratios)"
    )
    profile.add_argument("-u", "--upstream", required=True, nargs="+", action="extend",
                         help="s3prl upstream name(s), ours or s3prl's (repeatable)")
    profile.add_argument("-k", "--ckpt", nargs="+", action="extend",
                         help="checkpoint per upstream, in -u order ('-' for one that takes none)")
    profile.add_argument("-g", "--model-config", nargs="+", action="extend",
                         help="upstream config per upstream, in -u order ('-' for none)")
    profile.add_argument("--vs", help="reference upstream (e.g. the teacher): ratios to it, measured in the same run")
    profile.add_argument("--vs-ckpt", help="the reference's checkpoint")
    profile.add_argument("--vs-config", help="the reference's config (-g)")
    profile.add_argument("--seconds", type=float, nargs="+", default=[10.0], help="audio lengths (default: 10)")
    profile.add_argument("--batch", type=int, default=1, help="utterances per timed forward (MACs: always 1)")
    profile.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's)")
    profile.add_argument("--repeats", type=int, default=5, help="timed forwards; the median is reported")
    profile.add_argument("--warmup", type=int, default=2, help="untimed forwards before timing")
    profile.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    profile.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    profile.add_argument("--peak", action="store_true",
                         help="also measure the fp32 GEMM rate (before and after the forwards) and give each "
                              "upstream's fraction of it (achieved FLOP/s / GEMM FLOP/s)")
    profile.add_argument("--peak-seconds", type=float, default=2.0,
                         help="seconds of GEMMs for --peak, before and after the forwards each (default: 2)")
    profile.add_argument("--feature", default="hidden_states",
                         help="the output read after each forward, as s3prl's -s (default: hidden_states; '' for the "
                              "forward alone); an upstream may compute some outputs only when they are read")
    profile.add_argument("--json", help="write every figure and the settings to this JSON file")
    profile.set_defaults(handler=run_profile)

    upstreams = commands.add_parser("upstreams", help="list the upstream names this package registers in s3prl")
    upstreams.set_defaults(handler=list_upstreams)
