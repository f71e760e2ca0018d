"""The training step's performance contract: no device reads between logs, non-finite updates skipped on the device,
and ``runner.compile`` training like eager mode."""

import dataclasses
import logging
import sys
from pathlib import Path

import torch


from helpers import make_trainer

# Tensor -> Python conversions: on a GPU each one waits for the device to finish all queued work.
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
# Host-side by design: the data pipeline builds CPU batches, the teacher is an s3prl upstream taking a list of
# waveforms (s3prl's own code inside it is not ours to change), and the student's padding check reads CPU lengths.
HOST_SIDE = {("data.py", None), ("dataloader.py", None), ("fetch.py", None), ("teacher.py", "forward"),
             ("task.py", "_padded_lengths")}


def host_side(frame) -> bool:
    while frame is not None:
        name = Path(frame.f_code.co_filename).name
        if (name, None) in HOST_SIDE or (name, frame.f_code.co_name) in HOST_SIDE:
            return True
        frame = frame.f_back
    return False


def test_no_tensor_is_read_back_between_logs(setup, tmp_path, monkeypatch):
    # Padded batches too: max_length above the shortest utterances (0.5 s = 8000 samples).
    trainer = make_trainer(setup, tmp_path / "run", "config.runner.total_steps=4,,config.runner.log_step=4,,"
                                                     "config.runner.save_step=4,,config.data.max_length=16000")
    reads = []

    def watch(name):
        original = getattr(torch.Tensor, name)

        def wrapper(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            if trainer.step < 3 and not host_side(caller):  # steps 1-3 log nothing; step 4 logs and saves
                reads.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno} ({caller.f_code.co_name})")
            return original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in READS:
        watch(name)
    padded = []
    original_losses = trainer.task.losses

    def losses(student, waveforms, lengths, *args, **kwargs):
        padded.append(not torch.equal(lengths, torch.full_like(lengths, waveforms.shape[1])))
        return original_losses(student, waveforms, lengths, *args, **kwargs)

    trainer.task.losses = losses
    trainer.train()
    monkeypatch.undo()
    assert trainer.step == 4 and (tmp_path / "run" / "states-4.ckpt").exists()
    assert any(padded) and not all(padded)  # both student paths ran: masked statistics and the fused GroupNorm
    assert reads == []


def test_non_finite_gradients_skip_the_update_and_are_reported(setup, tmp_path, caplog):
    # A constant lr: a decaying schedule gives the last update (here step 3, checked to train) lr 0.
    trainer = make_trainer(setup, tmp_path / "run", "config.runner.total_steps=3,,config.runner.log_step=3,,"
                                                    "config.runner.save_step=3,,config.scheduler.name=constant")
    original_losses = trainer.task.losses
    snapshots = []

    def losses(*args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in trainer.student.state_dict().items()})
        terms = original_losses(*args, **kwargs)
        if trainer.step == 1:  # the second step's loss (and so every gradient) is NaN
            first = next(iter(terms))
            terms[first] = dataclasses.replace(terms[first], sums=terms[first].sums * float("nan"))
        return terms

    trainer.task.losses = losses
    with caplog.at_level(logging.WARNING):
        trainer.train()
    before_bad, after_bad = snapshots[1], snapshots[2]
    assert all(torch.equal(before_bad[k], after_bad[k]) for k in before_bad)  # step 2 changed nothing
    assert not all(torch.equal(snapshots[0][k], before_bad[k]) for k in before_bad)  # step 1 did train
    final = trainer.student.state_dict()
    assert not all(torch.equal(after_bad[k], final[k]) for k in final)  # step 3 trained again
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    assert "1 update(s) skipped" in caplog.text
    steps = [int(state["step"]) for state in trainer.optimizer.state.values()]
    assert set(steps) == {2}  # AdamW's bias correction counts only the updates made


def test_compiled_student_trains_like_eager(setup, tmp_path):
    # One step: a second batch of another length would recompile with dynamic shapes, doubling the compile time.
    overrides = ("config.runner.total_steps=1,,config.runner.save_step=1,,config.runner.log_step=1,,"
                 "config.student.encoder.dropout=0.0,,config.student.encoder.attention_dropout=0.0,,"
                 "config.student.encoder.activation_dropout=0.0,,config.scheduler.name=constant")
    eager = make_trainer(setup, tmp_path / "eager", overrides)
    initial = {k: v.clone() for k, v in eager.student.state_dict().items()}
    eager.train()
    compiled = make_trainer(setup, tmp_path / "compiled", overrides + ",,config.runner.compile=true")
    compiled.train()
    assert hasattr(compiled.student, "_compiled_call_impl") and compiled.student._compiled_call_impl is not None
    a, b = eager.student.state_dict(), compiled.student.state_dict()
    assert a.keys() == b.keys()  # checkpoints keep the eager module's names
    assert max((a[k] - initial[k]).abs().max().item() for k in a if a[k].is_floating_point()) > 1e-4
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
