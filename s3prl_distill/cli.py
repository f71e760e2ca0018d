"""s3prl-distill: distil speech SSL students and evaluate them with s3prl.

``s3prl-distill downstream ARGS...`` runs s3prl's own downstream runner with ``ARGS`` passed through unchanged
(after the compat patches and our registration, which the start-up hook would also do).
"""

from __future__ import annotations

import argparse
import json
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


def _learning_rates(items: Optional[List[str]]) -> dict:
    rates = {}
    for item in items or []:
        task, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--lr {item!r}: expected TASK=VALUE, e.g. sid=1e-2")
        rates[task.strip().lower()] = float(value)
    return rates


def run_superb_command(args: argparse.Namespace) -> None:
    from .downstream_recipes.superb.runner import SweepSpec, run_superb
    from .downstream_recipes.superb.tasks import parse_tasks

    spec = SweepSpec(
        upstream=args.upstream, ckpt=args.ckpt, model_config=args.model_config, feature=args.feature,
        tasks=parse_tasks(args.tasks), data_root=args.data_root, name=args.name, exproot=args.exproot,
        device=args.device, steps=args.steps, learning_rates=_learning_rates(args.lr), num_workers=args.num_workers,
        label=args.label, settings=args.set, folds=args.folds,
    )
    run_dir = run_superb(spec, jobs=args.jobs)
    print((run_dir / "results.md").read_text())
    print(f"results: {run_dir / 'results.json'}, {run_dir / 'results.md'}, {run_dir / 'results.png'}")


def run_profile_command(args: argparse.Namespace) -> None:
    from .profiler import UpstreamSpec, format_table, profile_upstreams, specs_from_lists

    try:
        specs = specs_from_lists(args.upstream, args.ckpt, args.model_config)
        reference = UpstreamSpec(args.vs, args.vs_ckpt, args.vs_config) if args.vs else None
        result = profile_upstreams(specs, args.seconds, args.batch, args.threads, args.repeats, args.warmup,
                                   args.device, reference, memory=not args.no_memory, feature=args.feature or None)
    except ValueError as error:  # unknown upstream name, mismatched -k/-g lists, bad settings, unreadable checkpoint
        raise SystemExit(f"profile: {error}")
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"json: {args.json}")


def run_layer_similarity_command(args: argparse.Namespace) -> None:
    """``layer-similarity``: SKILL's teacher-layer grouping (see :mod:`s3prl_distill.pretrain.dphubert.layer_similarity`)."""
    from .pretrain.dphubert.layer_similarity import analyse_layers, find_audio
    from .pretrain.config import TeacherConfig

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
    output = Path(args.output)
    for name in ("skill_groups.yaml", "groups.json", "similarity.npy", "similarity.csv", "layer_similarity.png"):
        print(output / name)


