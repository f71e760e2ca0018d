"""ARMHuBERT / MaskHuBERT / STaRHuBERT: attention-map reuse, the official release layout, the upstreams."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s3prl_distill.formats import read_student
from s3prl_distill.formats.armhubert import export_lightning
from s3prl_distill.formats.native import export_student
from s3prl_distill.model import StudentConfig, StudentModel, armhubert_config, maskhubert_config, starhubert_config
from s3prl_distill.model.attention import AttentionMaps, SelfAttention

from helpers import featurizer_weights_after_training, random_waves

TINY_CNN = "[(16,10,5)] + [(16,1,1)] + [(16,3,2)]*4 + [(24,1,1)] + [(24,2,2)]*2"
# The official configs' fields for a tiny model (as in the released YAMLs, shrunk).
TINY_FIELDS = {
    "extractor_mode": "default", "conv_feature_layers": TINY_CNN, "feature_grad_mult": 1.0, "conv_bias": False,
    "conv_pos": 8, "conv_pos_groups": 4, "pos_conv_depth": 1, "max_positions": 100000, "layer_type": "transformer",
    "encoder_layers": 3, "encoder_embed_dim": 24, "encoder_ffn_embed_dim": 40, "encoder_attention_heads": 4,
    "activation_fn": "gelu", "layer_norm_first": False, "layer_grad_scale": True, "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.1, "encoder_layerdrop": 0.0, "dropout_input": 0.05,
    "final_dim": 256, "init_conv_layers": False, "init_encoder_layers": 0, "checkpoint_activations": False,
    "required_seq_len_multiple": 1, "crop_seq_to_multiple": 1,
}
ARM_FIELDS = {
    "depthwise_conv_kernel_size": 31, "attn_type": "", "pos_enc_type": "abs", "fp16": True,
    "pred_head_final_dim": 32, "pred_head_inter_dim": 0, "layerwise_proj": True, "pred_layer_id": "[11]",
    "enable_tr_layer": False, "tr_conv1d_kernel": 2, "tr_layer_index": 0, "tr_reduce_factor": 2,
    "tr_layer_type": "conv1d", "freeze_student_mask": False, "update_teacher_mask": False,
}
REUSE_PATTERN = "[True, False, False]"  # layers 1 and 2 reuse layer 0's map


def official_shapes(family: str) -> dict:
    """The official CustomStudentModel's state dict (names -> shapes) for the tiny fields, spelt out from its module
    structure: fairseq CNN blocks Sequential(conv, dropout, [GroupNorm on the first], GELU), ``layer_norm`` on the
    CNN output, no ``post_extract_proj`` (the CNN ends at the encoder width), ``encoder.pos_conv`` =
    Sequential(weight-normed Conv1d, SamePad, GELU), layers with ``self_attn`` (a reusing layer: v/out only),
    ``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``; ARMHuBERT / MaskHuBERT add ``mask_emb`` and
    ``proj_head.<i>.lin_proj``."""
    width, ffn, kernel, groups = 24, 40, 8, 4
    shapes = {"feature_extractor.conv_layers.0.2.weight": (16,), "feature_extractor.conv_layers.0.2.bias": (16,),
              "layer_norm.weight": (24,), "layer_norm.bias": (24,),
              "encoder.pos_conv.0.weight_g": (1, 1, kernel), "encoder.pos_conv.0.weight_v": (width, width // groups,
                                                                                            kernel),
              "encoder.pos_conv.0.bias": (width,), "encoder.layer_norm.weight": (width,),
              "encoder.layer_norm.bias": (width,)}
    channels = 1
    for index, (out, k, _) in enumerate([(16, 10, 5), (16, 1, 1)] + [(16, 3, 2)] * 4 + [(24, 1, 1)] + [(24, 2, 2)] * 2):
        shapes[f"feature_extractor.conv_layers.{index}.0.weight"] = (out, channels, k)
        channels = out
    reuses = family == "armhubert"
    for layer in range(3):
        projections = ("v_proj", "out_proj") if reuses and layer > 0 else ("q_proj", "k_proj", "v_proj", "out_proj")
        for name in projections:
            shapes[f"encoder.layers.{layer}.self_attn.{name}.weight"] = (width, width)
            shapes[f"encoder.layers.{layer}.self_attn.{name}.bias"] = (width,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"encoder.layers.{layer}.{norm}.weight"] = shapes[f"encoder.layers.{layer}.{norm}.bias"] = (width,)
        shapes[f"encoder.layers.{layer}.fc1.weight"], shapes[f"encoder.layers.{layer}.fc1.bias"] = (ffn, width), (ffn,)
        shapes[f"encoder.layers.{layer}.fc2.weight"] = (width, ffn)
        shapes[f"encoder.layers.{layer}.fc2.bias"] = (width,)
    if family != "starhubert":
        shapes["mask_emb"] = (width,)
        for head in range(3):
            shapes[f"proj_head.{head}.lin_proj.weight"], shapes[f"proj_head.{head}.lin_proj.bias"] = (32, width), (32,)
    return shapes


def official_yaml(family: str) -> dict:
    fields = dict(TINY_FIELDS)
    if family != "starhubert":
        fields.update(ARM_FIELDS)
    if family == "armhubert":
        fields["reuse_pattern"] = REUSE_PATTERN
    return {"teacher": {"teacher_model": "./hubert_base_ls960.pt", "mask_prob": 0.8}, "distiller": fields}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Per family: a tiny official Lightning release built from the spelt-out state dict (+ teacher weights, as a
    real one holds, and for STaRHuBERT the final_proj its upstream deletes), its YAML, and the same weights in our
    format."""
    folder = tmp_path_factory.mktemp("armhubert")
    generator = torch.Generator().manual_seed(0)
    found = {}
    for family in ("armhubert", "maskhubert", "starhubert"):
        weights = {}
        for name, shape in official_shapes(family).items():
            value = 0.3 * torch.randn(shape, generator=generator)
            weights[name] = value + 1.0 if name.endswith(("norm.weight", "conv_layers.0.2.weight", "weight_g")) \
                else value
        if family == "starhubert":
            weights["final_proj.weight"], weights["final_proj.bias"] = torch.randn(256, 24), torch.randn(256)
        state = {f"student_model.{k}": v for k, v in weights.items()}
        state["teacher_model.encoder.layer_norm.weight"] = torch.ones(768)
        torch.save({"state_dict": state, "pytorch-lightning_version": "1.7.7", "epoch": 3}, folder / f"{family}.ckpt")
        (folder / f"{family}.yaml").write_text(yaml.safe_dump(official_yaml(family)))
        student = read_student(load_checkpoint(folder / f"{family}.ckpt"), family, official_yaml(family))
        save_checkpoint(export_student(student.family, student.config, student.state), folder / f"{family}_ours.ckpt")
        found[family] = {"ckpt": folder / f"{family}.ckpt", "yaml": folder / f"{family}.yaml", "weights": weights,
                         "ours": folder / f"{family}_ours.ckpt", "student": student}
    return found


