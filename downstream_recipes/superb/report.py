"""Results of one or several SUPERB sweeps as a Markdown table and a PNG bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from .tasks import TASKS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished `s3prl-distill superb` run?")
    return json.loads(path.read_text())


def _percent(value: Optional[float]) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _task_cell(entry: dict) -> str:
    """A task's value in %, as ``mean ± sd`` where the entry carries the seed-to-seed ``sd``."""
    cell = _percent(entry.get("value"))
    sd = entry.get("sd")
    return cell if sd is None or cell == "–" else f"{cell} ± {_percent(sd)}"


def markdown_table(results: Sequence[dict], extra_columns: Optional[Dict[str, List[str]]] = None) -> str:
    """One row per result; PER/WER and accuracies in %, parameters in millions; a task entry with an ``sd`` (the
    standard deviation over downstream seeds, ``value`` then being their mean) shows as ``mean ± sd``.
    ``extra_columns`` maps a header to one cell per result (e.g. an inference-time ratio)."""
    tasks = [key for key in TASKS if any(key in r["tasks"] for r in results)]
    headers = ["upstream", "params (M)"] + [
        f"{TASKS[t].title} {TASKS[t].metric if TASKS[t].metric != 'accuracy' else 'acc'} % "
        f"{'↑' if TASKS[t].higher_is_better else '↓'}" for t in tasks
    ] + list(extra_columns or {})
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for index, result in enumerate(results):
        params = result.get("parameters")
        cells = [result.get("label") or result["upstream"], "–" if params is None else f"{params / 1e6:.2f}"]
        cells += [_task_cell(result["tasks"].get(t, {})) for t in tasks]
        cells += [column[index] for column in (extra_columns or {}).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart_figure(results: Sequence[dict], title: str = "SUPERB") -> "Figure":
    """Grouped bars per task, one bar per upstream (error rates and accuracies in %), as a matplotlib figure.

    The upstreams are named once, in a legend under the panels (the bars' colours), not under every panel's bars
    where long names crowd; each value stands upright above its bar, so equal bars (``100.0`` five times) cannot run
    into each other; and the panels widen with the number of bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [key for key in TASKS if any(key in r["tasks"] for r in results)]
    labels = [r.get("label") or r["upstream"] for r in results]
    # matplotlib's 10 default colours, or 20 distinct ones for more bars (the bench's 12 rows): never two alike
    colours = ([f"C{i}" for i in range(len(results))] if len(results) <= 10 else
               [plt.get_cmap("tab20")(i % 20) for i in range(len(results))])
    panel_width = max(2.2, 0.32 * len(results) + 1.0)
    width = panel_width * len(tasks) + 0.6
    # The legend's columns: as many of the longest name as fit across the figure (about 0.07 in a character at 7 pt).
    columns = max(1, min(len(labels), int(width // (0.07 * max(len(label) for label in labels) + 0.5))))
    legend_height = 0.22 * math.ceil(len(labels) / columns) + 0.15
    height = 3.0 + legend_height
    figure, axes = plt.subplots(1, len(tasks), figsize=(width, height), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        values = [100 * r["tasks"].get(task, {}).get("value", float("nan")) for r in results]
        bars = axis.bar(range(len(results)), values, color=colours, label=labels)
        finite = [v for v in values if math.isfinite(v)]
        top = max(finite) if finite and max(finite) > 0 else 1.0
        for bar, value in zip(bars, values):
            if math.isfinite(value):
                axis.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 2),
                              textcoords="offset points", ha="center", va="bottom", rotation=90, fontsize=7)
        spec = TASKS[task]
        axis.set_title(f"{spec.title} ({spec.metric}, {'higher' if spec.higher_is_better else 'lower'} is better)",
                       fontsize=8)
        axis.set_xticks([])
        axis.set_ylabel("%", fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
        axis.set_ylim(0, 1.3 * top)  # rates are never negative; the headroom holds the upright values
    figure.legend(axes[0][0].containers[0], labels, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    return figure


def bar_chart(results: Sequence[dict], path: Path, title: str = "SUPERB") -> Path:
    """:func:`chart_figure` written to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    figure = chart_figure(results, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(results: Sequence[dict], out_dir: Path, title: str = "SUPERB",
                 extra_columns: Optional[Dict[str, List[str]]] = None, notes: Sequence[str] = ()) -> Dict[str, Path]:
    """``results.md`` (the table, then each of ``notes`` as a paragraph: how a column was measured, say) and
    ``results.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "results.md"
    table.write_text(f"# {title}\n\n" + markdown_table(results, extra_columns)
                     + "".join(f"\n{note.strip()}\n" for note in notes))
    return {"markdown": table, "chart": bar_chart(results, out_dir / "results.png", title)}
