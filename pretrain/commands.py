"""The pretrain package's subcommands: distillation runs, the teacher cache, DPHuBERT's pruning, SKILL's layer
grouping, the demo's HuBERT teacher and our recipes under s3prl's ``run_pretrain.py``. Registered into the
``s3prl-distill`` command line by ``add_commands`` (see :mod:`s3prl_distill.commands`); heavy imports stay inside the
handlers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List

from s3prl_distill.commands import default_device, print_json
from s3prl_distill.errors import UserError
from s3prl_distill.options import LAYER_ZERO_CHOICES, SAVE_FORMATS

from .dphubert.options import LINKAGES, MEASURES

logger = logging.getLogger(__name__)

SIMILARITY_OUTPUTS = ("skill_groups.yaml", "groups.json", "similarity.npy", "similarity.csv", "layer_similarity.png")


def run_pretrain(arguments: List[str]) -> None:
    """``s3prl-distill pretrain ARGS``: the runner parses its own arguments (``--help`` included)."""
    from .runner import main

    main(arguments)


def cache_teacher(args: argparse.Namespace) -> None:
    from .config import load_config
    from .follow_teacher import fit_to_teacher, following_summary
    from .teacher_cache import build_teacher_cache

    written = load_config(args.config, args.override)
    config = fit_to_teacher(written)  # the target layers the run will read
    if config is not written:
        logger.info("%s", following_summary(written, config))
    output = build_teacher_cache(config, Path(args.output), args.batch_size,
                                 args.device or default_device())
    print(f"teacher cache written to {output}; train from it with -o config.data.teacher_cache={output}")


def prune(args: argparse.Namespace) -> None:
    from .dphubert.prune import prune_checkpoint

    print_json(prune_checkpoint(Path(args.checkpoint), Path(args.output), args.final_steps, args.student_format))


def hubert_teacher(args: argparse.Namespace) -> None:
    from s3prl_distill.audio_lists import read_length_csvs

    from .hubert_teacher import HubertTeacherConfig, train_hubert_teacher

    csvs = [Path(c) for c in args.csv]
    items = [item for c in csvs for item in read_length_csvs(Path(args.data_root), c.parent, [c.stem])]
    config = HubertTeacherConfig(steps=args.steps, clusters=args.clusters, seed=args.seed)
    print(train_hubert_teacher(items, Path(args.output), config))


def link_pretrain(args: argparse.Namespace) -> None:
    """Our recipes into s3prl's ``run_pretrain.py`` (see :mod:`.s3prl_link`)."""
    from .s3prl_link import link_pretrain as link

    try:
        folders = link(Path(args.checkout))
    except UserError as error:
        raise SystemExit(f"link-pretrain: {error}")
    for folder in folders:
        print(f"{folder}: run_pretrain.py -u {folder.name} (config_model.yaml, config_runner.yaml generated from "
              f"{(folder / 'config.yaml').resolve()})")
    print(f"now, in {folders[0].parent.parent if folders else args.checkout}: python3 run_pretrain.py -u <folder> "
          f"-n NAME [-g pretrain/<folder>/config_<variant>.yaml] (a method without a folder of its own runs in its "
          f"recipe's: skill as -u dphubert -g pretrain/dphubert/config_skill.yaml)")


