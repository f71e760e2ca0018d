"""Blocks removed by pruning (DPHuBERT's ``use_attention`` / ``use_feed_forward`` false) have no parameters: the model,
the official-format import and export, pruning and its size bookkeeping, older checkpoints with stand-in biases,
MAC counting, and prune -> final distillation -> export -> ``dphubert_local``."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.errors import ConfigError
from s3prl_distill.formats.dphubert import dphubert_checkpoint, dphubert_state_dict, dphubert_student_config
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.model import StudentConfig, StudentModel, pruning_student_config
from s3prl_distill.model.pruning import expected_num_parameters, final_num_parameters, prune

from helpers import ALL_GATES, gated_student, random_waves, torchaudio_reference

E = 48  # the tiny models' width


def removed_block_student(layer_norm_first: bool) -> StudentModel:
    """Three layers: layer 1 without attention, layer 2 without FFN; every weight random (biases and LayerNorms
    too, so that a block that is silently kept, or a LayerNorm that is skipped, shows)."""
    data = teacher_copy_config(TINY_HUBERT).to_dict()
    data["encoder"].update(num_heads=[4, 0, 4], ffn_dim=[96, 96, 0], head_dim=12, layer_norm_first=layer_norm_first)
    data["feature_extractor"]["output_scale"] = True
    torch.manual_seed(1)
    model = StudentModel(StudentConfig.from_dict(data))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
        model.feature_extractor.output_scale.uniform_(0.5, 1.5)
    return model.eval()


def reference_layer_outputs(checkpoint: dict, wave: torch.Tensor) -> list:
    """DPHuBERT's model read from its own layout, written out independently of ours (torchaudio's computation, one
    unpadded utterance): the output of every layer, with removed blocks skipped as its EncoderLayer does."""
    config, weights = checkpoint["config"], checkpoint["state_dict"]

    def linear(x, name):
        return F.linear(x, weights[name + ".weight"], weights[name + ".bias"])

    def layer_norm(x, name):
        return F.layer_norm(x, x.shape[-1:], weights[name + ".weight"], weights[name + ".bias"])

    x = wave[None, None]
    for index, (channels, _, stride) in enumerate(config["extractor_conv_layer_config"]):
        prefix = f"feature_extractor.conv_layers.{index}."
        x = F.conv1d(x, weights[prefix + "conv.weight"], weights.get(prefix + "conv.bias"), stride=stride)
        if prefix + "layer_norm.weight" in weights:  # group_norm mode: one group per channel on layer 0
            x = F.group_norm(x, channels, weights[prefix + "layer_norm.weight"], weights[prefix + "layer_norm.bias"])
        x = F.gelu(x)
    x = x.transpose(1, 2) * weights["feature_extractor.dummy_weight"]
    x = linear(layer_norm(x, "encoder.feature_projection.layer_norm"), "encoder.feature_projection.projection")
    conv = "encoder.transformer.pos_conv_embed.conv."
    g, v = weights[conv + "weight_g"], weights[conv + "weight_v"]
    kernel = config["encoder_pos_conv_kernel"]
    y = F.conv1d(x.transpose(1, 2), g * v / v.norm(dim=(0, 1), keepdim=True), weights[conv + "bias"],
                 padding=kernel // 2, groups=config["encoder_pos_conv_groups"])
    x = x + F.gelu(y[..., : x.shape[1]]).transpose(1, 2)
    pre_ln = config["encoder_layer_norm_first"]
    if not pre_ln:
        x = layer_norm(x, "encoder.transformer.layer_norm")
    outputs = []
    for index in range(config["encoder_num_layers"]):
        prefix = f"encoder.transformer.layers.{index}."
        heads, width = config["encoder_num_heads"][index], config["encoder_head_dim"]

        def attention(h):
            split = [linear(h, prefix + f"attention.{n}_proj").view(1, -1, heads, width).transpose(1, 2)
                     for n in "qkv"]
            scores = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(width), dim=-1)
            mixed = (scores @ split[2]).transpose(1, 2).reshape(1, -1, heads * width)
            return linear(mixed, prefix + "attention.out_proj")

        def feed_forward(h):
            hidden = F.gelu(linear(h, prefix + "feed_forward.intermediate_dense"))
            return linear(hidden, prefix + "feed_forward.output_dense")

        use_attention, use_ffn = config["encoder_use_attention"][index], config["encoder_use_feed_forward"][index]
        if pre_ln:
            if use_attention:
                x = x + attention(layer_norm(x, prefix + "layer_norm"))
            if use_ffn:
                x = x + feed_forward(layer_norm(x, prefix + "final_layer_norm"))
        else:
            x = layer_norm(x + attention(x) if use_attention else x, prefix + "layer_norm")
            x = layer_norm(x + feed_forward(x) if use_ffn else x, prefix + "final_layer_norm")
        outputs.append(x)
    return outputs


def block_parameters(model: torch.nn.Module, layer: int, block: str) -> list:
    return [name for name, _ in model.named_parameters() if name.startswith(f"encoder.layers.{layer}.{block}.")]


# --- the model --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_a_removed_block_has_no_parameters_and_the_layer_computes_dphuberts(layer_norm_first):
    model = removed_block_student(layer_norm_first)
    layers = model.encoder.layers
    assert layers[1].attention is None and layers[2].feed_forward is None
    assert block_parameters(model, 1, "attention") == [] and block_parameters(model, 2, "feed_forward") == []
    assert not any(key.startswith(("encoder.layers.1.attention.", "encoder.layers.2.feed_forward."))
                   for key in model.state_dict())
    # Exactly one attention block and one FFN block fewer than the full model (their LayerNorms stay).
    full = StudentModel(model.config.model_copy(update={"encoder": model.config.encoder.model_copy(
        update={"num_heads": 4, "ffn_dim": 96})}))
    assert full.num_parameters() - model.num_parameters() == 4 * (E + 1) * E + (E + 1) * 96 + (96 + 1) * E
    exported = dphubert_checkpoint(model.config, model.state_dict(), "test")
    assert exported["config"]["encoder_use_attention"] == [True, False, True]
    assert exported["config"]["encoder_use_feed_forward"] == [True, True, False]
    wave = random_waves([8000])[0]
    with torch.no_grad():
        ours = model(wave[None]).layer_outputs
        theirs = reference_layer_outputs(exported, wave)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-5


def test_older_checkpoints_with_stand_in_blocks(tmp_path):
    """An older checkpoint of ours kept a removed block as empty projections plus an output bias: a zero bias is
    the same function and loads; a non-zero (trained) one is refused, naming the key (and, upstream, the file)."""
    import s3prl.hub as hub

    model = removed_block_student(False)
    state = dict(model.state_dict())
    stand_ins = {"encoder.layers.1.attention.q_proj.weight": torch.zeros(0, E),
                 "encoder.layers.1.attention.q_proj.bias": torch.zeros(0),
                 "encoder.layers.1.attention.k_proj.weight": torch.zeros(0, E),
                 "encoder.layers.1.attention.k_proj.bias": torch.zeros(0),
                 "encoder.layers.1.attention.v_proj.weight": torch.zeros(0, E),
                 "encoder.layers.1.attention.v_proj.bias": torch.zeros(0),
                 "encoder.layers.1.attention.out_proj.weight": torch.zeros(E, 0),
                 "encoder.layers.1.attention.out_proj.bias": torch.zeros(E),
                 "encoder.layers.2.feed_forward.fc1.weight": torch.zeros(0, E),
                 "encoder.layers.2.feed_forward.fc1.bias": torch.zeros(0),
                 "encoder.layers.2.feed_forward.fc2.weight": torch.zeros(E, 0),
                 "encoder.layers.2.feed_forward.fc2.bias": torch.zeros(E)}
    old = {**state, **stand_ins}
    loaded = StudentModel(model.config)
    loaded.load_state_dict(old, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), state.values()))
    assert "encoder.layers.1.attention.out_proj.bias" in old  # the caller's dict is not modified
    old["encoder.layers.2.feed_forward.fc2.bias"] = torch.full((E,), 0.5)
    with pytest.raises(RuntimeError, match=r"encoder\.layers\.2\.feed_forward\.fc2\.bias: .*non-zero stand-in"):
        StudentModel(model.config).load_state_dict(old, strict=True)
    path = save_checkpoint(export_student("dphubert", model.config, old), tmp_path / "old_pruned.ckpt")
    with pytest.raises(CheckpointError, match=r"(?s)old_pruned\.ckpt.*feed_forward\.fc2\.bias.*prune"):
        hub.dphubert_local(ckpt=str(path))
    # Real weights for a block the config removed are not a stand-in: the strict load names them.
    full = {**state, "encoder.layers.1.attention.out_proj.weight": torch.zeros(E, E),
            "encoder.layers.1.attention.out_proj.bias": torch.zeros(E)}
    with pytest.raises(RuntimeError, match="Unexpected key.*encoder.layers.1.attention.out_proj"):
        StudentModel(model.config).load_state_dict(full, strict=True)


# --- the official layout ------------------------------------------------------------------------------------------

class ZeroAttention(torch.nn.Module):
    """Stands in for a removed block inside stock torchaudio, whose layers always call both blocks: adding zero is
    what DPHuBERT's layer does without the block (the position bias passes through)."""

    def forward(self, x, attention_mask=None, position_bias=None, key_padding_mask=None):
        return torch.zeros_like(x), position_bias


