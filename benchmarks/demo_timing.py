"""The demo's ``time / teacher`` column, measured again on a finished demo work directory's upstreams.

    python benchmarks/demo_timing.py WORKDIR [--seconds 4] [--output benchmarks/results/demo_timing.json]

Every preset builds the same architectures (the teacher config is the preset-independent default, the students are
scaled from it), and a forward's cost does not depend on the weights, so a ``tiny`` work directory's checkpoints
time like the ``quick`` ones. ``--seconds`` is the utterance length (the quick preset's is 4). The measurement is the
demo's own (:func:`s3prl_distill.downstream_recipes.demo.inference_ratios`): one torch thread, rotated round-robin
rounds, median and interquartile range of the per-round ratios to the pretrained teacher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s3prl_distill.checkpoint import latest_step_checkpoint
from s3prl_distill.downstream_recipes.demo import demo_upstreams, inference_ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a finished `s3prl-distill demo` work directory")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "demo_timing.json")
    args = parser.parse_args()
    teacher_stage, student_stage = args.workdir / "stage_teacher", args.workdir / "stage_students"
    students = {family: latest_step_checkpoint(student_stage / family) for family in ("distilhubert", "fithubert")}
    missing = [family for family, path in students.items() if path is None]
    if missing:
        parser.error(f"{args.workdir} holds no student checkpoint of {', '.join(missing)} (states-*.ckpt under "
                     f"{student_stage}): is it a finished demo work directory?")
    upstreams = demo_upstreams(teacher_stage / "teacher.ckpt", teacher_stage / "random_teacher.ckpt", students)
    timing = inference_ratios(upstreams, args.seconds)
    result = {"benchmark": "demo_timing", "workdir": str(args.workdir), "batch": f"4 x {args.seconds:g} s",
              "conditions": timing.conditions(), **timing.to_json()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(timing.method())
    print(f"measured on {timing.conditions()}")
    time_spreads = timing.time_spreads()
    for label, spread in timing.ratio_spreads().items():
        print(f"{label:32s} {spread.format()}   {time_spreads[label].median:.3f} s")


if __name__ == "__main__":
    main()
