"""The bench's table: SUPERB's score, the protocol's margins and the low-resource comparison, computed from the
per-seed values a bench run records, and the merge of a run made in parts (``--rows`` in several work directories,
e.g. on machines that live for a few hours each) into one table.

A run writes ``bench.json``: its facts (settings, teacher and data digests, per row the per-seed task values, sizes,
MACs, CPU time) and what :func:`render_bench` derives from them. :func:`merge_benches` checks that the parts were
made from the same data, teacher and settings, joins their rows and renders the joined facts the same way.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from s3prl_distill.errors import UserError

from .superb.report import write_report
from .superb.tasks import TASKS

TASK_KEYS = ("pr", "asr", "ks", "sid", "er")
# Every row of the table, in its order (``--rows`` picks some of them).
STUDENT_KEYS = ("distilhubert", "fithubert", "deepthin_kl0", "deepthin_kl", "deepthin_fbank", "shallowwide",
                "dphubert", "skill", "novel_skill_deepthin")
ROW_KEYS = ("teacher", "random_teacher", *STUDENT_KEYS, "fbank")
# The rows that decide whether the protocol discriminates: worth checking before hours of student training.
PROTOCOL_ROWS = ("teacher", "random_teacher", "fbank")
# What the parts of one run must share (the settings' keys besides these, e.g. ``jobs``, only change how it ran).
SHARED_SETTINGS_EXCLUDED = ("jobs",)


def higher_is_better_percent(task: str, value: float) -> float:
    """A task's metric on SUPERB's higher-is-better scale, in %: 100 − PER / WER, accuracies as they are."""
    return 100 * value if TASKS[task].higher_is_better else 100 * (1 - value)


def summarise(values: List[float]) -> Dict[str, Any]:
    """Per-seed values -> {values, mean, sd}; sd is the sample standard deviation, None with one seed."""
    return {"values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def superb_score(rows: Dict[str, Dict[str, float]], floor: str, ceiling: str) -> Tuple[Dict[str, Optional[float]],
                                                                                       List[str]]:
    """SUPERB's overall score (the SUPERB paper's formula, as its leaderboard computes it) with ``floor`` (fbank) at 0
    and ``ceiling`` (our teacher, in place of the leaderboard's state of the art) at 1000:

        score(u) = 1000 / T · Σ_t (s_t(u) − s_t(floor)) / (s_t(ceiling) − s_t(floor))

    ``rows``: {row: {task: mean metric on the higher-is-better scale}}. A task where the ceiling does not beat the
    floor cannot scale anything and is left out (T counts the others); returns (scores, tasks left out). With no
    task left, every score is None."""
    tasks = [t for t in TASK_KEYS if t in rows[floor] and t in rows[ceiling]]
    usable = [t for t in tasks if rows[ceiling][t] > rows[floor][t]]
    left_out = [t for t in tasks if t not in usable]
    scores: Dict[str, Optional[float]] = {}
    for name, values in rows.items():
        if not usable or any(t not in values for t in usable):
            scores[name] = None
            continue
        scores[name] = 1000 / len(usable) * sum((values[t] - rows[floor][t]) / (rows[ceiling][t] - rows[floor][t])
                                                for t in usable)
    return scores, left_out


def protocol_margins(teacher: Dict[str, List[float]], control: Dict[str, List[float]], min_seeds: int = 3,
                     factor: float = 3.0) -> Dict[str, Dict[str, Any]]:
    """Per task: the teacher's mean minus the random-weight control's (higher-is-better %, from per-seed values), in
    units of the seed-to-seed sd (pooled: the root mean square of the two rows' sample sds), and whether it exceeds
    ``factor`` (assessed only with ``min_seeds`` seeds or more on both rows; a zero sd gives no margin)."""
    margins = {}
    for task in TASK_KEYS:
        if task not in teacher or task not in control:
            continue
        ours, theirs = teacher[task], control[task]
        difference = statistics.fmean(ours) - statistics.fmean(theirs)
        pooled = None
        if len(ours) > 1 and len(theirs) > 1:
            pooled = math.sqrt((statistics.variance(ours) + statistics.variance(theirs)) / 2)
        margin = difference / pooled if pooled else None
        assessed = min(len(ours), len(theirs)) >= min_seeds
        if not assessed:
            verdict = f"not assessed ({min(len(ours), len(theirs))} seeds < {min_seeds})"
        elif pooled == 0:
            verdict = "passes (sd 0)" if difference > 0 else "fails (sd 0)"
        else:
            verdict = "passes" if margin > factor else "fails"
        margins[task] = {"difference": difference, "pooled_sd": pooled, "margin_in_sd": margin,
                         "seeds": [len(ours), len(theirs)], "verdict": verdict}
    return margins


def _cell(value: Optional[float], digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0"


def render_bench(facts: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """``bench.json`` (``facts`` and what follows from them: per-task means and sds, SUPERB scores, the protocol's
    margins, the low-resource comparison), ``results.md`` and ``results.png`` in ``out_dir``.

    ``facts``: ``settings`` (a :class:`~.bench.BenchSettings` dump), ``rows`` (each with ``key``, ``label``,
    ``upstream``, ``kind``, ``seeds``, ``parameters``, ``backbone_parameters``, ``macs_per_second_of_audio``,
    ``time_vs_teacher``, ``time_cell`` and ``values``: {task: per-seed metric}), ``low_resource_values`` ({row key:
    per-seed PER}), ``sizes``, ``profile`` ({method, conditions}), ``stage_seconds``, ``command``, ``commit``, and
    ``parts`` (the work directories a merged run came from; empty for a run made in one)."""
    settings, rows = facts["settings"], facts["rows"]
    keys = [row["key"] for row in rows]
    per_row = {row["key"]: row["values"] for row in rows}
    means = {key: {t: higher_is_better_percent(t, statistics.fmean(v)) for t, v in values.items()}
             for key, values in per_row.items()}
    # a --rows subset may lack the floor, the ceiling or the control: then no scores, or no margins
    if "fbank" in means and "teacher" in means:
        scores, left_out = superb_score(means, floor="fbank", ceiling="teacher")
    else:
        scores, left_out = {key: None for key in keys}, []
    scaled = {key: {t: [higher_is_better_percent(t, v) for v in values] for t, values in tasks.items()}
              for key, tasks in per_row.items()}
    margins = (protocol_margins(scaled["teacher"], scaled["random_teacher"])
               if "teacher" in scaled and "random_teacher" in scaled else {})
    teacher_wer = statistics.fmean(per_row["teacher"]["asr"]) if "asr" in per_row.get("teacher", {}) else None
    # None: not measured (no teacher ASR values among these rows), which a part without the teacher must not report
    # as a failure
    asr_learns = None if teacher_wer is None else teacher_wer < settings["asr_max_wer"]

    table_rows, json_rows = [], []
    for row in rows:
        tasks = {}
        for task, values in row["values"].items():
            summary = summarise(values)
            tasks[task] = {"metric": TASKS[task].metric, "higher_is_better": TASKS[task].higher_is_better,
                           "value": summary["mean"], "sd": summary["sd"], "values": values}
        table_rows.append({"label": row["label"], "upstream": row["upstream"], "parameters": row["parameters"],
                           "tasks": tasks})
        json_rows.append({**row, "superb_score": scores[row["key"]], "tasks": tasks})
    low_resource = {key: summarise(values) for key, values in facts["low_resource_values"].items()}
    bench = {**facts, "rows": json_rows,
             "superb_score": {"formula": "1000/T * sum_t (s_t(u) - s_t(fbank)) / (s_t(teacher) - s_t(fbank)), s_t on "
                                         "the higher-is-better scale (100 - PER/WER, accuracy) in %",
                              "floor": "fbank", "ceiling": "teacher", "tasks_left_out": left_out},
             "protocol": {"margins": margins, "teacher_asr_wer": teacher_wer, "asr_max_wer": settings["asr_max_wer"],
                          "asr_learns": asr_learns},
             "low_resource_pr": {"fraction_of_training_utterances": settings["low_resource_fraction"],
                                 "per": low_resource}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps(bench, indent=2))

    sizes, reference = facts["sizes"], facts["sizes"]["reference_parameters"]
    tolerance = settings["size_tolerance"]
    extra = {"MACs / s of audio (G)": [_cell(row["macs_per_second_of_audio"] / 1e9, 2) for row in rows],
             "CPU time / teacher": [row["time_cell"] for row in rows],  # every run times the teacher
             "SUPERB score": [_cell(row["superb_score"]) for row in json_rows]}
    off = [f"{row['label']} {row['backbone_parameters'] / reference - 1:+.0%}" for row in rows
           if row["backbone_parameters"] is not None and abs(row["backbone_parameters"] / reference - 1) > tolerance]
    margin_text = "; ".join(
        f"{TASKS[t].title} {m['difference']:+.2f} points"
        + (f" = {m['margin_in_sd']:.1f} sd" if m["margin_in_sd"] is not None else "") + f" ({m['verdict']})"
        for t, m in margins.items()) or "not measured (the rows lack the teacher or its random-weight control)"
    labels = {row["key"]: row["label"] for row in rows}
    low_text = "; ".join(f"{labels.get(key, key)}: PER {100 * s['mean']:.2f} %"
                         + (f" ± {100 * s['sd']:.2f}" if s["sd"] is not None else "")
                         for key, s in low_resource.items()) or "not measured (neither deep-thin row)"
    parts = facts.get("parts") or []
    notes = [
        f"Every student is distilled from the same teacher; backbone parameters (without training heads) are "
        f"matched to the DistilHuBERT-shaped student's {reference / 1e6:.2f} M (deep-thin width "
        f"{sizes['deepthin_width']}, FitHuBERT width {sizes['fithubert_width']}, DPHuBERT / SKILL target "
        f"sparsity {sizes['target_sparsity']:.2f} of {sizes['unpruned_parameters'] / 1e6:.2f} M); "
        f"`params (M)` is what s3prl's upstream loads (DistilHuBERT keeps its heads). "
        + (f"Outside ±{tolerance:.0%} of it: {', '.join(off)}." if off else f"All within ±{tolerance:.0%}."),
        f"Tasks: mean ± sample sd over downstream seeds (teacher, random-weight teacher, fbank: "
        f"{settings['protocol_seeds']}; other rows: {settings['seeds']}). `SUPERB score`: SUPERB's formula 1000/T · "
        f"Σ_t (s_t(u) − s_t(fbank)) / (s_t(teacher) − s_t(fbank)) on the higher-is-better scale (100 − PER/WER, "
        f"accuracy), with our teacher as the ceiling (the leaderboard uses the state of the art), so the teacher is "
        f"1000 and fbank 0 by construction"
        + (f"; left out (teacher not above fbank): {', '.join(TASKS[t].title for t in left_out)}." if left_out
           else "."),
        f"Protocol, teacher − random-weight teacher (higher-is-better points, in units of the pooled seed sd; "
        f"passes above 3 sd with ≥ 3 seeds): {margin_text}. ASR learns (teacher WER below "
        f"{100 * settings['asr_max_wer']:.0f} %): "
        f"{'not measured (no teacher ASR values)' if asr_learns is None else 'yes' if asr_learns else 'no'}"
        + (f" ({100 * teacher_wer:.2f} %)." if teacher_wer is not None else "."),
        f"Low-resource PR (Wang et al.'s claim; {settings['low_resource_fraction']:.0%} of PR's training utterances, "
        f"seeds {settings['protocol_seeds']}): {low_text}.",
        f"`MACs / s of audio`: one {settings['timing_seconds']:g} s utterance, hidden states, torch's FLOP counter / "
        f"2. " + _timing_note(facts),
    ]
    if parts:
        notes.insert(0, f"Made in {len(parts)} parts (`s3prl-distill bench --rows ...` in separate work directories, "
                        f"merged with `s3prl-distill bench-merge`), all from the same data (digest "
                        f"{facts['data_digest'][:12]}), teacher (SHA-256 {facts['teacher_sha256'][:12]}) and settings; "
                        "each part timed its rows against the teacher on its own machine. Parts: "
                        + "; ".join(f"{part['name']}: {', '.join(part['rows'])} (commit "
                                    f"{(part['commit'] or 'unknown')[:10]})" for part in parts) + ".")
        times = "; ".join(f"{part['name']}: " + ", ".join(f"{k} {v:.0f}" for k, v in part["stage_seconds"].items())
                          for part in parts)
        notes.append(f"Stage times (s), per part: {times}. Commands: "
                     + "; ".join(f"`{' '.join(part['command'])}`" for part in parts) + ".")
    else:
        if len(rows) < len(ROW_KEYS):
            notes.insert(0, f"Rows chosen with `--rows`: {len(rows)} of the bench's {len(ROW_KEYS)}.")
        notes.append(f"Stage times (s): {', '.join(f'{k} {v:.0f}' for k, v in facts['stage_seconds'].items())}. "
                     f"Command: `{' '.join(facts['command'])}`; commit {facts['commit'] or 'unknown'}.")
    paths = write_report(table_rows, out_dir, title=f"s3prl-distill bench ({facts['preset']})", extra_columns=extra,
                         notes=notes)
    return {**paths, "json": json_path}


def _timing_note(facts: Dict[str, Any]) -> str:
    """How and where the CPU times were taken: one run's method and machine, or each part's own (a merged table's
    rows were timed in several runs, each against its own teacher forward)."""
    parts = facts.get("parts") or []
    if not parts:
        return f"`CPU time / teacher`: {facts['profile']['method']}. Measured on {facts['profile']['conditions']}."
    methods = {part.get("method") for part in parts}
    if len(methods) == 1 and None not in methods:
        return (f"`CPU time / teacher`: {methods.pop()}. Measured per part: "
                + "; ".join(f"{part['name']} on {part.get('conditions') or 'unrecorded conditions'}" for part in parts)
                + ".")
    return "`CPU time / teacher`, per part: " + "; ".join(
        f"{part['name']}: {part.get('method') or 'method unrecorded'}, on "
        f"{part.get('conditions') or 'unrecorded conditions'}" for part in parts) + "."


def read_bench(path: Path) -> Dict[str, Any]:
    """A bench work directory's (or its ``bench.json``'s) recorded run; errors name the file."""
    path = Path(path)
    file = path / "bench.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no bench.json (run s3prl-distill bench there first)")
    try:
        bench = json.loads(file.read_text())
    except ValueError as error:
        raise UserError(f"{file}: not a bench.json ({error})") from None
    missing = [key for key in ("settings", "rows", "teacher_sha256", "data_digest", "low_resource_values")
               if key not in bench]
    if missing:
        raise UserError(f"{file}: no {', '.join(missing)} (written by an older s3prl-distill: run the bench there "
                        "again, it resumes from its cached stages)")
    if bench.get("parts"):
        raise UserError(f"{file} is already a merged table; merge the parts it came from")
    return {"file": file, **bench}


def _fact_row(row: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in row.items() if key not in ("tasks", "superb_score")}


def merge_benches(sources: Sequence[Path], out_dir: Path, command: Sequence[str]) -> Dict[str, Path]:
    """One table from bench runs made in parts (``--rows``, separate work directories): refused unless every part
    has the same seed, settings (``jobs`` aside), data digest and teacher SHA-256; a row in several parts must have
    the same per-seed values in each. Rows are ordered as :data:`ROW_KEYS`."""
    if len(sources) < 2:
        raise UserError("bench-merge: give two or more bench work directories")
    parts = [read_bench(source) for source in sources]
    # the merged table may replace an earlier merge, never a part's own record
    existing = Path(out_dir) / "bench.json"
    if existing.is_file():
        try:
            merged_before = bool(json.loads(existing.read_text()).get("parts"))
        except ValueError:
            merged_before = False
        if not merged_before:
            raise UserError(f"--out {out_dir}: holds a bench run's own bench.json, which the merge would overwrite; "
                            "choose another directory")
    first = parts[0]

    def shared(bench: Dict[str, Any]) -> Dict[str, Any]:
        settings = {k: v for k, v in bench["settings"].items() if k not in SHARED_SETTINGS_EXCLUDED}
        return {"seed": bench.get("seed"), "preset": bench.get("preset"), "settings": settings,
                "data_digest": bench["data_digest"], "teacher_sha256": bench["teacher_sha256"],
                "sizes": bench.get("sizes")}

    reference = shared(first)
    for part in parts[1:]:
        ours = shared(part)
        differences = [key for key in reference if ours[key] != reference[key]]
        if "settings" in differences:
            differences.remove("settings")
            differences += [f"settings.{k}" for k in reference["settings"]
                            if ours["settings"].get(k) != reference["settings"][k]]
        if differences:
            raise UserError(f"bench-merge: {part['file']} and {first['file']} are not parts of one run (they differ "
                            f"in {', '.join(differences)})")
    rows: Dict[str, Dict[str, Any]] = {}
    low: Dict[str, List[float]] = {}
    for part in parts:
        for row in part["rows"]:
            fact = _fact_row(row)
            if row["key"] in rows and rows[row["key"]]["values"] != fact["values"]:
                raise UserError(f"bench-merge: row {row['key']} has other results in {part['file']} than in an "
                                "earlier part")
            rows.setdefault(row["key"], fact)
        for key, values in part["low_resource_values"].items():
            if key in low and low[key] != values:
                raise UserError(f"bench-merge: low-resource PR of {key} differs in {part['file']}")
            low[key] = values
    facts = {
        **{key: first[key] for key in ("preset", "seed", "settings", "data_digest", "teacher_sha256", "sizes",
                                       "profile")},
        "command": list(command), "commit": None,
        "rows_selected": [key for key in ROW_KEYS if key in rows], "all_rows": set(rows) == set(ROW_KEYS),
        "rows": [rows[key] for key in ROW_KEYS if key in rows],
        "low_resource_values": {key: low[key] for key in ROW_KEYS if key in low},
        "stage_seconds": {},
        "parts": [{"name": Path(part["file"]).parent.name, "file": str(part["file"]), "rows": part["rows_selected"],
                   "commit": part.get("commit"), "command": part.get("command", []),
                   "stage_seconds": part.get("stage_seconds", {}),
                   "method": part.get("profile", {}).get("method"),
                   "conditions": part.get("profile", {}).get("conditions")} for part in parts],
    }
    return render_bench(facts, out_dir)