class ZeroFeedForward(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def official_with_removed_blocks(wavlm: bool):
    """The tiny torchaudio model of test_pruning with layer 1's attention and layer 2's FFN removed, in DPHuBERT's
    format (as its prune.py writes it: no keys, 0 heads / units, use_* false) and as a reference model."""
    reference, checkpoint = torchaudio_reference(wavlm)
    layers = reference.encoder.transformer.layers
    layers[1].attention, layers[2].feed_forward = ZeroAttention(), ZeroFeedForward()
    config, state = checkpoint["config"], checkpoint["state_dict"]
    config.update(encoder_use_attention=[True, False, True], encoder_use_feed_forward=[True, True, False],
                  encoder_ff_interm_features=[96, 96, 0])
    if wavlm:
        config["encoder_remaining_heads"] = [[0, 1, 2, 3], [], [0, 1, 2, 3]]
    else:
        config["encoder_num_heads"] = [4, 0, 4]
    for key in [k for k in state if k.startswith(("encoder.transformer.layers.1.attention.",
                                                  "encoder.transformer.layers.2.feed_forward."))]:
        del state[key]
    return reference, checkpoint


@pytest.mark.parametrize("wavlm", [False, True], ids=["hubert", "wavlm"])
def test_official_checkpoint_with_removed_blocks_round_trips_and_loads_in_dphubert_local(tmp_path, wavlm):
    import s3prl.hub as hub

    from s3prl_distill.profiler import count_macs

    reference, checkpoint = official_with_removed_blocks(wavlm)
    # import -> export gives back their checkpoint exactly (the positional conv's weight norm under the names
    # DPHuBERT's torch.nn.utils.weight_norm gives it; today's torchaudio writes parametrization names, read too).
    student = dphubert_student_config(checkpoint["config"], "official")
    again = dphubert_checkpoint(student, dphubert_state_dict(checkpoint["state_dict"], student), "official")
    assert again["config"] == checkpoint["config"]
    renamed = {key.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): value
               for key, value in checkpoint["state_dict"].items()}
    assert again["state_dict"].keys() == renamed.keys()
    assert all(torch.equal(again["state_dict"][key], value) for key, value in renamed.items())
    # ... and importing that gives the same student and weights.
    assert dphubert_student_config(again["config"], "again") == student
    imported = dphubert_state_dict(again["state_dict"], student)
    original = dphubert_state_dict(checkpoint["state_dict"], student)
    assert imported.keys() == original.keys() and all(torch.equal(imported[k], v) for k, v in original.items())
    # s3prl's hub path: no parameters for the removed blocks, outputs of the reference.
    path = save_checkpoint(checkpoint, tmp_path / "pruned_hubert_base.pth")
    upstream = hub.dphubert_local(ckpt=str(path)).eval()
    assert block_parameters(upstream.model, 1, "attention") == []
    assert block_parameters(upstream.model, 2, "feed_forward") == []
    theirs_count = sum(v.numel() for k, v in checkpoint["state_dict"].items() if k != "feature_extractor.dummy_weight")
    assert upstream.model.num_parameters() == theirs_count
    wave = random_waves([16000])[0]
    with torch.no_grad():
        theirs, _ = reference.extract_features(wave[None])
        ours = upstream([wave])["hidden_states"]
    for a, b in zip(theirs, ours[1:]):
        assert (a - b).abs().max() < 1e-4
    # MACs: the removed blocks cost nothing (T frames: q/k/v/out projections + attention, WavLM's position gate
    # Linear(E / H -> 8) on each head's slice, and fc1 + fc2).
    full = hub.dphubert_local(ckpt=str(save_checkpoint(torchaudio_reference(wavlm)[1], tmp_path / "full.pth")))
    frames = ours[0].shape[1]
    removed = 4 * frames * E * E + 2 * frames * frames * E + (frames * E * 8 if wavlm else 0) + 2 * frames * E * 96
    assert count_macs(full.eval(), [wave])[0] - count_macs(upstream, [wave])[0] == removed