def entry(family: str, **kwargs):
    from s3prl_distill import registry

    return registry.entries()[f"{family}_local"](**kwargs).eval()


def test_published_sizes():
    from s3prl_distill.upstream.armhubert.adapter import parameter_counts

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        sizes = {name: parameter_counts(StudentModel(config)) for name, config in (
            ("ARMHuBERT", armhubert_config()), ("ARMHuBERT-S", armhubert_config(small=True)),
            ("MaskHuBERT", maskhubert_config()), ("STaRHuBERT", starhubert_config()),
            ("STaRHuBERT-L", starhubert_config(large=True)))}
    # The published sizes count the 12 heads and the mask embedding.
    assert sizes["ARMHuBERT"]["paper"] == 26_448_448  # 26.45 M
    assert sizes["ARMHuBERT"]["inference"] == 26_448_448 - 480
    assert sizes["ARMHuBERT"]["backbone"] == 26_448_448 - 480 - 12 * (480 * 768 + 768)
    assert sizes["ARMHuBERT-S"]["paper"] == 22_394_080  # 22.39 M
    assert sizes["MaskHuBERT"]["paper"] == 26_635_840  # 26.64 M
    assert sizes["STaRHuBERT"]["paper"] == sizes["STaRHuBERT"]["backbone"] == 22_308_592  # 22.31 M
    assert sizes["STaRHuBERT-L"]["paper"] == 26_630_752  # 26.63 M


