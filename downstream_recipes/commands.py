"""The downstream recipes' subcommands: SUPERB through s3prl's runner (sweeps, data preparation, reports,
leaderboard submission), mini-SUPERB, the quick start and the offline demo. Registered into the ``s3prl-distill``
command line by ``add_commands`` (see :mod:`s3prl_distill.commands`); heavy imports stay inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

from s3prl_distill.commands import default_device, print_json
from s3prl_distill.options import MAX_DEFAULT_WORKERS, default_num_workers

TASKS = "pr,asr,ks,sid,er"  # every SUPERB task the recipes run, the default of --tasks


def learning_rates(items: Optional[List[str]]) -> Dict[str, float]:
    """``--lr sid=1e-2 er=1e-4`` as ``{task: rate}``."""
    rates = {}
    for item in items or []:
        task, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--lr {item!r}: expected TASK=VALUE, e.g. sid=1e-2")
        rates[task.strip().lower()] = float(value)
    return rates


def sweep_workers(num_workers: Optional[int], jobs: int) -> int:
    """``--num-workers``, or by default what one of ``jobs`` experiments running at once gets: its share of the usable
    cores less one (the experiment's own process), so a sweep never starts more loader processes than there are
    cores."""
    if num_workers is not None:
        return num_workers
    return default_num_workers(share=jobs)


def run_superb(args: argparse.Namespace) -> None:
    from .superb.runner import SweepSpec, run_superb as sweep
    from .superb.tasks import parse_tasks

    spec = SweepSpec(
        upstream=args.upstream, ckpt=args.ckpt, model_config=args.model_config, feature=args.feature,
        tasks=parse_tasks(args.tasks), data_root=args.data_root, name=args.name, exproot=args.exproot,
        device=args.device or default_device(), steps=args.steps, learning_rates=learning_rates(args.lr),
        num_workers=sweep_workers(args.num_workers, args.jobs), label=args.label, settings=args.set, folds=args.folds,
        seed=args.seed,
    )
    run_dir = sweep(spec, jobs=args.jobs)
    print((run_dir / "results.md").read_text())
    print(f"results: {run_dir / 'results.json'}, {run_dir / 'results.md'}, {run_dir / 'results.png'}")


def prepare_superb(args: argparse.Namespace) -> None:
    from .superb.prepare import prepare_data_root
    from .superb.tasks import parse_tasks

    values = prepare_data_root(Path(args.data_root), parse_tasks(args.tasks),
                               Path(args.voxceleb_split) if args.voxceleb_split else None)
    print("ready:", json.dumps(values, indent=2))


def superb_config(args: argparse.Namespace) -> None:
    from .superb.config_file import write_superb_config

    written = write_superb_config(
        args.task, Path(args.data_root), Path(args.output) if args.output else None, args.fold,
        sweep_workers(args.num_workers, 1),
        args.steps, args.set, args.force, args.upstream, args.ckpt, args.device or default_device(),
    )
    print(f"{written.task.title} config written to {written.path}; train and evaluate with s3prl's runner:")
    for command in written.commands:
        print(f"  {command}")
    for note in written.notes:
        print(f"note: {note}")


def mini_superb(args: argparse.Namespace) -> None:
    from .minisuperb import generate_minisuperb
    from .superb.tasks import parse_tasks

    generate_minisuperb(Path(args.output), tuple(parse_tasks(args.tasks)), args.size, args.seed, args.jobs)
    print(f"mini-SUPERB written to {args.output}: s3prl-distill superb --data-root {args.output} ...")


def superb_report(args: argparse.Namespace) -> None:
    from .superb.report import load_results, write_report

    paths = write_report([load_results(Path(run)) for run in args.runs], Path(args.output))
    print(paths["markdown"].read_text())


def submit(args: argparse.Namespace) -> None:
    from .superb.submit import submit as write_submission

    written = write_submission(Path(args.run), Path(args.output), args.seconds, force=args.force)
    print(f"{written['zip']}\n{written['efficiency']}")


def demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    paths = run_demo(Path(args.workdir), args.preset, args.seed, args.device or default_device())
    print(paths["markdown"].read_text())
    print(f"table: {paths['markdown']}, chart: {paths['chart']}, stage times: {Path(args.workdir) / 'timings.json'}")


def _show_bench(paths: dict) -> None:
    print(paths["markdown"].read_text())
    print(f"table: {paths['markdown']}, chart: {paths['chart']}, numbers: {paths['json']}")


def bench(args: argparse.Namespace) -> None:
    import sys

    from .bench import run_bench

    paths = run_bench(Path(args.workdir), args.preset, Path(args.config) if args.config else None, args.seed,
                      args.device or default_device(), Path(args.from_demo) if args.from_demo else None,
                      command=["s3prl-distill", *sys.argv[1:]], rows=args.rows,
                      teacher_ckpt=Path(args.teacher) if args.teacher else None)
    _show_bench(paths)


def bench_merge(args: argparse.Namespace) -> None:
    import sys

    from .bench_report import merge_benches

    paths = merge_benches([Path(part) for part in args.parts], Path(args.out),
                          command=["s3prl-distill", *sys.argv[1:]])
    _show_bench(paths)


def quickstart(args: argparse.Namespace) -> None:
    from .quickstart import quickstart as run

    result = run(Path(args.workdir), steps=args.steps)
    print_json(result)
    print(
        f"\nER (toy) test accuracy with {result['upstream']}: {result['test_accuracy']:.3f} "
        f"(chance {result['chance']:.2f}); outputs in {args.workdir}"
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The downstream recipes' subcommands."""
    superb = commands.add_parser(
        "superb", help="train + evaluate an upstream on SUPERB PR/ASR/KS/SID/ER through s3prl's runner (resumable)"
    )
    superb.add_argument("-u", "--upstream", required=True, help="any s3prl upstream name (ours, or e.g. fbank)")
    superb.add_argument("-k", "--ckpt", help="the upstream's checkpoint (s3prl's -k)")
    superb.add_argument("-g", "--model-config", help="the upstream's config (s3prl's -g)")
    superb.add_argument("-s", "--feature", help="feature key (s3prl's -s; default hidden_states)")
    superb.add_argument("--tasks", default=TASKS, help="comma-separated subset of pr,asr,ks,sid,er")
    superb.add_argument("--data-root", required=True, help="folder holding the corpora (see the README's layout)")
    superb.add_argument("-n", "--name", required=True, help="sweep name: results go to EXPROOT/NAME")
    superb.add_argument("-p", "--exproot", default="result/superb",
                        help="folder of the sweeps: results go to EXPROOT/NAME (default: result/superb)")
    superb.add_argument("--device", help="where s3prl trains: cpu, cuda, cuda:1, ... (default: cuda where torch sees "
                        "a GPU, else cpu)")
    superb.add_argument("--steps", type=int, help="train every task for this many steps (default: SUPERB's)")
    superb.add_argument("--lr", nargs="*", metavar="TASK=LR", help="per-task learning rate, e.g. sid=1e-2")
    superb.add_argument("--num-workers", type=int,
                        help="data-loader workers of each experiment (default: its share of the usable CPU cores "
                             f"less one, at most {MAX_DEFAULT_WORKERS}: {default_num_workers()} here with --jobs 1)")
    superb.add_argument("--set", nargs="*", default=[], metavar="TASK:KEY=VALUE",
                        help="override one config value, e.g. asr:downstream_expert.modelrc.project_dim=128")
    superb.add_argument("--folds", nargs="+", metavar="FOLD",
                        help="ER folds to run, e.g. fold1 (default: all five, as SUPERB reports)")
    superb.add_argument("--jobs", type=int, default=1,
                        help="experiments run at once (CPU: each gets its share of the threads)")
    superb.add_argument("--label", help="row name in the results table (default: the upstream name)")
    superb.add_argument("--seed", type=int,
                        help="s3prl's --seed for every downstream training (default: s3prl's 1337); one sweep per "
                             "seed (-n NAME per seed) gives seed-to-seed spreads")
    superb.set_defaults(handler=run_superb)

    prep = commands.add_parser(
        "superb-prepare", help="derive and check what the SUPERB tasks read under a data root of real corpora"
    )
    prep.add_argument("--data-root", required=True, help="folder holding the corpora (see the README's layout)")
    prep.add_argument("--tasks", default=TASKS, help="comma-separated subset of pr,asr,ks,sid,er (default: all)")
    prep.add_argument("--voxceleb-split", help="VoxCeleb1's iden_split.txt (copied to VoxCeleb1/veri_test_class.txt)")
    prep.set_defaults(handler=prepare_superb)

    single = commands.add_parser(
        "superb-config", help="write one task's config with its paths filled from a data root, for s3prl's own -c")
    single.add_argument("task", choices=TASKS.split(","), help="the SUPERB task")
    single.add_argument("--data-root", required=True, help="folder holding the corpora (see the README's layout)")
    single.add_argument("--fold", help="ER's test fold, 1..5 (default 1; SUPERB reports the mean of all five)")
    single.add_argument("-o", "--output", help="the config to write (default: superb_TASK[_foldN].yaml here)")
    single.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    single.add_argument("--num-workers", type=int,
                        help="data loader workers (the config's num_workers; default: the usable cores less one, at "
                             "most 8)")
    single.add_argument("--steps", type=int, help="train for this many steps (default: SUPERB's)")
    single.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. optimizer.lr=1e-2 (unknown keys are errors)")
    single.add_argument("-u", "--upstream", help="upstream name for the printed s3prl command (default: UPSTREAM)")
    single.add_argument("-k", "--ckpt", help="upstream checkpoint for the printed s3prl command")
    single.add_argument("--device", help="device for the printed s3prl command (default: cuda if available)")
    single.set_defaults(handler=superb_config)

    mini = commands.add_parser(
        "mini-superb", help="generate the mini-SUPERB corpora (espeak-ng speech in the five tasks' exact layouts)"
    )
    mini.add_argument("output", help="the data root to write (use it as superb --data-root)")
    mini.add_argument("--size", default="small", help="tiny | small (default) | medium")
    mini.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpora (default: 0)")
    mini.add_argument("--tasks", default=TASKS, help="comma-separated subset of pr,asr,ks,sid,er (default: all)")
    mini.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    mini.set_defaults(handler=mini_superb)

    report = commands.add_parser("superb-report", help="one table + chart from several finished superb runs")
    report.add_argument("runs", nargs="+", help="run directories (EXPROOT/NAME)")
    report.add_argument("-o", "--output", required=True, help="folder for results.md and results.png")
    report.set_defaults(handler=superb_report)

    leaderboard = commands.add_parser(
        "submit", help="leaderboard predict.zip + efficiency.json from a finished superb run")
    leaderboard.add_argument("run", help="the run directory (EXPROOT/NAME)")
    leaderboard.add_argument("-o", "--output", required=True, help="folder for predict/, predict.zip, efficiency.json")
    leaderboard.add_argument("--seconds", type=float, nargs="+", default=[1.0, 5.0, 10.0],
                             help="utterance lengths the MACs are counted on")
    leaderboard.add_argument("--force", action="store_true",
                             help="replace a submission already in the output folder (once the new one is complete)")
    leaderboard.set_defaults(handler=submit)

    offline = commands.add_parser(
        "demo", help="offline end to end: mini-SUPERB, a small HuBERT teacher, two distilled students, SUPERB table"
    )
    offline.add_argument("--preset", default="quick", choices=["tiny", "quick", "full"],
                         help="how long it trains: tiny (a smoke run), quick (default), full")
    offline.add_argument("--workdir", default="result/demo", help="stages are cached here; re-running resumes")
    offline.add_argument("--seed", type=int, default=0, help="seeds data, teacher and students (default: 0)")
    offline.add_argument("--device", help="where the teacher, students and SUPERB runs train (default: cuda where "
                         "torch sees a GPU, else cpu)")
    offline.set_defaults(handler=demo)

    benchmark = commands.add_parser(
        "bench", help="every method distilled from the demo's small teacher at a comparable size, five SUPERB tasks "
                      "with downstream seeds, one table (stage-cached, resumable: re-run the same command)")
    benchmark.add_argument("--preset", default="tiny", choices=["tiny", "full"],
                           help="tiny (the CI smoke run, default) or full (the proposed multi-hour run)")
    benchmark.add_argument("--config", help="YAML of bench settings replacing the preset's (unknown keys are errors)")
    benchmark.add_argument("--workdir", default="result/bench", help="stages are cached here; re-running resumes")
    benchmark.add_argument("--from-demo", metavar="DEMO_WORKDIR",
                           help="use this finished demo work directory's data and teacher (same preset size)")
    benchmark.add_argument("--seed", type=int, default=0, help="seeds data, teacher and students (default: 0)")
    benchmark.add_argument("--device", help="where students and SUPERB runs train (default: cuda where torch sees a "
                           "GPU, else cpu)")
    benchmark.add_argument("--rows", nargs="+", metavar="ROW",
                           help="only these rows (teacher random_teacher distilhubert fithubert deepthin_kl0 "
                                "deepthin_kl deepthin_fbank shallowwide dphubert skill novel_skill_deepthin fbank); "
                                "'--rows teacher random_teacher fbank' checks the protocol before any student trains")
    benchmark.add_argument("--teacher", metavar="CKPT",
                           help="an earlier bench run's teacher.ckpt, used instead of training one (for a run made "
                                "in parts on separate machines; its SHA-256 is checked by bench-merge)")
    benchmark.set_defaults(handler=bench)

    joined = commands.add_parser(
        "bench-merge", help="one table from a bench run made in parts (--rows in separate work directories), after "
                            "checking they share data, teacher and settings")
    joined.add_argument("parts", nargs="+", metavar="WORKDIR", help="the parts' work directories (or bench.json)")
    joined.add_argument("--out", required=True, help="where results.md, results.png and bench.json go")
    joined.set_defaults(handler=bench_merge)

    quick = commands.add_parser(
        "quickstart", help="smallest end-to-end run: a DistilHuBERT-shaped checkpoint through s3prl's ER runner"
    )
    quick.add_argument("--workdir", default="result/quickstart", help="where everything is written")
    quick.add_argument("--steps", type=int, default=40, help="downstream training steps")
    quick.set_defaults(handler=quickstart)