# --- pruning ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wavlm", [False, True], ids=["hubert", "wavlm"])
def test_pruning_removes_blocks_left_without_units_and_counts_them_as_dphubert(wavlm):
    model = gated_student(wavlm, ALL_GATES).eval()
    layers = model.encoder.layers
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("log_alpha"):
                parameter.fill_(50.0)  # every gate open...
        layers[1].attention.head_gate.log_alpha.fill_(-50.0)  # ...but every head of layer 1,
        layers[2].feed_forward.unit_gate.log_alpha.fill_(-50.0)  # every FFN unit of layer 2
        layers[0].feed_forward.layer_gate.log_alpha.fill_(-50.0)  # and layer 0's FFN as a whole block
        # The blocks to be removed get output biases, which the gated model still adds.
        layers[1].attention.out_proj.bias.normal_()
        layers[2].feed_forward.fc2.bias.normal_()
    pruned = prune(model).eval()
    config = pruned.config.encoder
    assert config.layer_num_heads() == [4, 0, 4] and config.layer_ffn_dims() == [0, 96, 0]
    for layer, block in ((1, "attention"), (2, "feed_forward"), (0, "feed_forward")):
        assert getattr(pruned.encoder.layers[layer], block) is None
        assert block_parameters(pruned, layer, block) == []
    assert pruned.num_parameters() == final_num_parameters(model)
    # DPHuBERT's expected size counts a block's output bias while its expected head / unit count tends to 0 (only
    # a block gate scales it away); the removed block has none, nor (WavLM) its position gate.
    gate = 0 if not wavlm else sum(p.numel() for n, p in layers[1].attention.named_parameters() if "gate_" in n)
    expected = float(expected_num_parameters(model).detach())
    assert expected - final_num_parameters(model) == pytest.approx(2 * E + gate, abs=0.5)
    # The pruned model is the gated one without the removed blocks' biases (DPHuBERT's prune drops them).
    with torch.no_grad():
        layers[1].attention.out_proj.bias.zero_()
        layers[2].feed_forward.fc2.bias.zero_()
        waves = random_waves([8000])[0][None]
        for a, b in zip(model(waves).hidden_states(), pruned(waves).hidden_states()):
            assert (a - b).abs().max() < 1e-5