def build_parser() -> argparse.ArgumentParser:
    from .formats.export import EXPORT_FORMATS

    parser = argparse.ArgumentParser(prog="s3prl-distill", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "downstream",
        help="run s3prl's downstream runner (run_downstream.py) with the remaining arguments unchanged",
        add_help=False,
    )
    commands.add_parser(
        "pretrain",
        help="distillation pretraining: -g CONFIG -n NAME [-p EXPROOT] [-o OVERRIDES] [-e CKPT] [--overwrite]",
        add_help=False,
    )
    cache = commands.add_parser(
        "cache-teacher", help="run a pretrain config's teacher once over its data and store the target layers"
    )
    cache.add_argument("-g", "--config", required=True, help="the pretrain config (its teacher, method and data)")
    cache.add_argument("-o", "--override", help="config overrides, as for pretrain")
    cache.add_argument("--output", required=True, help="cache directory to write; train with "
                       "-o config.data.teacher_cache=DIR")
    cache.add_argument("--batch-size", type=int, default=8, help="windows per teacher forward")
    cache.add_argument("--device", default="cuda" if _cuda() else "cpu")
    prune = commands.add_parser(
        "prune", help="remove a DPHuBERT / SKILL student's gated-off units: a compact student + final-distill config")
    prune.add_argument("checkpoint", help="a states-<step>.ckpt of the dphubert/skill method, or its run directory")
    prune.add_argument("--output", required=True, help="directory for pruned.ckpt, final_distill.yaml, pruning.yaml")
    prune.add_argument("--final-steps", type=int, help="total_steps of the final-distillation config (default: "
                       "the run's)")
    export = commands.add_parser(
        "export", help="write a trained student in another layout (dphubert: the official DPHuBERT {config, "
        "state_dict} of a pruned dphubert/skill student)")
    export.add_argument("checkpoint", help="our checkpoint: pruned.ckpt from prune, or a final-distillation "
                        "states-<step>.ckpt (or its run directory)")
    export.add_argument("output", help="the file to write")
    export.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="the layout to write")
    prepare = commands.add_parser(
        "prepare-data", help="write s3prl len_for_bucket CSVs (file_path, length) for an audio tree"
    )
    prepare.add_argument("audio_root", help="e.g. /data/LibriSpeech, or any folder of .flac/.wav files")
    prepare.add_argument("-o", "--output", default="data/len_for_bucket", help="where the <set>.csv files go")
    prepare.add_argument("--sets", nargs="+", help="subfolders to index (default: every subfolder with audio)")
    prepare.add_argument("--on-bad-file", choices=["stop", "skip"], default="stop",
                         help="a file that is unreadable or not 16 kHz mono: stop (default) or skip with a warning")
    teacher = commands.add_parser(
        "hubert-teacher", help="pretrain a small HuBERT (MFCC k-means targets, masked prediction) as a hubert_local teacher"
    )
    teacher.add_argument("--data-root", required=True, help="audio root the CSV paths are relative to")
    teacher.add_argument("--csv", required=True, nargs="+", help="len_for_bucket CSV(s) listing the training audio")
    teacher.add_argument("-o", "--output", required=True, help="checkpoint to write (hubert_local format)")
    teacher.add_argument("--steps", type=int, default=600)
    teacher.add_argument("--clusters", type=int, default=50)
    teacher.add_argument("--seed", type=int, default=0)
    link = commands.add_parser(
        "link-pretrain", help="make our recipes visible to run_pretrain.py of an s3prl git checkout"
    )
    link.add_argument("checkout", help="the s3prl checkout (its root, or the s3prl/ folder holding run_pretrain.py)")
    superb = commands.add_parser(
        "superb", help="train + evaluate an upstream on SUPERB PR/ASR/KS/SID/ER through s3prl's runner (resumable)"
    )
    superb.add_argument("-u", "--upstream", required=True, help="any s3prl upstream name (ours, or e.g. fbank)")
    superb.add_argument("-k", "--ckpt", help="the upstream's checkpoint (s3prl's -k)")
    superb.add_argument("-g", "--model-config", help="the upstream's config (s3prl's -g)")
    superb.add_argument("-s", "--feature", help="feature key (s3prl's -s; default hidden_states)")
    superb.add_argument("--tasks", default="pr,asr,ks,sid,er", help="comma-separated subset of pr,asr,ks,sid,er")
    superb.add_argument("--data-root", required=True, help="folder holding the corpora (see the README's layout)")
    superb.add_argument("-n", "--name", required=True, help="sweep name: results go to EXPROOT/NAME")
    superb.add_argument("-p", "--exproot", default="result/superb")
    superb.add_argument("--device", default="cuda" if _cuda() else "cpu")
    superb.add_argument("--steps", type=int, help="train every task for this many steps (default: SUPERB's)")
    superb.add_argument("--lr", nargs="*", metavar="TASK=LR", help="per-task learning rate, e.g. sid=1e-2")
    superb.add_argument("--num-workers", type=int, default=4, help="data loader workers of each task")
    superb.add_argument("--set", nargs="*", default=[], metavar="TASK:KEY=VALUE",
                        help="override one config value, e.g. asr:downstream_expert.modelrc.project_dim=128")
    superb.add_argument("--folds", nargs="+", metavar="FOLD",
                        help="ER folds to run, e.g. fold1 (default: all five, as SUPERB reports)")
    superb.add_argument("--jobs", type=int, default=1,
                        help="experiments run at once (CPU: each gets its share of the threads)")
    superb.add_argument("--label", help="row name in the results table (default: the upstream name)")
    prep = commands.add_parser(
        "superb-prepare", help="derive and check what the SUPERB tasks read under a data root of real corpora"
    )
    prep.add_argument("--data-root", required=True)
    prep.add_argument("--tasks", default="pr,asr,ks,sid,er")
    prep.add_argument("--voxceleb-split", help="VoxCeleb1's iden_split.txt (copied to VoxCeleb1/veri_test_class.txt)")
    mini = commands.add_parser(
        "mini-superb", help="generate the mini-SUPERB corpora (espeak-ng speech in the five tasks' exact layouts)"
    )
    mini.add_argument("output", help="the data root to write (use it as superb --data-root)")
    mini.add_argument("--size", default="small", help="tiny | small (default) | medium")
    mini.add_argument("--seed", type=int, default=0)
    mini.add_argument("--tasks", default="pr,asr,ks,sid,er")
    mini.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    report = commands.add_parser("superb-report", help="one table + chart from several finished superb runs")
    report.add_argument("runs", nargs="+", help="run directories (EXPROOT/NAME)")
    report.add_argument("-o", "--output", required=True, help="folder for results.md and results.png")
    submit = commands.add_parser("submit", help="leaderboard predict.zip + efficiency.json from a finished superb run")
    submit.add_argument("run", help="the run directory (EXPROOT/NAME)")
    submit.add_argument("-o", "--output", required=True, help="folder for predict/, predict.zip, efficiency.json")
    submit.add_argument("--seconds", type=float, nargs="+", default=[1.0, 5.0, 10.0],
                        help="utterance lengths the MACs are counted on")
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
    profile.add_argument("--feature", default="hidden_states",
                         help="the output read after each forward, as s3prl's -s (default: hidden_states; '' for the "
                              "forward alone); an upstream may compute some outputs only when they are read")
    profile.add_argument("--json", help="write every figure and the settings to this JSON file")
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
    similar.add_argument("--measure", choices=["linear_cka", "cosine"], default="linear_cka")
    similar.add_argument("--linkage", choices=["average", "complete", "single", "ward"], default="average")
    how_many = similar.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--groups", type=int, help="number of layer groups")
    how_many.add_argument("--distance-threshold", type=float,
                          help="merge while the linkage distance (1 - similarity) is at most this")
    similar.add_argument("--exclude-layer0", action="store_true", help="leave hidden state 0 out")
    similar.add_argument("--layer-zero", choices=("feature_projection", "transformer_input"), default="feature_projection",
                         help="hidden state 0: DPHuBERT's (the feature projection, before the positional conv; what "
                              "SKILL's targets use) or s3prl's (the first layer's input)")
    similar.add_argument("--contiguous", action="store_true", help="every group is a run of adjacent layers")
    similar.add_argument("--max-seconds", type=float, default=10.0, help="use the first N seconds of each file")
    similar.add_argument("--max-frames", type=int, default=20000, help="frames kept in all (a fixed stride)")
    similar.add_argument("--device", default="cpu")
    commands.add_parser("upstreams", help="list the upstream names this package registers in s3prl")
    demo = commands.add_parser(
        "demo", help="offline end to end: mini-SUPERB, a small HuBERT teacher, two distilled students, SUPERB table"
    )
    demo.add_argument("--preset", default="quick", choices=["tiny", "quick", "full"])
    demo.add_argument("--workdir", default="result/demo", help="stages are cached here; re-running resumes")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cuda" if _cuda() else "cpu")
    quick = commands.add_parser(
        "quickstart", help="smallest end-to-end run: a DistilHuBERT-shaped checkpoint through s3prl's ER runner"
    )
    quick.add_argument("--workdir", default="result/quickstart", help="where everything is written")
    quick.add_argument("--steps", type=int, default=40, help="downstream training steps")
    return parser


