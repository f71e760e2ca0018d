"""The runner's ``metrics.jsonl``: one record per log step with the log line's values, and one record per step
across a resume (records past the resumed checkpoint, and a line cut short by a kill, are dropped)."""

import json
import math

import pytest

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.errors import UserError
from s3prl_distill.pretrain.metrics import METRICS_NAME, MetricsError, MetricsWriter, metric_values, read_metrics
from s3prl_distill.pretrain.runner import Trainer

from helpers import make_trainer

OVERRIDES = "config.runner.total_steps=4,,config.runner.save_step=2,,config.runner.log_step=1"


def test_records_hold_every_logged_value_and_a_resume_appends_each_step_once(setup, tmp_path):
    full = make_trainer(setup, tmp_path / "run", OVERRIDES)
    full.train()
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    layers = full.config.student.prediction_head.target_layers
    for record in records:
        # DistilHuBERT's two terms, per target layer, next to the totals and the throughput.
        expected = {"step", "loss", "lr", "grad_norm", "utterances_per_s",
                    *(f"{term}/layer{layer}" for term in ("regression", "cosine") for layer in layers)}
        assert set(record) == expected, record.keys()
        assert all(math.isfinite(v) and v >= 0 for k, v in record.items() if k != "step")
        assert record["utterances_per_s"] > 0 and record["grad_norm"] > 0
    # No warmup, linear decay to 0: each record has the lr of the update just made, t = 1..4 of T = 4.
    assert metric_values(records, "lr") == pytest.approx([1.5e-3, 1.0e-3, 0.5e-3, 0.0], abs=1e-12)

    # Resume at step 2 in the same directory, after a kill that had logged steps 3 and 4 and cut a fifth line short.
    path = tmp_path / "run" / METRICS_NAME
    path.write_text(path.read_text() + '{"step": 5, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]  # the cut line is not a record
    resumed = Trainer(full.config, tmp_path / "run", load_checkpoint(tmp_path / "run" / "states-2.ckpt"))
    resumed.train()
    again = read_metrics(tmp_path / "run")
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert again[:2] == records[:2]  # kept as written
    # Steps 3 and 4 are the resumed run's own, equal to the uninterrupted run's (exact resume).
    assert metric_values(again, "loss") == pytest.approx(metric_values(records, "loss"), rel=1e-6)
    assert not (tmp_path / "run" / f".{METRICS_NAME}.tmp").exists()


def test_a_resume_from_an_earlier_checkpoint_drops_the_later_records(setup, tmp_path):
    trainer = make_trainer(setup, tmp_path / "run", OVERRIDES)
    trainer.train()
    writer = MetricsWriter(tmp_path / "run", resumed_step=1)
    writer.write(2, {"loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "run")][1:] == [(2, 0.5)]


def test_reading_a_bad_or_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / METRICS_NAME)):
        read_metrics(tmp_path)
    path = tmp_path / METRICS_NAME
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\nnot json\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(ValueError, match=f"{path}, line 2: not a JSON record"):
        read_metrics(path)
    path.write_text(json.dumps({"loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="line 1: a metrics record is an object with an integer 'step'"):
        read_metrics(tmp_path)


def test_a_resume_over_a_malformed_file_stops_with_its_line_and_leaves_it_as_it_is(tmp_path):
    path = tmp_path / METRICS_NAME
    text = json.dumps({"step": 1, "loss": 1.0}) + "\n{half a record\n" + json.dumps({"step": 3, "loss": 0.5}) + "\n"
    path.write_text(text)
    with pytest.raises(MetricsError, match=f"{path}, line 2: not a JSON record") as error:
        MetricsWriter(tmp_path, resumed_step=3)
    assert isinstance(error.value, UserError)  # the command line prints the message, without a traceback
    assert path.read_text() == text