def test_wavlm_layer_0_keeps_its_attention():
    """Layer 0 holds the relative position embedding in DPHuBERT's WavLM layout: pruning and configs keep it."""
    model = gated_student(True).eval()
    with torch.no_grad():
        model.encoder.layers[0].attention.head_gate.log_alpha.fill_(-50.0)
    with pytest.raises(ValueError, match="layer 0.*relative position"):
        prune(model)
    data = model.config.to_dict()
    data["pruning"] = None
    data["encoder"].update(num_heads=[0, 4, 4], kept_heads=[[], [0, 1, 2, 3], [0, 1, 2, 3]])
    with pytest.raises(ConfigError, match="layer 0 must keep its attention block"):
        StudentConfig.from_dict(data)


# --- prune -> final distillation -> export -> dphubert_local ------------------------------------------------------

def test_prune_final_distillation_and_export(setup, tmp_path):
    import s3prl.hub as hub

    from s3prl_distill.cli import main
    from s3prl_distill.pretrain.config import load_config
    from s3prl_distill.pretrain.dphubert.prune import prune_checkpoint
    from s3prl_distill.pretrain.runner import Trainer

    # A gated training checkpoint as `pretrain` writes it, whose gates switched off layer 1's heads and layer 2's
    # FFN units (the rest as a run would leave it: some units of each kind gone).
    student = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2, 3]])
    run = yaml.safe_load(setup["config"].read_text())
    run.update(student=student.to_dict(), student_init={"whole": True},
               method={"name": "dphubert", "target_sparsity": 0.3, "sparsity_warmup_steps": 4},
               optimizer={"lr": 2.0e-4, "weight_decay": 0.0}, scheduler={"name": "constant"})
    run["runner"].update(log_step=1, save_step=1)
    model = gated_student(False, student.pruning)
    with torch.no_grad():
        model.encoder.layers[1].attention.head_gate.log_alpha.fill_(-50.0)
        model.encoder.layers[2].feed_forward.unit_gate.log_alpha.fill_(-50.0)
    gated = {**export_student("dphubert", student, model.state_dict()), "RunConfig": run, "Step": 8}
    path = save_checkpoint(gated, tmp_path / "run" / "states-8.ckpt")
    summary = prune_checkpoint(path, tmp_path / "pruned", final_steps=1)
    assert summary["removed_attention_blocks"] == [1] and summary["removed_feed_forward_blocks"] == [2]
    assert "s3prl-distill export" in summary["export"] and "--to dphubert" in summary["export"]
    # --format safetensors: pruned.safetensors in place of pruned.ckpt, read back by the normal loading path as the
    # same student, and the final-distill config starts from it.
    main(["prune", str(path), "--output", str(tmp_path / "pruned_st"), "--final-steps", "1",
          "--format", "safetensors"])
    assert not (tmp_path / "pruned_st" / "pruned.ckpt").exists()
    shared = tmp_path / "pruned_st" / "pruned.safetensors"
    _assert_same_student(load_checkpoint(shared), load_checkpoint(tmp_path / "pruned" / "pruned.ckpt"))
    final_config = load_config(tmp_path / "pruned_st" / "final_distill.yaml")
    assert final_config.student_init.checkpoint == str(shared.resolve())

    # The final distillation from the safetensors start, writing each step's student as safetensors too.
    trainer = Trainer(final_config, tmp_path / "final", student_format="safetensors")
    trainer.train()  # one step of the final distillation
    trainable = [name for name, p in trainer.student.named_parameters() if p.requires_grad]
    assert trainable and not [name for name in trainable
                              if name.startswith(("encoder.layers.1.attention.", "encoder.layers.2.feed_forward."))]
    student_parameters = {id(p) for p in trainer.student.parameters()}
    assert all(id(p) in student_parameters for group in trainer.optimizer.param_groups for p in group["params"])
    final = tmp_path / "final" / "states-1.ckpt"
    trained, start = load_checkpoint(final)["Student"], load_checkpoint(tmp_path / "pruned" / "pruned.ckpt")["Student"]
    assert trained.keys() == start.keys()
    _assert_same_student(load_checkpoint(tmp_path / "final" / "states-1.safetensors"), load_checkpoint(final))
    assert not any(key.startswith(("encoder.layers.1.attention.", "encoder.layers.2.feed_forward.")) for key in trained)
    # The LayerNorms of a post-LN layer without attention still act, and train.
    norm = "encoder.layers.1.attention_norm.weight"
    assert not torch.equal(trained[norm], start[norm])

    exported = tmp_path / "pruned_dphubert.pth"
    main(["export", str(final), "--to", "dphubert", str(exported)])
    written = load_checkpoint(exported)
    assert written["config"]["encoder_use_attention"] == [True, False, True]
    assert written["config"]["encoder_use_feed_forward"] == [True, True, False]
    ours, theirs = hub.dphubert_local(ckpt=str(final)).eval(), hub.dphubert_local(ckpt=str(exported)).eval()
    waves = random_waves([16000, 9000])
    with torch.no_grad():
        for a, b in zip(ours(waves)["hidden_states"], theirs(waves)["hidden_states"]):
            assert (a - b).abs().max() <= 1e-5


