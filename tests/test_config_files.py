"""Config files: variants are overlays (``extends`` a base, ``remove`` what the variant does not have) that read back
as the whole files they replaced; several ``-g`` files merge in order; a broken chain is an error naming the file."""

from pathlib import Path

import pytest
import yaml

from s3prl_distill.errors import ConfigError
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.pretrain.config_files import read_config, read_configs

PRETRAIN = Path(__file__).resolve().parents[1] / "pretrain"

# Each variant as the whole file it was before it became an overlay (commit fce7116), parsed: what reading the
# overlay must give, key for key (comments aside).
VARIANTS = {
    "asr_distill/config_fbank.yaml": """\
runner: {total_steps: 25000, log_step: 50, save_step: 2500, keep_last: 3, gradient_accumulate_steps: 1, gradient_clipping: 5.0,
  precision: fp16, seed: 1337}
optimizer:
  name: AdamW_with_schedule
  lr: 0.0002
  betas: [0.9, 0.98]
  eps: 1.0e-06
  weight_decay: 0.01
scheduler: {name: linear_warmup_decay, warmup_proportion: 0.07}
teacher: {name: hubert_local, ckpt: hubert_base_ls960.pt}
student:
  fbank_front_end: {num_mel_bins: 80, kernel_size: 5}
  feature_dropout: 0.1
  encoder: {num_layers: 12, embed_dim: 480, ffn_dim: 480, num_heads: 12, layer_norm_first: false, activation: gelu,
    dropout: 0.1, attention_dropout: 0.1, activation_dropout: 0.1, pos_conv_kernel: 128, pos_conv_groups: 16,
    pos_conv_weight_norm: true}
  prediction_head:
    type: layerwise
    target_layers: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    out_dim: 768
    front_end: true
  codeword_head: {type: logits, out_dim: 504}
student_init: {}
method: {name: asr_distill, loss_type: l1, regression_weight: 1.0, cosine_weight: 1.0, discriminative_weight: 0.4,
  temperature: 0.1, front_end_steps: 2500, mask_padding: false}
data:
  root: LibriSpeech
  bucket_dir: data/len_for_bucket
  sets: [train-clean-100, train-clean-360, train-other-500]
  train_batch_size: 12
  max_length: 250000
  num_workers: 8
  check_files: true
  on_bad_file: stop
""",
    "asr_distill/config_shallowwide.yaml": """\
runner: {total_steps: 25000, log_step: 50, save_step: 2500, keep_last: 3, gradient_accumulate_steps: 1, gradient_clipping: 5.0,
  precision: fp16, seed: 1337}
optimizer:
  name: AdamW_with_schedule
  lr: 0.0002
  betas: [0.9, 0.98]
  eps: 1.0e-06
  weight_decay: 0.01
scheduler: {name: linear_warmup_decay, warmup_proportion: 0.07}
teacher: {name: hubert_local, ckpt: hubert_base_ls960.pt}
student:
  feature_extractor: {conv_layers: '[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2', norm: group_norm, bias: false,
    dropout: 0.0, grad_mult: 0.1}
  feature_layer_norm: false
  feature_dropout: 0.0
  encoder: {num_layers: 2, embed_dim: 768, ffn_dim: 3072, num_heads: 12, layer_norm_first: false, activation: gelu,
    dropout: 0.1, attention_dropout: 0.1, activation_dropout: 0.1, pos_conv_kernel: 128, pos_conv_groups: 16,
    pos_conv_weight_norm: true}
  prediction_head:
    type: expand_last
    target_layers: [4, 8, 12]
    inner_dim: 768
    out_dim: 768
  codeword_head: {type: logits, out_dim: 504}
student_init: {feature_extractor: true, feature_projection: true, pos_conv: true, layers: 2}
method: {name: asr_distill, loss_type: l1, regression_weight: 1.0, cosine_weight: 1.0, discriminative_weight: 0.4,
  temperature: 0.1, front_end_steps: 0, mask_padding: false}
data:
  root: LibriSpeech
  bucket_dir: data/len_for_bucket
  sets: [train-clean-100, train-clean-360, train-other-500]
  train_batch_size: 12
  max_length: 250000
  num_workers: 8
  check_files: true
  on_bad_file: stop
""",
    "dphubert/config_skill.yaml": """\
runner: {total_steps: 50000, log_step: 50, save_step: 5000, keep_last: 3, gradient_accumulate_steps: 1, gradient_clipping: 10.0,
  precision: fp16, seed: 1337}
optimizer:
  name: AdamW
  lr: 0.0002
  betas: [0.9, 0.999]
  eps: 1.0e-08
  weight_decay: 0.0
scheduler: {name: linear_warmup_decay, warmup_proportion: 0.3}
teacher: {name: wavlm_local, ckpt: WavLM-Base+.pt}
student:
  feature_extractor: {conv_layers: '[(512,10,5), (512,3,2), (512,3,2), (512,3,2), (512,3,2), (512,2,2), (512,2,2)]',
    norm: group_norm, bias: false, dropout: 0.0, grad_mult: 1.0, output_scale: false}
  fbank_front_end: null
  feature_layer_norm: true
  feature_layer_norm_pruned: 0
  feature_dropout: 0.1
  encoder:
    num_layers: 12
    embed_dim: 768
    ffn_dim: 3072
    num_heads: 12
    head_dim: null
    relative_position: {num_buckets: 320, max_distance: 800, num_heads: 12, gated: true}
    kept_heads: null
    layer_norm_first: false
    activation: gelu
    dropout: 0.1
    attention_dropout: 0.1
    activation_dropout: 0.0
    pos_conv_kernel: 128
    pos_conv_groups: 16
    pos_conv_weight_norm: true
    time_reduction: null
  prediction_head:
    type: projection
    out_dim: 768
    front_end: false
    target_groups:
    - [0, 1, 2, 3]
    - [4, 5, 6, 7]
    - [8, 9, 10]
    - [11, 12]
    group_target: mean
    group_student: mean
  codeword_head: null
  pruning: {conv_channels: true, attention_heads: true, ffn_units: true, attention_layers: false, ffn_layers: false,
    conv_initial_drop: 0.01, head_initial_drop: 0.01, ffn_initial_drop: 0.5, layer_initial_drop: 0.01}
student_init: {whole: true}
method: {name: skill, l1_weight: 1.0, cosine_weight: 1.0, cosine_type: raw, mask_padding: true, target_sparsity: 0.75,
  sparsity_warmup_steps: 5000, gate_lr: 0.02, lagrangian_lr: 0.02}
data:
  root: LibriSpeech
  bucket_dir: data/len_for_bucket
  sets: [train-clean-100, train-clean-360, train-other-500]
  train_batch_size: 48
  max_length: 250000
  num_workers: 8
  check_files: true
  on_bad_file: stop
""",
    "fithubert/config_fitw2v2.yaml": """\
runner: {total_steps: 1170000, log_step: 50, save_step: 5000, keep_last: 3, gradient_accumulate_steps: 4, gradient_clipping: null,
  precision: fp16, seed: 1337}
optimizer:
  name: AdamW_with_schedule
  lr: 0.0005
  betas: [0.9, 0.98]
  eps: 1.0e-06
  weight_decay: 0.01
scheduler: {name: linear_warmup_decay, warmup_proportion: 0.05}
teacher: {name: wav2vec2_local, ckpt: wav2vec_small.ckpt}
student:
  feature_extractor: {conv_layers: '[(128,10,5), (256,1,1), (256,3,2), (256,3,2), (256,3,2), (256,3,2), (512,1,1),
      (512,2,2), (512,2,2)]', norm: group_norm, bias: false, dropout: 0.0, grad_mult: 1.0}
  feature_layer_norm: true
  feature_dropout: 0.05
  encoder:
    num_layers: 12
    embed_dim: 480
    ffn_dim: 480
    num_heads: 12
    head_dim: null
    layer_norm_first: false
    activation: gelu
    dropout: 0.1
    attention_dropout: 0.1
    activation_dropout: 0.1
    pos_conv_kernel: 128
    pos_conv_groups: 16
    pos_conv_weight_norm: true
    time_reduction: {index: 0, factor: 2}
  prediction_head:
    type: layerwise
    target_layers: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    out_dim: 768
student_init: {feature_extractor: false, feature_projection: false, pos_conv: false, layers: 0}
method:
  name: fithubert
  loss_type: mse
  final_weight: 1.0
  hint_weight: 0.1
  hint_layers: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
  mask_padding: false
data:
  root: LibriSpeech
  bucket_dir: data/len_for_bucket
  sets: [train-clean-100, train-clean-360, train-other-500]
  train_batch_size: 6
  max_length: null
  num_workers: 8
  check_files: true
  on_bad_file: stop
""",
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_reads_as_the_whole_file_it_replaced(name):
    path = PRETRAIN / name
    raw = yaml.safe_load(path.read_text())
    assert raw["extends"] == "config.yaml" and len(raw) < 8  # an overlay: only what differs
    expected = yaml.safe_load(VARIANTS[name])
    merged = read_config(path)
    assert merged == expected
    assert list(merged) == list(expected)  # the sections in the same order, as the runner writes them back
    assert load_config(path).teacher.name == expected["teacher"]["name"]  # and it validates


def test_remove_drops_what_the_base_has_and_the_variant_does_not(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"student": {"feature_extractor": {"norm": "group_norm"},
                                                                    "feature_dropout": 0.0}, "method": {"a": 1}}))
    overlay = tmp_path / "variant.yaml"
    overlay.write_text(yaml.safe_dump({"extends": "base.yaml", "remove": ["student.feature_extractor"],
                                       "student": {"feature_dropout": 0.1, "fbank_front_end": {"num_mel_bins": 80}}}))
    assert read_config(overlay) == {"student": {"feature_dropout": 0.1, "fbank_front_end": {"num_mel_bins": 80}},
                                    "method": {"a": 1}}
    # A stale entry (the base no longer has the key) is an error, not a silent no-op.
    overlay.write_text(yaml.safe_dump({"extends": "base.yaml", "remove": ["student.pruning"]}))
    with pytest.raises(ConfigError, match=r"variant.yaml: remove names student.pruning, which its base does not have"):
        read_config(overlay)
    overlay.write_text(yaml.safe_dump({"remove": ["student.feature_extractor"]}))
    with pytest.raises(ConfigError, match=r"variant.yaml: remove needs an extends base"):
        read_config(overlay)
    overlay.write_text(yaml.safe_dump({"extends": "base.yaml", "remove": "student.feature_extractor"}))
    with pytest.raises(ConfigError, match=r"variant.yaml: remove must be a list of dotted keys"):
        read_config(overlay)


