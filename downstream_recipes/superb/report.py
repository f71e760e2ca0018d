"""Results of one or several SUPERB sweeps as a Markdown table and a PNG bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .tasks import TASKS


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished `s3prl-distill superb` run?")
    return json.loads(path.read_text())


def _percent(value: Optional[float]) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def markdown_table(results: Sequence[dict], extra_columns: Optional[Dict[str, List[str]]] = None) -> str:
    """One row per result; PER/WER and accuracies in %, parameters in millions. ``extra_columns`` maps a header to
    one cell per result (e.g. an inference-time ratio)."""
    tasks = [key for key in TASKS if any(key in r["tasks"] for r in results)]
    headers = ["upstream", "params (M)"] + [
        f"{TASKS[t].title} {TASKS[t].metric if TASKS[t].metric != 'accuracy' else 'acc'} % "
        f"{'↑' if TASKS[t].higher_is_better else '↓'}" for t in tasks
    ] + list(extra_columns or {})
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for index, result in enumerate(results):
        params = result.get("parameters")
        cells = [result.get("label") or result["upstream"], "–" if params is None else f"{params / 1e6:.2f}"]
        cells += [_percent(result["tasks"].get(t, {}).get("value")) for t in tasks]
        cells += [column[index] for column in (extra_columns or {}).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(results: Sequence[dict], path: Path, title: str = "SUPERB") -> Path:
    """Grouped bars per task, one bar per upstream (error rates and accuracies in %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [key for key in TASKS if any(key in r["tasks"] for r in results)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks) + 1, 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        labels = [r.get("label") or r["upstream"] for r in results]
        values = [100 * r["tasks"].get(task, {}).get("value", float("nan")) for r in results]
        bars = axis.bar(range(len(results)), values, color=[f"C{i}" for i in range(len(results))])
        for bar, value in zip(bars, values):
            if math.isfinite(value):
                axis.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                              fontsize=7)
        spec = TASKS[task]
        axis.set_title(f"{spec.title} ({spec.metric}, {'higher' if spec.higher_is_better else 'lower'} is better)",
                       fontsize=8)
        axis.set_xticks(range(len(results)))
        axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        axis.set_ylabel("%", fontsize=8)
        finite = [v for v in values if math.isfinite(v)]
        axis.set_ylim(0, 1.15 * max(finite) if finite and max(finite) > 0 else 1.0)  # rates are never negative
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(results: Sequence[dict], out_dir: Path, title: str = "SUPERB",
                 extra_columns: Optional[Dict[str, List[str]]] = None) -> Dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "results.md"
    table.write_text(f"# {title}\n\n" + markdown_table(results, extra_columns))
    return {"markdown": table, "chart": bar_chart(results, out_dir / "results.png", title)}
