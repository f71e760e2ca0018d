"""``metrics.jsonl``: the runner's log steps as data, one JSON object per line, for tests and plots.

Each record holds ``step`` and the values of that step's log line: ``loss`` (the weighted total), ``lr``,
``grad_norm``, ``utterances_per_s``, every loss term per target (``regression/layer4``, ...) and the method's own
scalars (DPHuBERT's ``expected_params``, ``lambda1``, ...). Only rank 0 writes; each line is flushed when written.

Resume: a run resumed from its step-N checkpoint drops the records past N (they belong to the continuation that
was lost) and appends from there, so each step appears once and the file follows the trajectory the weights
followed. A run resumed into another directory (``-e CKPT -n NEW``) starts a new file there at step N + 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Union

from s3prl_distill.errors import UserError

METRICS_NAME = "metrics.jsonl"


class MetricsError(UserError, ValueError):
    """A ``metrics.jsonl`` line that is not a record (edited by hand, or another file under that name): named with
    its line, and the file is left as it is (a resume stops instead of rewriting it)."""


def _complete_records(path: Path) -> List[dict]:
    """The records of ``path``; a last line cut short (the process died while writing it) is not one."""
    text = path.read_text()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:  # no final newline: an interrupted write
        lines.pop()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsError(f"{path}, line {number}: not a JSON record ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MetricsError(f"{path}, line {number}: a metrics record is an object with an integer 'step'")
        records.append(record)
    return records


def read_metrics(expdir: Union[str, Path]) -> List[Dict[str, float]]:
    """The records of a run directory's ``metrics.jsonl`` (or of that file itself), in step order.

    Raises ``FileNotFoundError`` naming the file when the run has none (a run of s3prl's ``run_pretrain.py`` logs to
    TensorBoard only), and :class:`MetricsError` naming the line for a malformed record.
    """
    path = Path(expdir)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file (written by `s3prl-distill pretrain` runs)")
    return _complete_records(path)


def metric_values(records: List[Dict[str, float]], key: str) -> List[float]:
    """``key``'s value at every record that has it (e.g. ``loss``), in step order."""
    return [record[key] for record in records if key in record]


class MetricsWriter:
    """Appends one line per log step to ``EXPDIR/metrics.jsonl`` and flushes it; see the module docstring."""

    def __init__(self, expdir: Path, resumed_step: int = 0) -> None:
        self.path = Path(expdir) / METRICS_NAME
        if self.path.exists():
            self._truncate_after(resumed_step)
        self._file = self.path.open("a")

    def _truncate_after(self, step: int) -> None:
        """Keep the complete records up to ``step``, atomically (a crash here leaves the old file whole)."""
        kept = [record for record in _complete_records(self.path) if record["step"] <= step]
        temporary = self.path.with_name(f".{METRICS_NAME}.tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(temporary, self.path)

    def write(self, step: int, scalars: Dict[str, float]) -> None:
        record = {"step": step, **{key: float(value) for key, value in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

