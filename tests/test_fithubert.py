"""FitHuBERT: time reduction, hint heads, the official release layout, the upstream contract, training."""

from pathlib import Path

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.fithubert import export_lightning
from s3prl_distill.model import StudentConfig, StudentModel, fithubert_config
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.upstream.interfaces import pad_waveforms

from helpers import pretrain, random_waves, tiny_fithubert


def fithubert_local(**kwargs):
    from s3prl_distill.upstream.fithubert.hubconf import fithubert_local as entry

    return entry(**kwargs)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """The same random weights as our checkpoint and in the official release layout (+ its YAML)."""
    folder = tmp_path_factory.mktemp("fithubert")
    config = tiny_fithubert(out_dim=64)
    torch.manual_seed(0)
    model = StudentModel(config)
    with torch.no_grad():  # move LayerNorm/bias parameters off their 1/0 defaults
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    save_checkpoint(export_student("fithubert", config, model.state_dict()), folder / "ours.ckpt")
    official, training_yaml = export_lightning(config, model.state_dict())
    # What a real release also holds: the teacher's weights.
    official["state_dict"]["teacher_model.encoder.layer_norm.weight"] = torch.ones(768)
    torch.save(official, folder / "official.ckpt")
    training_yaml.update(teacher={"teacher_model": "hubert_base_ls960.pt"}, train={"rec_loss_type": "mse"})
    (folder / "official.yaml").write_text(yaml.safe_dump(training_yaml))
    return {"ours": folder / "ours.ckpt", "official": folder / "official.ckpt", "yaml": folder / "official.yaml",
            "model": model.eval(), "config": config}


def test_sizes_match_the_paper():
    from s3prl_distill.upstream.fithubert.adapter import parameter_counts

    counts = parameter_counts(StudentModel(fithubert_config()))
    assert counts["backbone"] == 21_200_096
    assert counts["inference"] == 21_200_096 + 830_688  # + the layer-12 head the official upstream keeps
    assert counts["paper"] == 22_492_064  # the paper's 22.49 M: + the unused top-level upsampler
    assert counts["with_all_heads"] == 21_200_096 + 12 * 830_688


def test_time_reduction_halves_frames_and_handles_odd_counts_and_padding():
    torch.manual_seed(0)
    model = StudentModel(tiny_fithubert()).eval()
    waves = random_waves([16000, 12345, 9999, 400 + 320], seed=1)  # 49, 38, 30, 2 CNN frames
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    batch = model(padded, torch.tensor([w.numel() for w in waves]))
    assert batch.lengths.tolist() == [49, 38, 30, 2]
    assert batch.layer_outputs[0].shape[1] == 24 and batch.predictions.shape[2] == 48
    for index, wave in enumerate(waves):
        alone = model(wave[None])
        half = alone.layer_outputs[0].shape[1]
        assert half == [24, 19, 15, 1][index]
        for in_batch, single in zip(batch.layer_outputs, alone.layer_outputs):
            assert (in_batch[index, :half] - single[0]).abs().max() <= 1e-4
        assert (batch.predictions[index, :, : 2 * half] - alone.predictions[0]).abs().max() <= 1e-4