def test_reused_attention_is_a_second_softmax_of_the_earlier_map():
    """A hand-written reference on hand-built tensors: layer A computes P = softmax(q·kᵀ/√d) over the valid keys;
    the reusing layer B has no q/k and attends with softmax(P) over the valid keys (the official double softmax)."""
    torch.manual_seed(0)
    width, heads, frames = 8, 2, 5
    first = SelfAttention(width, heads, width // heads, 0.0, provides_map=True).eval()
    second = SelfAttention(width, heads, width // heads, 0.0, reuses_map=True).eval()
    assert second.q_proj is None and second.k_proj is None
    assert sorted(second.state_dict()) == ["out_proj.bias", "out_proj.weight", "v_proj.bias", "v_proj.weight"]
    x = torch.randn(2, frames, width)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    maps = AttentionMaps()
    out_first = first(x, padding, maps=maps)
    out_second = second(x, padding, maps=maps)

    def per_head(linear, row):
        return linear(x[row]).view(frames, heads, width // heads).transpose(0, 1)  # (heads, frames, head_dim)

    for row in range(2):
        valid = (~padding[row]).sum().item()
        q, k = per_head(first.q_proj, row), per_head(first.k_proj, row)
        scores = q @ k.transpose(1, 2) / math.sqrt(width // heads)
        scores[..., valid:] = float("-inf")
        p = scores.softmax(-1)
        expected_first = first.out_proj((p @ per_head(first.v_proj, row)).transpose(0, 1).reshape(frames, width))
        assert (out_first[row] - expected_first).abs().max() <= 1e-5
        logits = p.clone()
        logits[..., valid:] = float("-inf")
        expected = second.out_proj((logits.softmax(-1) @ per_head(second.v_proj, row)).transpose(0, 1)
                                   .reshape(frames, width))
        assert (out_second[row] - expected).abs().max() <= 1e-5
        single = second.out_proj((p @ per_head(second.v_proj, row)).transpose(0, 1).reshape(frames, width))
        assert (out_second[row] - single).abs().max() > 1e-3  # the second softmax matters
    with pytest.raises(ValueError, match="reuses an earlier layer's attention map"):
        second(x, padding)


def test_reuse_config_is_validated():
    base = armhubert_config().to_dict()
    for reuse, message in (([True] + [False] * 11, "attention_reuse\\[0\\]"), ([False] * 11, "lists 11 layers")):
        data = {**base, "encoder": {**base["encoder"], "attention_reuse": reuse}}
        with pytest.raises(ValueError, match=message):
            StudentConfig.from_dict(data)
    data = {**base, "encoder": {**base["encoder"], "num_heads": [12, 6] + [12] * 10}}
    with pytest.raises(ValueError, match="layer 1 \\(6 heads\\) cannot reuse the map of layer 0"):
        StudentConfig.from_dict(data)


def test_layer_grad_scale_shapes_gradients_only():
    """ARMHuBERT's layer gradient scaling: same forward; a loss on layer i's output reaches that layer scaled by
    m (1 - m), m = (L - i) / (L - i + 1) (the continuing path by m, the output's copy by a further 1 - m)."""
    from s3prl_distill.model import EncoderConfig
    from s3prl_distill.model.encoder import TransformerEncoder

    config = EncoderConfig(num_layers=3, embed_dim=8, ffn_dim=16, num_heads=2, pos_conv_kernel=4, pos_conv_groups=2,
                           attention_reuse=[False, True, False])
    plain = TransformerEncoder(config).eval()
    scaled = TransformerEncoder(config.model_copy(update={"layer_grad_scale": True})).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 8)
    outputs = [encoder(x, torch.tensor([6, 4])).layer_outputs for encoder in (plain, scaled)]
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    for layer, factor in ((0, 3 / 4 * 1 / 4), (2, 1 / 2 * 1 / 2)):
        grads = [torch.autograd.grad(out[layer].sum(), encoder.layers[layer].feed_forward.fc2.bias,
                                     retain_graph=True)[0] for out, encoder in zip(outputs, (plain, scaled))]
        assert torch.allclose(grads[1], factor * grads[0], atol=1e-6)
    # A loss on layer 2 reaches layer 0 through the continuing paths of layers 0 and 1 (3/4 * 2/3), then 1/2 * 1/2.
    grads = [torch.autograd.grad(out[2].sum(), encoder.layers[0].feed_forward.fc2.bias)[0]
             for out, encoder in zip(outputs, (plain, scaled))]
    assert torch.allclose(grads[1], 3 / 4 * 2 / 3 * 1 / 2 * 1 / 2 * grads[0], atol=1e-6)


def test_frame_mask_puts_the_mask_embedding_into_the_transformer_input(releases):
    """Masking distillation's student input: masked frames of the encoder's input are the learned mask embedding,
    the others unchanged; a student without one refuses a mask."""
    model = StudentModel(releases["armhubert"]["student"].config).eval()
    seen = []
    model.encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    wave = random_waves([4000], seed=5)[0][None]
    with torch.no_grad():
        plain = model(wave)
        mask = torch.zeros(1, plain.features.shape[1], dtype=torch.bool)
        mask[0, 3:6] = True
        masked = model(wave, frame_mask=mask)
    assert torch.equal(seen[1][0, 3:6], model.mask_embedding.expand(3, -1))
    assert torch.equal(seen[1][0, ~mask[0]], seen[0][0, ~mask[0]])
    assert (masked.layer_outputs[-1] - plain.layer_outputs[-1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="mask_embedding: true"):
        StudentModel(releases["starhubert"]["student"].config)(wave, frame_mask=mask)


@pytest.mark.parametrize("family", ["armhubert", "maskhubert", "starhubert"])
def test_official_layout(family, releases):
    """Our export writes exactly the official model's state dict (its loader is strict), and reading the official
    release gives back what was exported, the STaRHuBERT final_proj dropped as its upstream does."""
    student = releases[family]["student"]
    assert student.family == family
    assert student.format == ("starhubert_lightning" if family == "starhubert" else "armhubert_lightning")
    checkpoint, training_yaml = export_lightning(student.config, student.state, family)
    names = {key[len("student_model."):] for key in checkpoint["state_dict"]}
    assert names == set(official_shapes(family))
    weights = releases[family]["weights"]
    assert all(torch.equal(checkpoint["state_dict"][f"student_model.{k}"], weights[k]) for k in names)
    expected = official_yaml(family)["distiller"]
    assert set(training_yaml["distiller"]) <= set(expected) | {"pred_layer_id"}
    assert (training_yaml["distiller"].get("reuse_pattern") is not None) == (family == "armhubert")
    if family == "armhubert":
        assert student.config.encoder.attention_reuse == [False, True, True]


@pytest.mark.parametrize("family", ["armhubert", "starhubert"])
def test_export_to_the_official_layout_round_trips(family, releases, tmp_path):
    """``s3prl-distill export --to lightning`` of our checkpoint writes the release and its YAML; the official
    layout read back through the upstream gives our outputs exactly."""
    from s3prl_distill.formats.export import export_checkpoint

    summary = export_checkpoint(releases[family]["ours"], "lightning", tmp_path / "release.ckpt")
    assert summary["family"] == family and summary["yaml"] == str(tmp_path / "release.yaml")
    names = {key[len("student_model."):] for key in load_checkpoint(tmp_path / "release.ckpt")["state_dict"]}
    assert names == set(official_shapes(family))
    exported = entry(family, ckpt=str(tmp_path / "release.ckpt"), model_config=str(tmp_path / "release.yaml"))
    ours = entry(family, ckpt=str(releases[family]["ours"]))
    waves = random_waves([4000], seed=2)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(exported(waves)["hidden_states"], ours(waves)["hidden_states"]))
    with pytest.raises(CheckpointError, match="--to lightning exports our"):
        export_checkpoint(releases[family]["ckpt"], "lightning", tmp_path / "again.ckpt")


def test_transformers_export_keeps_the_heads_the_features_come_from(releases, tmp_path):
    """MaskHuBERT's backbone fits a stock HubertConfig, but its features are its heads' outputs: the export is our
    own type, which keeps them, and loads back through maskhubert_local with the same outputs."""
    import json

    from s3prl_distill.formats.huggingface import export_huggingface

    summary = export_huggingface(releases["maskhubert"]["ours"], tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] != "hubert"
    # The record and the model card name the entry that loads it (not the generic student_local).
    assert summary["upstream"] == config["s3prl_distill"]["upstream"] == "maskhubert"
    assert "`maskhubert_local`" in (tmp_path / "hf" / "README.md").read_text()
    exported = entry("maskhubert", ckpt=str(tmp_path / "hf"))
    ours = entry("maskhubert", ckpt=str(releases["maskhubert"]["ours"]))
    waves = random_waves([4000], seed=4)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(exported(waves)["hidden_states"], ours(waves)["hidden_states"]))


def official_reference(weights: dict, wave: torch.Tensor, reuse: list) -> list:
    """The official model's forward (eval, one waveform), written from its module structure with torch ops: the
    fairseq CNN, LayerNorm, weight-normed positional conv, post-LN layers (a reusing layer: softmax of the stored
    map), returning the layer outputs."""
    x = wave[None, None]
    for index in range(9):
        layer = weights[f"feature_extractor.conv_layers.{index}.0.weight"]
        x = F.conv1d(x, layer, stride=[5, 1, 2, 2, 2, 2, 1, 2, 2][index])
        if index == 0:
            x = F.group_norm(x, 16, weights["feature_extractor.conv_layers.0.2.weight"],
                             weights["feature_extractor.conv_layers.0.2.bias"])
        x = F.gelu(x)
    x = F.layer_norm(x.transpose(1, 2), (24,), weights["layer_norm.weight"], weights["layer_norm.bias"])[0]
    v, g = weights["encoder.pos_conv.0.weight_v"], weights["encoder.pos_conv.0.weight_g"]
    kernel = v * (g / v.norm(dim=(0, 1), keepdim=True))
    position = F.conv1d(x.T[None], kernel, weights["encoder.pos_conv.0.bias"], padding=4, groups=4)[0, :, :-1]
    x = F.layer_norm(x + F.gelu(position).T, (24,), weights["encoder.layer_norm.weight"],
                     weights["encoder.layer_norm.bias"])
    outputs, stored = [], None

    def linear(name, y):
        return y @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    for layer in range(3):
        prefix = f"encoder.layers.{layer}."
        values = linear(prefix + "self_attn.v_proj", x).view(-1, 4, 6).transpose(0, 1)
        if reuse[layer]:
            probabilities = stored.softmax(-1)
        else:
            q = linear(prefix + "self_attn.q_proj", x).view(-1, 4, 6).transpose(0, 1) * 6 ** -0.5
            k = linear(prefix + "self_attn.k_proj", x).view(-1, 4, 6).transpose(0, 1)
            probabilities = stored = (q @ k.transpose(1, 2)).softmax(-1)
        attended = linear(prefix + "self_attn.out_proj", (probabilities @ values).transpose(0, 1).reshape(-1, 24))
        x = F.layer_norm(x + attended, (24,), weights[prefix + "self_attn_layer_norm.weight"],
                         weights[prefix + "self_attn_layer_norm.bias"])
        x = x + linear(prefix + "fc2", F.gelu(linear(prefix + "fc1", x)))
        x = F.layer_norm(x, (24,), weights[prefix + "final_layer_norm.weight"],
                         weights[prefix + "final_layer_norm.bias"])
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("family", ["armhubert", "maskhubert", "starhubert"])
def test_release_outputs_match_the_reference_our_format_and_each_waveform(family, releases):
    """The official release through the production path (``<family>_local -k release.ckpt -g release.yaml``) equals
    (i) the official forward written out above, (ii) our format of the same weights, and (iii) on a padded batch,
    each waveform run alone (the official code pairs waveforms with other waveforms' reused maps: not reproduced)."""
    release = releases[family]
    official = entry(family, ckpt=str(release["ckpt"]), model_config=str(release["yaml"]))
    ours = entry(family, ckpt=str(release["ours"]))
    waves = random_waves([8000, 5555, 3210], seed=1)
    with torch.no_grad():
        batch, ours_batch = official(waves), ours(waves)
        alone = [official([wave]) for wave in waves]
    reuse = [False, True, True] if family == "armhubert" else [False] * 3
    reference = official_reference(release["weights"], waves[0], reuse)
    weights = release["weights"]
    for layer in range(3):
        assert (alone[0]["layer_hidden_states"][layer + 1][0] - reference[layer]).abs().max() <= 1e-4
        head = f"proj_head.{layer}.lin_proj."
        expected = reference[layer] if family == "starhubert" else \
            reference[layer] @ weights[head + "weight"].T + weights[head + "bias"]
        assert (alone[0]["hidden_states"][layer][0] - expected).abs().max() <= 1e-4
    width = 24 if family == "starhubert" else 32
    assert len(batch["hidden_states"]) == 3 and batch["hidden_states"][0].shape[-1] == width
    assert len(batch["layer_hidden_states"]) == 4 and batch["layer_hidden_states"][0].shape[-1] == 24
    assert torch.equal(batch["last_hidden_state"], batch["hidden_states"][-1])
    frames = batch["pad_mask"].sum(-1).long().tolist()
    for key in ("hidden_states", "layer_hidden_states"):
        assert max((a - b).abs().max().item() for a, b in zip(batch[key], ours_batch[key])) == 0.0
        for index, single in enumerate(alone):
            for in_batch, by_itself in zip(batch[key], single[key]):
                assert by_itself.shape[1] == frames[index]
                assert (in_batch[index, :frames[index]] - by_itself[0]).abs().max() <= 1e-4, (key, index)


@pytest.mark.parametrize("family,release", [("armhubert", "ARMHuBERT"), ("maskhubert", "MaskHuBERT"),
                                            ("starhubert", "STaRHuBERT")])
def test_the_bare_entry_finds_the_release_in_its_default_places(family, release, releases, monkeypatch, tmp_path):
    """``-u armhubert`` etc.: -k, else $S3PRL_DISTILL_<FAMILY> (+ _CONFIG), else <s3prl's download cache>/<family>/
    <release>.ckpt + .yaml; nothing found names all three ways."""
    from s3prl_distill import registry
    from s3prl_distill.upstream import expert

    bare = registry.entries()[family]
    monkeypatch.setattr(expert, "default_location", lambda name: tmp_path / "cache" / name)
    ckpt_variable, config_variable = expert.location_variables(family)
    monkeypatch.delenv(ckpt_variable, raising=False)
    monkeypatch.delenv(config_variable, raising=False)
    with pytest.raises(FileNotFoundError) as error:
        bare()
    assert ckpt_variable in str(error.value) and str(tmp_path / "cache" / family / f"{release}.yaml") in str(error.value)
    wave = [torch.randn(4000, generator=torch.Generator().manual_seed(1))]
    expected = entry(family, ckpt=str(releases[family]["ours"]))(wave)["hidden_states"]

    def same(upstream) -> bool:
        return all(torch.equal(a, b) for a, b in zip(upstream.eval()(wave)["hidden_states"], expected))

    monkeypatch.setenv(ckpt_variable, str(releases[family]["ckpt"]))  # the official release and its YAML
    monkeypatch.setenv(config_variable, str(releases[family]["yaml"]))
    assert same(bare())
    monkeypatch.delenv(ckpt_variable)
    folder = tmp_path / "cache" / family
    folder.mkdir(parents=True)
    (folder / f"{release}.ckpt").write_bytes(releases[family]["ckpt"].read_bytes())
    (folder / f"{release}.yaml").write_bytes(releases[family]["yaml"].read_bytes())
    assert same(bare())
    assert same(bare(ckpt=str(releases[family]["ours"])))  # -k wins


def test_refusals_name_the_file_and_the_way_out(releases, tmp_path):
    arm, mask = releases["armhubert"], releases["maskhubert"]
    with pytest.raises(CheckpointError, match="maskhubert_local"):
        entry("armhubert", ckpt=str(mask["ckpt"]), model_config=str(mask["yaml"]))
    with pytest.raises(CheckpointError, match="also pass its training YAML"):
        entry("armhubert", ckpt=str(arm["ckpt"]))
    bad = official_yaml("armhubert")
    bad["distiller"]["reuse_patern"] = REUSE_PATTERN
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(CheckpointError, match=f"{arm['ckpt']}.*reuse_patern"):
        entry("armhubert", ckpt=str(arm["ckpt"]), model_config=str(tmp_path / "bad.yaml"))
    bad = official_yaml("armhubert")
    bad["distiller"]["reuse_pattern"] = "__import__('os').system('echo no')"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(CheckpointError, match="reuse_pattern .* is not a list"):
        entry("armhubert", ckpt=str(arm["ckpt"]), model_config=str(tmp_path / "bad.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["armhubert", "maskhubert", "starhubert"])
def test_s3prl_runner_trains_on_the_official_release(family, releases, emotion_setup, tmp_path):
    """s3prl's unmodified runner, ``-u <family>_local -k release.ckpt -g release.yaml``, 2 training steps."""
    release = releases[family]
    weights = featurizer_weights_after_training(f"{family}_local", release["ckpt"], emotion_setup, tmp_path,
                                                model_config=release["yaml"])
    assert weights.shape == (3,)  # the weighted sum runs over the official hidden_states: 3 heads / 3 layers