def test_a_chain_of_bases_merges_in_order_and_lists_replace(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"x": {"keep": 1, "list": [1, 2, 3], "v": "a"}}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(yaml.safe_dump({"extends": "../a.yaml", "x": {"v": "b"}}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"extends": "sub/b.yaml", "x": {"list": [9]}}))
    assert read_config(tmp_path / "c.yaml") == {"x": {"keep": 1, "list": [9], "v": "b"}}
    # Several files (-g c.yaml -g d.yaml): each resolved, then merged in order.
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"x": {"v": "d"}}))
    assert read_configs([tmp_path / "c.yaml", tmp_path / "d.yaml"]) == {"x": {"keep": 1, "list": [9], "v": "d"}}


def test_a_cycle_or_a_missing_base_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nx: 1\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ny: 2\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends forms a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        read_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(ConfigError, match="forms a cycle"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: its extends base .*gone.yaml does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "odd.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"odd.yaml: extends must be a file name"):
        read_config(tmp_path / "odd.yaml")
    with pytest.raises(ConfigError, match=r"pretrain config .*none.yaml does not exist"):
        load_config(tmp_path / "none.yaml")


def test_a_variant_takes_a_snippet_and_overrides_like_any_config(tmp_path):
    snippet = tmp_path / "skill_groups.yaml"
    snippet.write_text(yaml.safe_dump({"student": {"prediction_head": {"target_groups": [[0, 1], [2, 3, 4]]}}}))
    config = load_config([PRETRAIN / "dphubert" / "config_skill.yaml", snippet], "config.runner.total_steps=7")
    assert config.student.prediction_head.target_groups == [[0, 1], [2, 3, 4]]
    assert (config.runner.total_steps, config.teacher.name, config.method.name) == (7, "wavlm_local", "skill")
