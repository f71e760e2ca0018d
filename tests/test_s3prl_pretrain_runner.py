"""Our recipe under s3prl's own run_pretrain.py, in a folder shaped like an s3prl git checkout."""


import torch
import yaml

from s3prl_distill.checkpoint import load_checkpoint

from helpers import linked_checkout, random_waves, s3prl_run_pretrain


def test_link_pretrain_then_s3prl_run_pretrain_trains_and_resumes(setup, tmp_path):  # noqa: F811
    workdir = linked_checkout(tmp_path)

    ours = yaml.safe_load(setup["config"].read_text())
    model_config = tmp_path / "config_model.yaml"
    model_config.write_text(yaml.safe_dump({k: ours[k] for k in ("teacher", "student", "student_init", "method")}))
    runner_config = tmp_path / "config_runner.yaml"
    runner_config.write_text(yaml.safe_dump({
        "runner": {"n_epochs": -1, "total_steps": 4, "gradient_clipping": 5.0, "gradient_accumulate_steps": 1,
                   "log_step": 1, "save_step": 2, "max_keep": 5, "fp16": False},
        "optimizer": {"name": "AdamW_with_schedule", "lr": 1.0e-3, "warmup_proportion": 0.07},
        "pretrain_expert": {"datarc": ours["data"]},
    }))
    s3prl_run_pretrain(workdir, "-u", "distilhubert", "-g", str(model_config), "-c", str(runner_config),
                       "-n", "s3prl_run")
    expdir = workdir / "result" / "pretrain" / "s3prl_run"
    checkpoint_path = expdir / "states-4.ckpt"
    assert checkpoint_path.is_file(), sorted(p.name for p in expdir.iterdir())

    # Its checkpoints load in our upstream and in s3prl's stock distiller_local, with the same features.
    checkpoint = load_checkpoint(checkpoint_path)
    assert checkpoint["Config"]["runner"]["total_steps"] == 4 and "distiller" in checkpoint["Config"]
    import s3prl.hub as hub

    a = hub.distilhubert_local(ckpt=str(checkpoint_path)).eval()
    b = hub.distiller_local(ckpt=str(checkpoint_path)).eval()
    waves = random_waves([16000])
    with torch.no_grad():
        difference = max((x - y).abs().max().item()
                         for x, y in zip(a(waves)["hidden_states"], b(waves)["hidden_states"]))
    assert difference <= 1e-4

    # s3prl's own resume (-e) works on these checkpoints (its distiller's does not: Config held the model config).
    s3prl_run_pretrain(workdir, "-e", str(expdir / "states-2.ckpt"))