def _assert_same_student(shared: dict, pickled: dict) -> None:
    """A safetensors student (as load_checkpoint returns it) holds the pickled checkpoint's family, config and every
    tensor, bit for bit."""
    assert shared["Family"] == pickled["Family"] and shared["StudentConfig"] == pickled["StudentConfig"]
    assert shared["Student"].keys() == pickled["Student"].keys()
    for key, value in pickled["Student"].items():
        assert torch.equal(shared["Student"][key], value), key


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    from s3prl_distill.cli import main

    model = gated_student(False)
    gated = save_checkpoint(export_student("dphubert", model.config, model.state_dict()), tmp_path / "states-4.ckpt")
    with pytest.raises(SystemExit):
        main(["export", str(gated), "--to", "dphubert", str(tmp_path / "out.pth")])
    assert "states-4.ckpt still has its pruning gates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(gated), "--to", "torchscript", str(tmp_path / "out.pth")])
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
    # CNN channels our prune keeps only in the feature LayerNorm's statistics come back as zero channels on export,
    # which a LayerNorm inside every conv layer (layer_norm mode) would count: refused, not silently changed.
    data = teacher_copy_config(TINY_HUBERT).to_dict()
    data["feature_extractor"]["norm"] = "layer_norm"
    data["feature_layer_norm_pruned"] = 3
    layer_norm_cnn = StudentModel(StudentConfig.from_dict(data))
    with pytest.raises(ValueError, match="feature_layer_norm_pruned > 0 with feature_extractor.norm: layer_norm"):
        dphubert_checkpoint(layer_norm_cnn.config, layer_norm_cnn.state_dict(), "a layer-norm CNN")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