def layer_similarity(args: argparse.Namespace) -> None:
    """SKILL's teacher-layer grouping (see :mod:`.dphubert.layer_similarity`)."""
    from .config import TeacherConfig
    from .dphubert.layer_similarity import analyse_layers, find_audio

    if args.ckpt and "://" not in args.ckpt and not Path(args.ckpt).expanduser().exists():
        raise SystemExit(f"layer-similarity: --ckpt {args.ckpt} does not exist")
    try:
        files = find_audio(Path(args.data))
        analyse_layers(
            TeacherConfig(name=args.teacher, ckpt=args.ckpt), files, Path(args.output), utterances=args.utterances,
            measure=args.measure, linkage=args.linkage, groups=args.groups, distance_threshold=args.distance_threshold,
            exclude_layer0=args.exclude_layer0, contiguous=args.contiguous, max_seconds=args.max_seconds,
            max_frames=args.max_frames, device=args.device, data=args.data, layer_zero=args.layer_zero,
        )
    except ValueError as error:  # bad audio or arguments, unknown teacher, unreadable checkpoint
        raise SystemExit(f"layer-similarity: {error}")
    for name in SIMILARITY_OUTPUTS:
        print(Path(args.output) / name)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The pretrain package's subcommands."""
    pretrain = commands.add_parser(
        "pretrain",
        help="distillation pretraining: -g CONFIG -n NAME [-p EXPROOT] [-o OVERRIDES] [-e CKPT] [--overwrite]",
        add_help=False,
    )
    pretrain.set_defaults(handler=run_pretrain, passthrough=True, own_logging=True)

    cache = commands.add_parser(
        "cache-teacher", help="run a pretrain config's teacher once over its data and store the target layers"
    )
    cache.add_argument("-g", "--config", required=True, help="the pretrain config (its teacher, method and data)")
    cache.add_argument("-o", "--override", help="config overrides, as for pretrain")
    cache.add_argument("--output", required=True, help="cache directory to write; train with "
                       "-o config.data.teacher_cache=DIR")
    cache.add_argument("--batch-size", type=int, default=8, help="windows per teacher forward")
    cache.add_argument("--device", help="where the teacher runs: cpu, cuda, cuda:1, ... (default: cuda where torch "
                       "sees a GPU, else cpu)")
    cache.set_defaults(handler=cache_teacher)

    pruning = commands.add_parser(
        "prune", help="remove a DPHuBERT / SKILL student's gated-off units: a compact student + final-distill config")
    pruning.add_argument("checkpoint", help="a states-<step>.ckpt of the dphubert/skill method, or its run directory")
    pruning.add_argument("--output", required=True, help="directory for pruned.ckpt, final_distill.yaml, pruning.yaml")
    pruning.add_argument("--final-steps", type=int, help="total_steps of the final-distillation config (default: "
                         "the run's)")
    pruning.add_argument("--format", choices=SAVE_FORMATS, default="pickle", dest="student_format",
                         help="pickle (default): pruned.ckpt; safetensors: pruned.safetensors instead (no pickle, "
                              "for sharing; the final-distill config starts from it)")
    pruning.set_defaults(handler=prune)

    teacher = commands.add_parser(
        "hubert-teacher",
        help="pretrain a small HuBERT (MFCC k-means targets, masked prediction) as a hubert_local teacher"
    )
    teacher.add_argument("--data-root", required=True, help="audio root the CSV paths are relative to")
    teacher.add_argument("--csv", required=True, nargs="+", help="len_for_bucket CSV(s) listing the training audio")
    teacher.add_argument("-o", "--output", required=True, help="checkpoint to write (hubert_local format)")
    teacher.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    teacher.add_argument("--clusters", type=int, default=50, help="k-means clusters of the MFCC targets (default: 50)")
    teacher.add_argument("--seed", type=int, default=0, help="seeds k-means, the weights and the batches (default: 0)")
    teacher.set_defaults(handler=hubert_teacher)

    link = commands.add_parser(
        "link-pretrain", help="make our recipes visible to run_pretrain.py of an s3prl git checkout"
    )
    link.add_argument("checkout", help="the s3prl checkout (its root, or the s3prl/ folder holding run_pretrain.py)")
    link.set_defaults(handler=link_pretrain)

    similar = commands.add_parser(
        "layer-similarity", help="SKILL: group a teacher's layers by representational similarity (CKA / cosine) and "
        "write the target_groups config snippet"
    )
    similar.add_argument("--teacher", required=True, help="s3prl upstream name of the teacher, e.g. hubert_local")
    similar.add_argument("--ckpt", help="the teacher's checkpoint")
    similar.add_argument("--data", required=True,
                         help="calibration audio: a folder (searched for .wav/.flac) or a file listing audio paths")
    similar.add_argument("--output", required=True, help="folder for the similarity matrix, groups, plot and snippet")
    similar.add_argument("--utterances", type=int, default=200, help="utterances, evenly spaced over the sorted files")
    similar.add_argument("--measure", default="linear_cka", choices=MEASURES,
                         help="similarity of two layers' hidden states (default: linear_cka)")
    similar.add_argument("--linkage", default="average", choices=LINKAGES,
                         help="how the distance of two groups is taken when merging (default: average)")
    how_many = similar.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--groups", type=int, help="number of layer groups")
    how_many.add_argument("--distance-threshold", type=float,
                          help="merge while the linkage distance (1 - similarity) is at most this")
    similar.add_argument("--exclude-layer0", action="store_true", help="leave hidden state 0 out")
    similar.add_argument(
        "--layer-zero", default="feature_projection", choices=LAYER_ZERO_CHOICES,
        help="hidden state 0: DPHuBERT's (the feature projection, before the positional conv; what SKILL's targets "
             "use) or s3prl's (the first layer's input)")
    similar.add_argument("--contiguous", action="store_true", help="every group is a run of adjacent layers")
    similar.add_argument("--max-seconds", type=float, default=10.0, help="use the first N seconds of each file")
    similar.add_argument("--max-frames", type=int, default=20000, help="frames kept in all (a fixed stride)")
    similar.add_argument("--device", default="cpu", help="where the teacher runs: cpu (default), cuda, cuda:1, ...")
    similar.set_defaults(handler=layer_similarity)