def prepare_data(audio_root: str, output: str, sets: Optional[List[str]], on_bad_file: str) -> None:
    from .audio_lists import write_length_csvs

    written = write_length_csvs(Path(audio_root), Path(output), sets, on_bad_file=on_bad_file)
    for name, path in written.items():
        print(f"{name}: {path}")


def link_pretrain(checkout: str) -> None:
    """Make our pretrain recipes visible to s3prl's run_pretrain.py, which lists ``pretrain/`` in its cwd."""
    from .pretrain.methods import METHODS

    root = Path(checkout).expanduser().resolve()
    candidates = [root / "s3prl" / "pretrain", root / "pretrain"]
    target = next((c for c in candidates if c.is_dir() and (c.parent / "run_pretrain.py").is_file()), None)
    if target is None:
        raise SystemExit(f"link-pretrain: {root} is not an s3prl checkout (no s3prl/run_pretrain.py beside pretrain/)")
    # Recipe folders with a pretrain_expert.py (every recipe's; skill runs as -u dphubert).
    folders = {spec.folder for spec in METHODS.values()}
    for source in sorted(folder for folder in folders if (folder / "pretrain_expert.py").is_file()):
        link = target / source.name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise SystemExit(f"link-pretrain: {link} exists and is not a link made by this command; not replacing it")
        link.symlink_to(source, target_is_directory=True)
        print(f"{link} -> {source}")
    print(f"now, in {target.parent}: python3 run_pretrain.py -u <method> -g pretrain/<method>/config_model.yaml -n NAME")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from .errors import UserError, user_message

    try:
        _dispatch(argv)
    except UserError as error:  # bad input: its message names it; a traceback would only hide it
        command = " ".join(["s3prl-distill", *argv[:1]])
        sys.stderr.write(f"{command}: {user_message(error)}\n")
        sys.exit(2)


