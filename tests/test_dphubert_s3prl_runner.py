"""DPHuBERT under s3prl's own pretrain loop: the expert's gate/λ optimizer, stepped with s3prl's, trains what our
runner trains on the same batches; s3prl's run_pretrain.py runs it and resumes it with -e."""

from __future__ import annotations


import torch
import yaml

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.model import pruning_student_config
from s3prl_distill.pretrain.config import validate_config

from helpers import linked_checkout, s3prl_run_pretrain

STEPS = 3


def dphubert_config(setup) -> dict:  # noqa: F811
    config = yaml.safe_load(setup["config"].read_text())
    student = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2, 3]])
    config.update(
        student=student.to_dict(), student_init={"whole": True},
        method={"name": "dphubert", "target_sparsity": 0.3, "sparsity_warmup_steps": 2},
        optimizer={"name": "AdamW", "lr": 2.0e-4, "betas": [0.9, 0.999], "eps": 1.0e-8, "weight_decay": 0.0},
        scheduler={"name": "constant"},
    )
    # No clipping in either loop: s3prl's clips only the weights it optimises, ours every trained parameter.
    config["runner"].update(total_steps=STEPS, save_step=STEPS, gradient_clipping=1.0e9)
    return config


def test_expert_in_s3prls_loop_trains_what_our_runner_trains(setup, tmp_path):  # noqa: F811
    from s3prl.optimizers import get_optimizer

    from s3prl_distill.pretrain.dphubert.pretrain_expert import UpstreamPretrainExpert
    from s3prl_distill.pretrain.runner import Trainer

    config = dphubert_config(setup)
    seed = config["runner"]["seed"]
    ours = Trainer(validate_config(config, "test config"), tmp_path / "ours")
    ours.train()

    # s3prl's run_pretrain.py loop (one micro-batch): the expert's forward, backward, clip, its optimizer's step,
    # on_before_zero_grad, zero_grad; with fp16's GradScaler emulated (a loss scale that changes between steps, which
    # s3prl unscales for its own optimizer only). Seeds as our runner sets them, so batches and gate samples agree.
    torch.manual_seed(seed)
    model_sections = {key: config[key] for key in ("teacher", "student", "student_init", "method")}
    expert = UpstreamPretrainExpert(config["data"], model_sections, device="cpu")
    loader = expert.get_train_dataloader()  # s3prl's runner seeded once: the data seed is its --seed
    torch.manual_seed(seed + 1000)  # the gates' samples as our runner draws them
    optimizer = get_optimizer([expert.model], STEPS, {"name": "TorchOptim", "torch_optim_name": "AdamW",
                                                      "lr": 2.0e-4, "weight_decay": 0.0})
    expert.train()
    for global_step, data, scale in zip(range(1, STEPS + 1), loader, (2.0 ** 16, 2.0 ** 15, 2.0 ** 17)):
        loss, _ = expert(data, global_step=global_step)
        (loss * scale).backward()
        for parameter in expert.model.parameters():  # GradScaler.unscale_(s3prl's optimizer)
            parameter.grad.div_(scale)
        torch.nn.utils.clip_grad_norm_(expert.model.parameters(), 1.0e9)
        optimizer.step()
        expert.on_before_zero_grad()
        optimizer.zero_grad()

    theirs = expert.student.state_dict()
    trained = ours.student.state_dict()
    gates = [name for name in trained if name.endswith("log_alpha")]
    assert gates and set(theirs) == set(trained)
    for name, value in trained.items():
        if name.endswith("k_proj.bias"):
            # Softmax ignores a constant added to every key score, so this gradient is rounding noise and Adam
            # turns noise of any size into a full step: its updates need not agree between two correct loops.
            continue
        assert torch.allclose(theirs[name], value, rtol=1e-5, atol=1e-6), name
    penalties = zip(ours.task.method.penalty.parameters(), expert.task.method.penalty.parameters())
    for ours_lambda, their_lambda in penalties:
        assert float(ours_lambda) != 0.0 and abs(float(ours_lambda) - float(their_lambda)) < 1e-6


def test_s3prl_run_pretrain_trains_dphubert_and_resumes_with_e(setup, tmp_path):  # noqa: F811
    workdir = linked_checkout(tmp_path)

    config = dphubert_config(setup)
    config["runner"].update(total_steps=4)
    model_config = tmp_path / "dphubert.yaml"  # a whole pretrain config: -g reads its model sections
    model_config.write_text(yaml.safe_dump(config))
    # link-pretrain generated this from pretrain/dphubert/config.yaml (s3prl's TorchOptim AdamW, its scheduler).
    shipped = yaml.safe_load((workdir / "pretrain" / "dphubert" / "config_runner.yaml").read_text())
    shipped["runner"].update(total_steps=4, log_step=1, save_step=2, max_keep=5, fp16=False)
    shipped["scheduler"]["num_warmup_steps"] = 1
    shipped["pretrain_expert"]["datarc"] = config["data"]
    runner_config = tmp_path / "config_runner.yaml"
    runner_config.write_text(yaml.safe_dump(shipped))
    s3prl_run_pretrain(workdir, "-u", "dphubert", "-g", str(model_config), "-c", str(runner_config), "-n", "dp")
    expdir = workdir / "result" / "pretrain" / "dp"
    first = load_checkpoint(expdir / "states-2.ckpt")
    assert first["GateOptimizer"]["state"] and float(first["MethodState"]["penalty"]["lambda_1"]) != 0.0

    (expdir / "states-4.ckpt").unlink()
    s3prl_run_pretrain(workdir, "-e", str(expdir / "states-2.ckpt"))
    last = load_checkpoint(expdir / "states-4.ckpt")
    # The gates' optimizer went on from its saved state, in step with s3prl's (which saves Step = global step - 1
    # and so repeats one update on resume: 2 + 3 updates).
    gate_steps = {int(state["step"]) for state in last["GateOptimizer"]["state"].values()}
    main_steps = {int(state["step"]) for state in last["Optimizer"]["state"].values()}
    assert gate_steps == main_steps == {5}
    moved = [name for name, value in last["Student"].items()
             if name.endswith("log_alpha") and not torch.equal(value, first["Student"][name])]
    assert moved

    from s3prl_distill.cli import main

    main(["prune", str(expdir / "states-4.ckpt"), "--output", str(tmp_path / "pruned")])
    assert (tmp_path / "pruned" / "pruned.ckpt").is_file()
