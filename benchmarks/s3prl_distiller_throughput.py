"""Training throughput of our DistilHuBERT runner vs. s3prl's own ``pretrain/distiller`` on the same config, batch,
audio and machine, measured in one run.

s3prl's distiller pretraining exists only in its git repository, so this takes a checkout (its root, or the folder
holding ``run_pretrain.py``) and skips with a message when none is given. s3prl's expert loads its teacher with
``torch.hub.load("s3prl/s3prl", name)`` (a download); here that call is answered by ``hubert_local`` on the same
randomly initialised HuBERT-Base-sized checkpoint our run uses. Both runs: DistilHuBERT (2 layers, heads on 4/8/12,
teacher init), batch 4 of 4 s utterances, fp32 on CPU. Per-step time = (time of a long run - time of a short run) /
(extra steps), so start-up costs cancel. s3prl's runner also needs ``easydict`` (pip install easydict).

    python benchmarks/s3prl_distiller_throughput.py --s3prl-checkout ~/s3prl [--steps 2 10] [--threads 2] \
        [--ours fp32 bf16+compile]

``--ours`` adds runs of our runner with other step settings (``bf16``: autocast, fast on CPUs with AVX512-BF16 / AMX;
``compile``: ``runner.compile``; an untimed run first fills the inductor cache, so both timed runs load the same
compiled code and the difference cancels it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.audio_lists import write_length_csvs

from teacher_cache import SHIPPED, write_audio

# Runs s3prl's run_pretrain.py with torch.hub.load answered locally (argv: teacher checkpoint, then its arguments).
S3PRL_DRIVER = """
import runpy, sys, torch
import s3prl_distill
s3prl_distill.register()
import s3prl.hub as hub
teacher = sys.argv[1]
torch.hub.load = lambda repo, name, *args, **kwargs: hub.hubert_local(ckpt=teacher)
sys.argv = ["run_pretrain.py"] + sys.argv[2:]
runpy.run_path("run_pretrain.py", run_name="__main__")
"""


def timed(command, cwd: Path, env) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command[:4]))} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


# Our step settings -> runner overrides.
OURS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "compile": {"precision": "fp32", "compile": True},
        "bf16+compile": {"precision": "bf16", "compile": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3prl-checkout", help="an s3prl git checkout (has s3prl/run_pretrain.py and pretrain/distiller)")
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 10], help="short and long run lengths")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours", nargs="+", default=["fp32"], choices=sorted(OURS),
                        help="our runner's settings to time (the first is the headline figure)")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "s3prl_distiller_throughput.json")
    args = parser.parse_args()
    if not args.s3prl_checkout:
        print("skipped: pass --s3prl-checkout PATH (s3prl's pretrain/distiller is only in its git repository)")
        return
    root = Path(args.s3prl_checkout).expanduser().resolve()
    workdir = next((c for c in (root / "s3prl", root) if (c / "run_pretrain.py").is_file()
                    and (c / "pretrain" / "distiller").is_dir()), None)
    if workdir is None:
        raise SystemExit(f"{root}: no run_pretrain.py with pretrain/distiller beside it (an s3prl git checkout?)")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(workdir)}
    short, long = args.steps
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_audio(folder / "audio", args.utterances, args.seconds)
        write_length_csvs(folder / "audio", folder / "csv", progress=False)
        teacher = str(write_random_hubert(folder / "teacher.ckpt", HUBERT_BASE))

        theirs_model = yaml.safe_load((workdir / "pretrain" / "distiller" / "config_model.yaml").read_text())
        theirs_model["distiller"].update(n_tasks=3, pred_layer_id=[4, 8, 12])  # the paper setting, as ours ships
        theirs_runner = yaml.safe_load((workdir / "pretrain" / "distiller" / "config_runner.yaml").read_text())
        theirs_runner["pretrain_expert"]["datarc"].update(
            num_workers=1, train_batch_size=args.batch, libri_root=str(folder / "audio"), file_path=str(folder / "csv"),
            sets=["train"])
        ours = yaml.safe_load(SHIPPED.read_text())
        ours["teacher"]["ckpt"] = teacher
        ours["data"].update(root=str(folder / "audio"), bucket_dir=str(folder / "csv"), sets=["train"],
                            train_batch_size=args.batch, num_workers=1)
        seconds = {}
        # Compiled variants: one untimed run first fills a run-local inductor cache, so the short and the long run
        # both start from it and the compile cost cancels in their difference.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor_cache")
        for variant in args.ours:
            if OURS[variant].get("compile"):
                ours["runner"].update(total_steps=short, log_step=short, save_step=short, **OURS[variant])
                (folder / "ours.yaml").write_text(yaml.safe_dump(ours))
                timed([sys.executable, "-m", "s3prl_distill.pretrain", "-g", str(folder / "ours.yaml"), "-n",
                       f"warmup-{variant.replace('+', '-')}", "-p", str(folder)], folder, env)
        for steps in (short, long):
            # s3prl asserts total_steps > log_step and > save_step
            theirs_runner["runner"].update(total_steps=steps, log_step=1, save_step=steps - 1, fp16=False)
            (folder / "model.yaml").write_text(yaml.safe_dump(theirs_model))
            (folder / "runner.yaml").write_text(yaml.safe_dump(theirs_runner))
            seconds[("s3prl", steps)] = timed(
                [sys.executable, "-c", S3PRL_DRIVER, teacher, "-u", "distiller", "-g", str(folder / "model.yaml"),
                 "-c", str(folder / "runner.yaml"), "-n", f"s3prl{steps}", "-p", str(folder / f"s3prl{steps}"),
                 "--device", "cpu"], workdir, env)
            for variant in args.ours:
                runner = {"compile": False, **OURS[variant]}
                ours["runner"].update(total_steps=steps, log_step=steps, save_step=steps, **runner)
                name = "ours" if variant == args.ours[0] else f"ours_{variant}"
                (folder / "ours.yaml").write_text(yaml.safe_dump(ours))
                seconds[(name, steps)] = timed(
                    [sys.executable, "-m", "s3prl_distill.pretrain", "-g", str(folder / "ours.yaml"), "-n",
                     f"{name.replace('+', '-')}{steps}", "-p", str(folder)], folder, env)
    names = sorted({who for who, _ in seconds})
    per_step = {who: (seconds[(who, long)] - seconds[(who, short)]) / (long - short) for who in names}
    result = {
        "benchmark": "s3prl_distiller_throughput", "threads": args.threads, "device": "cpu",
        "machine": platform.machine(), "batch": f"{args.batch} x {args.seconds:g} s", "steps": args.steps,
        "s3prl_s_per_step": round(per_step["s3prl"], 3), "ours_s_per_step": round(per_step["ours"], 3),
        "ours_settings": args.ours[0],
        "throughput_ours_over_s3prl": round(per_step["s3prl"] / per_step["ours"], 3),
        **{f"{who}_s_per_step": round(per_step[who], 3) for who in names if who not in ("s3prl", "ours")},
        **{f"throughput_{who}_over_s3prl": round(per_step["s3prl"] / per_step[who], 3)
           for who in names if who not in ("s3prl", "ours")},
        "wall_s": {f"{who}_{steps}": round(value, 1) for (who, steps), value in seconds.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