def _dispatch(argv: List[str]) -> None:
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
    elif args.command == "demo":
        from .downstream_recipes.demo import run_demo

        paths = run_demo(Path(args.workdir), args.preset, args.seed, args.device)
        print(paths["markdown"].read_text())
        print(f"table: {paths['markdown']}, chart: {paths['chart']}, stage times: {Path(args.workdir) / 'timings.json'}")
    elif args.command == "cache-teacher":
        from .pretrain.config import load_config
        from .pretrain.teacher_cache import build_teacher_cache

        output = build_teacher_cache(load_config(args.config, args.override), Path(args.output), args.batch_size,
                                     args.device)
        print(f"teacher cache written to {output}; train from it with -o config.data.teacher_cache={output}")
    elif args.command == "prune":
        from .pretrain.dphubert.prune import prune_checkpoint

        summary = prune_checkpoint(Path(args.checkpoint), Path(args.output), args.final_steps)
        print(json.dumps(summary, indent=2))
    elif args.command == "export":
        from .formats.export import export_checkpoint

        summary = export_checkpoint(Path(args.checkpoint), args.to, Path(args.output))
        print(json.dumps(summary, indent=2))
    elif args.command == "prepare-data":
        prepare_data(args.audio_root, args.output, args.sets, args.on_bad_file)
    elif args.command == "link-pretrain":
        link_pretrain(args.checkout)
    elif args.command == "hubert-teacher":
        from .audio_lists import read_length_csvs
        from .pretrain.hubert_teacher import HubertTeacherConfig, train_hubert_teacher

        csvs = [Path(c) for c in args.csv]
        items = [item for c in csvs for item in read_length_csvs(Path(args.data_root), c.parent, [c.stem])]
        config = HubertTeacherConfig(steps=args.steps, clusters=args.clusters, seed=args.seed)
        print(train_hubert_teacher(items, Path(args.output), config))
    elif args.command == "superb":
        run_superb_command(args)
    elif args.command == "superb-prepare":
        from .downstream_recipes.superb.prepare import prepare_data_root
        from .downstream_recipes.superb.tasks import parse_tasks

        values = prepare_data_root(Path(args.data_root), parse_tasks(args.tasks),
                                   Path(args.voxceleb_split) if args.voxceleb_split else None)
        print("ready:", json.dumps(values, indent=2))
    elif args.command == "mini-superb":
        from .downstream_recipes.minisuperb import generate_minisuperb
        from .downstream_recipes.superb.tasks import parse_tasks

        generate_minisuperb(Path(args.output), tuple(parse_tasks(args.tasks)), args.size, args.seed, args.jobs)
        print(f"mini-SUPERB written to {args.output}: s3prl-distill superb --data-root {args.output} ...")
    elif args.command == "superb-report":
        from .downstream_recipes.superb.report import load_results, write_report

        paths = write_report([load_results(Path(run)) for run in args.runs], Path(args.output))
        print(paths["markdown"].read_text())
    elif args.command == "profile":
        run_profile_command(args)
    elif args.command == "layer-similarity":
        run_layer_similarity_command(args)
    elif args.command == "submit":
        from .downstream_recipes.superb.submit import submit

        written = submit(Path(args.run), Path(args.output), args.seconds)
        print(f"{written['zip']}\n{written['efficiency']}")


if __name__ == "__main__":
    main()