@pytest.mark.parametrize("frames", [10, 11])
def test_time_reduction_gemm_equals_the_strided_conv(frames):
    """The time reduction runs as a GEMM on (B, T, C) frames: it must equal the Conv1d (kernel = stride = factor) it
    replaces, on even and odd frame counts, outputs and gradients."""
    from s3prl_distill.model.encoder import TimeReduction

    torch.manual_seed(0)
    for factor in (2, 3):
        reduction = TimeReduction(12, factor)
        x = torch.randn(3, frames, 12, requires_grad=True)
        y, lengths = reduction(x, torch.tensor([frames, frames - 1, 4]))
        reference = torch.nn.functional.conv1d(x.transpose(1, 2), reduction.conv.weight, reduction.conv.bias,
                                               stride=factor).transpose(1, 2)
        assert y.shape == reference.shape == (3, frames // factor, 12) and y.is_contiguous()
        assert (y - reference).abs().max() <= 1e-5
        assert lengths.tolist() == [frames // factor, (frames - 1) // factor, 4 // factor]
        grad = torch.randn_like(y)
        ours = torch.autograd.grad(y, (x, reduction.conv.weight), grad)
        theirs = torch.autograd.grad(reference, (x, reduction.conv.weight), grad)
        for a, b in zip(ours, theirs):
            assert (a - b).abs().max() <= 1e-5


def official_key_names(config: StudentConfig) -> set:
    """The official CustomStudentModel state-dict names, spelt out from its module structure."""
    names = set()
    for i, _ in enumerate(config.feature_extractor.conv_layers):
        names.add(f"feature_extractor.conv_layers.{i}.0.weight")
    names |= {"feature_extractor.conv_layers.0.2.weight", "feature_extractor.conv_layers.0.2.bias"}
    names |= {"layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight", "post_extract_proj.bias",
              "upsampler.weight", "upsampler.bias",  # built by the official model even though it is never used
              "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias",
              "encoder.layer_norm.weight", "encoder.layer_norm.bias",
              "encoder.layers.0.weight", "encoder.layers.0.bias"}  # the time-reduction Conv1d
    for layer in range(1, config.encoder.num_layers + 1):
        for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2",
                       "self_attn_layer_norm", "final_layer_norm"):
            names |= {f"encoder.layers.{layer}.{module}.weight", f"encoder.layers.{layer}.{module}.bias"}
    for head in range(config.encoder.num_layers):
        for module in ("upsampler", "lin_proj"):
            names |= {f"proj_head.{head}.{module}.weight", f"proj_head.{head}.{module}.bias"}
    return names


def test_export_uses_the_official_names(tiny_checkpoints):
    state = load_checkpoint(tiny_checkpoints["official"])["state_dict"]
    student = {k[len("student_model."):] for k in state if k.startswith("student_model.")}
    # Exactly the official model's state dict: its loader is strict.
    assert student == official_key_names(tiny_checkpoints["config"])
    assert state["student_model.upsampler.weight"].shape == (48, 48, 2)
    assert state["student_model.encoder.layers.0.weight"].shape == (48, 48, 2)
    assert state["student_model.proj_head.2.lin_proj.weight"].shape == (64, 48)


def test_official_release_gives_the_same_outputs_as_our_format(tiny_checkpoints):
    ours = fithubert_local(ckpt=str(tiny_checkpoints["ours"])).eval()
    official = fithubert_local(ckpt=str(tiny_checkpoints["official"]), model_config=str(tiny_checkpoints["yaml"])).eval()
    waves = random_waves([16000, 12345], seed=3)
    with torch.no_grad():
        a, b = ours(waves), official(waves)
        direct = tiny_checkpoints["model"](waves[0][None])
    for key in ("hidden_states", "hidden_states_40ms", "head_outputs", "last_hidden_state"):
        left = a[key] if isinstance(a[key], list) else [a[key]]
        right = b[key] if isinstance(b[key], list) else [b[key]]
        assert max((x - y).abs().max().item() for x, y in zip(left, right)) <= 1e-5, key
    # ...and they are the weights we saved: last head of the model itself.
    assert (a["last_hidden_state"][0, :48] - direct.predictions[0, -1]).abs().max() <= 1e-4


def test_output_contract_and_featurizer(tiny_checkpoints):
    from s3prl.upstream.interfaces import Featurizer

    upstream = fithubert_local(ckpt=str(tiny_checkpoints["ours"])).eval()
    rates = {"hidden_states": 320, "hidden_states_40ms": 640, "head_outputs": 320, "last_hidden_state": 320}
    for key, rate in rates.items():
        assert upstream.get_downsample_rates(key) == rate
    with pytest.raises(KeyError, match="no feature 'paper'"):
        upstream.get_downsample_rates("paper")
    for lengths in ([16000, 12345], [720, 16321, 8000], [32000]):  # odd and even CNN frame counts, a 2-frame input
        waves = random_waves(lengths, seed=len(lengths))
        with torch.no_grad():
            out = upstream(waves)
        states = out["hidden_states"]
        assert len(states) == 1 + 3 and all(s.shape == states[0].shape and s.shape[-1] == 48 for s in states)
        assert all(s.shape[-1] == 48 for s in out["hidden_states_40ms"]) and out["last_hidden_state"].shape[-1] == 64
        for key in ("hidden_states", "hidden_states_40ms", "head_outputs", "last_hidden_state"):
            featurizer = Featurizer(upstream, feature_selection=key, upstream_device="cpu")
            with torch.no_grad():
                features = featurizer(waves, upstream(waves))  # asserts |T - round(len / rate)| < 5 inside
            assert len(features) == len(waves)


def test_trained_and_repeat_upsampling_differ_only_in_layers(tiny_checkpoints):
    repeat = fithubert_local(ckpt=str(tiny_checkpoints["ours"])).eval()
    trained = fithubert_local(ckpt=str(tiny_checkpoints["ours"]), upsample="trained").eval()
    waves = random_waves([16000])
    with torch.no_grad():
        a, b = repeat(waves), trained(waves)
    assert torch.equal(a["hidden_states"][0], b["hidden_states"][0])
    assert torch.equal(a["hidden_states"][1][:, 0], a["hidden_states"][1][:, 1])  # frame repeated
    assert not torch.allclose(a["hidden_states"][1], b["hidden_states"][1])
    assert torch.equal(a["last_hidden_state"], b["last_hidden_state"])


def test_official_checkpoint_without_its_yaml_says_what_to_do(tiny_checkpoints):
    with pytest.raises(CheckpointError, match="official FitHuBERT Lightning checkpoint: also pass its training YAML"):
        fithubert_local(ckpt=str(tiny_checkpoints["official"]))


def test_default_location(tiny_checkpoints, monkeypatch, tmp_path):
    from s3prl_distill.upstream import expert
    from s3prl_distill.upstream.fithubert import hubconf

    monkeypatch.setattr(expert, "default_location", lambda family: tmp_path / "cache" / family)
    ckpt_variable, config_variable = expert.location_variables("fithubert")
    assert (ckpt_variable, config_variable) == ("S3PRL_DISTILL_FITHUBERT", "S3PRL_DISTILL_FITHUBERT_CONFIG")
    monkeypatch.delenv(ckpt_variable, raising=False)
    with pytest.raises(FileNotFoundError) as error:
        hubconf.fithubert()
    message = str(error.value)
    assert str(tmp_path / "cache" / "fithubert" / "FitHuBERT.ckpt") in message and ckpt_variable in message
    monkeypatch.setenv(ckpt_variable, str(tiny_checkpoints["official"]))
    monkeypatch.setenv(config_variable, str(tiny_checkpoints["yaml"]))
    assert hubconf.fithubert().get_downsample_rates("last_hidden_state") == 320
    monkeypatch.delenv(ckpt_variable)
    (tmp_path / "cache" / "fithubert").mkdir(parents=True)
    (tmp_path / "cache" / "fithubert" / "FitHuBERT.ckpt").write_bytes(tiny_checkpoints["ours"].read_bytes())
    assert hubconf.fithubert() is not None
    assert hubconf.fithubert(ckpt=str(tiny_checkpoints["ours"])) is not None  # -k wins


def test_fithubert_distillation_steps(setup, tmp_path):
    config = yaml.safe_load(setup["config"].read_text())
    config["student"] = tiny_fithubert(out_dim=48).to_dict()
    config["student_init"] = {}
    config["method"] = {"name": "fithubert", "hint_layers": [1, 2]}
    config["runner"].update(total_steps=12, save_step=12)
    path = tmp_path / "fithubert.yaml"
    path.write_text(yaml.safe_dump(config))
    result = pretrain(["-g", str(path), "-n", "fit", "-p", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(tmp_path / "fit")
    assert any("final/layer3" in r and "hint/layer1" in r and "hint/layer2" in r for r in records)
    losses = metric_values(records, "loss")
    assert losses[-1] < losses[0]
    upstream = fithubert_local(ckpt=str(tmp_path / "fit" / "states-12.ckpt")).eval()
    with torch.no_grad():
        assert upstream(random_waves([16000]))["last_hidden_state"].shape == (1, 48, 48)


def test_shipped_fithubert_configs():
    root = Path(__file__).resolve().parents[1] / "pretrain" / "fithubert"
    from s3prl_distill.pretrain.config import load_config
    from s3prl_distill.pretrain.s3prl_link import generate_configs  # s3prl's config_model.yaml

    fit, w2v = load_config(root / "config.yaml"), load_config(root / "config_fitw2v2.yaml")
    assert fit.student == w2v.student == fithubert_config()
    assert (fit.teacher.name, w2v.teacher.name) == ("hubert_local", "wav2vec2_local")
    assert fit.method.hint_layers == list(range(1, 12)) and fit.method.hint_weight == 0.1
    assert fit.optimizer.lr == 5.0e-4 and fit.scheduler.warmup_proportion == 0.05
    assert fit.data.train_batch_size * fit.runner.gradient_accumulate_steps == 24
    full = yaml.safe_load((root / "config.yaml").read_text())
    model = yaml.safe_load(generate_configs(root / "config.yaml")["config_model.yaml"])
    assert model == {k: full[k] for k in ("teacher", "student", "student_init", "follow_teacher", "method")}


def test_heads_run_only_for_the_key_that_is_read(tiny_checkpoints):
    upstream = fithubert_local(ckpt=str(tiny_checkpoints["ours"])).eval()
    calls = []
    for index, head in enumerate(upstream.model.prediction_head.heads):
        head.register_forward_hook(lambda module, args, output, index=index: calls.append(index))
    waves = random_waves([16000, 12345], seed=5)
    with torch.no_grad():
        out = upstream(waves)
        out["hidden_states"]
        assert calls == []  # the weighted-sum protocol needs no head
        out["last_hidden_state"]
        assert calls == [2]
        heads = out["head_outputs"]
        assert calls == [2, 0, 1]  # the last head is not run again
        assert out["last_hidden_state"] is heads[-1]
        reference = upstream.model(*pad_waveforms(waves))
    frames = heads[0].shape[1]
    assert torch.equal(torch.stack(heads, dim=1), reference.predictions[:, :, :frames])
    assert set(out) == {"hidden_states", "hidden_states_40ms", "head_outputs", "last_hidden_state"}
    with pytest.raises(KeyError):
        out["paper"]
    # s3prl reads the features after leaving its no_grad block: they are still computed without a graph.
    assert not out["hidden_states"][1].requires_grad and not heads[0].requires_grad
    assert upstream(waves)["last_hidden_state"].requires_grad
