"""Wang et al.'s ASR students: the discriminative loss, the teacher's codebook, the fbank front end and its two-stage
training, the deepthin / shallowwide upstreams (also in s3prl's downstream runner)."""

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.losses import codeword_logits, combine, kl_divergence_term
from s3prl_distill.model import (
    StudentConfig,
    StudentModel,
    deepthin_config,
    shallowwide_config,
    with_codeword_head,
    with_fbank_front_end,
)
from s3prl_distill.model.fbank import (batch_log_mel_fbank, fbank_constants, fbank_frames, fbank_statistics,
                                        log_mel_fbank)
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.pretrain.teacher import HubertCodebook, codebook_from_state, read_hubert_codebook

from helpers import featurizer_weights_after_training, pretrain, random_waves, tiny_deepthin, tiny_shallowwide

# --- losses on hand-computed tensors --------------------------------------------------------------------------------

def test_kl_term_matches_the_hand_computed_value_and_skips_padding():
    # Frame 1: p_teacher = (1/4, 3/4), p_student = (1/2, 1/2). Frame 2 is padding with a huge divergence.
    teacher = torch.tensor([[[0.0, math.log(3.0)], [50.0, -50.0]]])
    student = torch.tensor([[[1.0, 1.0], [-50.0, 50.0]]])
    term = kl_divergence_term(student, teacher, torch.tensor([[True, False]]), weight=0.5)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert term.counts.item() == 1.0
    assert term.sums.item() == pytest.approx(expected, abs=1e-6)
    assert combine({"d": term}).item() == pytest.approx(0.5 * expected, abs=1e-6)
    # Equal distributions: zero; all frames counted without a mask.
    same = kl_divergence_term(teacher, teacher + 3.0, None)
    assert same.sums.abs().item() < 1e-6 and same.counts.item() == 2.0


def test_codeword_logits_are_cosines_over_temperature():
    codewords = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    logits = codeword_logits(torch.tensor([[[2.0, 0.0]]]), codewords, temperature=0.1)
    assert logits[0, 0].tolist() == pytest.approx([10.0, 0.0, -10.0, 10.0 / math.sqrt(2.0)], abs=1e-5)


def test_teacher_distribution_uses_final_proj_then_cosine():
    codebook = HubertCodebook(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([0.0, 1.0]),
                              torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # final_proj([1, 0]) = [0, 2]: cosine 0 with codeword 0, 1 with codeword 1.
    logits = codebook.logits(torch.tensor([[[1.0, 0.0]]]), temperature=0.5)
    assert logits[0, 0].tolist() == pytest.approx([0.0, 2.0], abs=1e-5)


def test_cosine_codeword_head_is_scored_against_the_teacher_embeddings():
    from s3prl_distill.pretrain.asr_distill.recipe import AsrDistill, AsrDistillMethodConfig

    method = AsrDistill(AsrDistillMethodConfig(discriminative_weight=1.0, temperature=0.25),
                        tiny_shallowwide(("cosine", 2)))
    codewords = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = method.student_codeword_logits(torch.tensor([[[3.0, 3.0]]]), codewords)
    assert logits[0, 0].tolist() == pytest.approx([4.0 / math.sqrt(2.0)] * 2, abs=1e-5)
    direct = AsrDistill(AsrDistillMethodConfig(discriminative_weight=1.0), tiny_deepthin(("logits", 2)))
    assert torch.equal(direct.student_codeword_logits(torch.tensor([[[3.0, -1.0]]]), codewords),
                       torch.tensor([[[3.0, -1.0]]]))


def test_method_refuses_missing_heads():
    from s3prl_distill.pretrain.asr_distill.recipe import AsrDistill, AsrDistillMethodConfig

    with pytest.raises(ValueError, match="codeword_head"):
        AsrDistill(AsrDistillMethodConfig(discriminative_weight=0.4), tiny_deepthin(codeword=None))
    with pytest.raises(ValueError, match="fbank_front_end"):
        AsrDistill(AsrDistillMethodConfig(front_end_steps=5), tiny_deepthin())


# --- the teacher's codebook -----------------------------------------------------------------------------------------

def test_codebook_from_hubert_local_fairseq_file_and_a_clear_error(setup, tmp_path):
    from s3prl_distill.pretrain.config import TeacherConfig
    from s3prl_distill.pretrain.teacher import Teacher

    teacher = Teacher(TeacherConfig(name="hubert_local", ckpt=str(setup["teacher"])))
    live = teacher.codebook()
    model = teacher.upstream.model
    assert torch.equal(live.embeddings, model.label_embs_concat.detach())
    assert torch.equal(live.projection_weight, model.final_proj.weight.detach())
    converted = read_hubert_codebook(str(setup["teacher"]))
    assert torch.equal(converted.embeddings, live.embeddings)
    # fairseq's layout: {"cfg": ..., "model": state_dict}
    fairseq = tmp_path / "fairseq_hubert.pt"
    torch.save({"cfg": {"model": {"_name": "hubert"}}, "model": model.state_dict()}, fairseq)
    assert torch.equal(read_hubert_codebook(str(fairseq)).projection_bias, live.projection_bias)
    state = {k: v for k, v in model.state_dict().items() if k != "label_embs_concat"}
    with pytest.raises(ValueError, match="teacher 'x' has no label_embs_concat"):
        codebook_from_state(state, "teacher 'x'")
    with pytest.raises(CheckpointError, match="neither an s3prl-converted HuBERT"):
        save_checkpoint({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
        read_hubert_codebook(str(tmp_path / "other.ckpt"))


def test_teacher_without_a_codebook_and_a_wrong_head_width_are_named(setup):
    from s3prl_distill.pretrain.config import StudentInitConfig, TeacherConfig
    from s3prl_distill.pretrain.asr_distill.recipe import AsrDistillMethodConfig
    from s3prl_distill.pretrain.task import DistillationTask

    teacher = TeacherConfig(name="hubert_local", ckpt=str(setup["teacher"]))
    method = AsrDistillMethodConfig(discriminative_weight=0.4)
    codewords = load_checkpoint(setup["teacher"])["model_weight"]["label_embs_concat"].shape[0]
    with pytest.raises(ValueError, match=f"codeword_head.out_dim is 7 but the teacher's number of codewords is {codewords}"):
        DistillationTask(teacher, tiny_deepthin(("logits", 7)), StudentInitConfig(), method, torch.device("cpu"))
    with pytest.raises(ValueError, match="projection width is 16"):
        DistillationTask(teacher, tiny_deepthin(("cosine", 7)), StudentInitConfig(), method, torch.device("cpu"))
    # s3prl's fbank upstream has no HuBERT model behind it.
    with pytest.raises(ValueError, match="teacher 'fbank' has no final_proj.weight"):
        DistillationTask(TeacherConfig(name="fbank"), tiny_deepthin(), StudentInitConfig(), method,
                         torch.device("cpu"))


# --- the fbank front end --------------------------------------------------------------------------------------------

def test_fbank_front_end_sizes_match_the_paper():
    deep_thin, fbank = StudentModel(deepthin_config()), StudentModel(with_fbank_front_end(deepthin_config()))
    assert deep_thin.num_parameters() == 22_937_856  # 22.94 M
    assert fbank.num_parameters() == 19_107_008  # 19.11 M
    assert 1 - fbank.num_parameters() / deep_thin.num_parameters() == pytest.approx(0.167, abs=0.001)


def test_fbank_front_end_frames_padding_and_statistics():
    config = tiny_deepthin(codeword=None, fbank=True)
    torch.manual_seed(0)
    model = StudentModel(config).eval()
    waves = random_waves([16000, 12345, 5000], seed=3)
    with pytest.raises(RuntimeError, match="no normalisation statistics"):
        model(waves[0][None])
    mean, std, frames = fbank_statistics(waves, 80)
    stacked = torch.cat([log_mel_fbank(w, 80) for w in waves])
    assert frames == len(stacked) == 98 + 75 + 29
    assert torch.allclose(mean, stacked.mean(0), atol=1e-4) and torch.allclose(std, stacked.std(0, unbiased=False), atol=1e-3)
    model.fbank.set_statistics(mean, std, frames)
    lengths = torch.tensor([w.numel() for w in waves])
    # The teacher CNN's frame counts (1 + (samples - 400) // 320): 20 ms frames, aligned with the targets.
    assert model.frame_lengths(lengths).tolist() == [49, 38, 15]
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.no_grad():
        batch = model(padded, lengths)
        for index, wave in enumerate(waves):
            alone = model(wave[None])
            frames = alone.last_hidden.shape[1]
            assert frames == batch.lengths[index]
            assert (batch.last_hidden[index, :frames] - alone.last_hidden[0]).abs().max() <= 1e-4
    # Statistics travel with the weights.
    state = model.state_dict()
    assert state["fbank.statistics_frames"].item() == frames_total(waves)
    again = StudentModel(config)
    again.load_state_dict(state)
    assert again.fbank.has_statistics and torch.equal(again.fbank.mean, model.fbank.mean)


def frames_total(waves):
    return sum(1 + (w.numel() - 400) // 160 for w in waves)


def test_fbank_equals_torchaudio_kaldi_bit_for_bit():
    """Our batched fbank (window and filterbank kept as buffers, so a GPU step copies nothing) is torchaudio's
    Kaldi-compatible fbank, as the official recipe computes it, to the last bit: each row of a padded batch, a row
    shorter than one window, and an all-zero row (the log floor)."""
    import torchaudio.compliance.kaldi as kaldi

    waves = random_waves([16000, 12345, 399, 4000], seed=5)
    waves[3] = torch.zeros(4000)
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    for bins in (80, 40):
        batch = batch_log_mel_fbank(padded, bins, fbank_constants(bins))
        for row, wave in enumerate(waves):
            if wave.numel() < 400:  # torchaudio refuses it; no frame, as Kaldi's snip_edges gives none
                assert log_mel_fbank(wave, bins).shape == (0, bins)
                continue
            expected = kaldi.fbank(wave[None] * 32768.0, num_mel_bins=bins, sample_frequency=16000, frame_length=25.0,
                                   frame_shift=10.0, dither=0.0, energy_floor=0.0)
            count = int(fbank_frames(torch.tensor(wave.numel())))
            assert expected.shape == (count, bins)
            assert torch.equal(log_mel_fbank(wave, bins), expected)
            assert torch.equal(batch[row, :count], expected)
    # The module's buffers are those constants, not saved, and refilled on their device by reset_constants.
    model = StudentModel(tiny_deepthin(codeword=None, fbank=True))
    window, banks = fbank_constants(80)
    assert "fbank.window" not in model.state_dict() and torch.equal(model.fbank.mel_banks, banks)
    model.fbank.window, model.fbank.mel_banks = torch.zeros(1), torch.zeros(1)
    model.fbank.reset_constants()
    assert torch.equal(model.fbank.window, window) and torch.equal(model.fbank.mel_banks, banks)


def test_fbank_statistics_check_reads_the_buffer_once_per_load():
    """The has-statistics check is remembered on the host (a GPU step must not read the buffer), and forgotten when
    a state dict is loaded: loading one without statistics makes the front end refuse again."""
    model = StudentModel(tiny_deepthin(codeword=None, fbank=True)).eval()
    empty = {k: v.clone() for k, v in model.state_dict().items()}
    waves = random_waves([8000], seed=2)
    model.fbank.set_statistics(*fbank_statistics(waves, 80))
    model(waves[0][None])
    model.load_state_dict(empty)
    with pytest.raises(RuntimeError, match="no normalisation statistics"):
        model(waves[0][None])


def test_fbank_config_refuses_cnn_options():
    data = with_fbank_front_end(deepthin_config()).to_dict()
    data["feature_layer_norm"] = True
    with pytest.raises(ValueError, match="feature_layer_norm: the CNN's options do not apply"):
        StudentConfig.from_dict(data)


# --- training --------------------------------------------------------------------------------------------------------

def run_config(setup, tmp_path, student: StudentConfig, method: dict, steps: int, save_step: int, name: str,
               student_init=None):
    config = yaml.safe_load(setup["config"].read_text())
    config["student"] = student.to_dict()
    config["student_init"] = student_init or {}
    config["method"] = {"name": "asr_distill", **method}
    config["runner"].update(total_steps=steps, save_step=save_step, keep_last=10)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = pretrain(["-g", str(path), "-n", name, "-p", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name




@pytest.mark.parametrize("shape", ["deepthin", "shallowwide"])
def test_training_with_the_discriminative_loss(setup, tmp_path, shape):
    codewords = load_checkpoint(setup["teacher"])["model_weight"]["label_embs_concat"].shape[0]
    if shape == "deepthin":
        student, init = tiny_deepthin(("logits", codewords)), None
    else:
        student = tiny_shallowwide(("cosine", 16))
        init = {"feature_extractor": True, "feature_projection": True, "pos_conv": True, "layers": 2}
    expdir = run_config(setup, tmp_path, student, {"discriminative_weight": 0.5}, 12, 12, shape, init)
    records = read_metrics(expdir)
    assert len(records) == 12 and all("discriminative/layer0" in r and "regression/layer1" in r for r in records)
    losses = metric_values(records, "loss")
    assert losses[-1] < losses[0], losses
    import s3prl.hub as hub

    upstream = getattr(hub, f"{shape}_local")(ckpt=str(expdir / "states-12.ckpt")).eval()
    # The upstream holds the backbone only: training heads give no features.
    assert sum(p.numel() for p in upstream.parameters()) == StudentModel(student).num_parameters()
    with torch.no_grad():
        out = upstream(random_waves([16000, 8000]))
    assert len(out["hidden_states"]) == student.encoder.num_layers + 1
    assert out["last_hidden_state"].shape == (2, 49, student.encoder.embed_dim)
    assert out["pad_mask"].sum(1).tolist() == [49, 24]
    wrong = "shallowwide" if shape == "deepthin" else "deepthin"
    with pytest.raises(CheckpointError, match=f"holds a {shape} student .* load it with {shape}_local"):
        getattr(hub, f"{wrong}_local")(ckpt=str(expdir / "states-12.ckpt"))


def test_two_stage_fbank_run_and_resume_across_the_stage_boundary(setup, tmp_path):
    codewords = load_checkpoint(setup["teacher"])["model_weight"]["label_embs_concat"].shape[0]
    student = tiny_deepthin(("logits", codewords), fbank=True)
    method = {"discriminative_weight": 0.5, "front_end_steps": 3}
    expdir = run_config(setup, tmp_path, student, method, 6, 1, "fbank")
    records = read_metrics(expdir)
    assert all("front_end/layer0" in r and not any("regression" in key for key in r) for r in records[:3])
    assert all(not any("front_end" in key for key in r) and "discriminative/layer0" in r for r in records[3:])

    def weights(step):
        return load_checkpoint(expdir / f"states-{step}.ckpt")["Student"]

    first, boundary, last = weights(1), weights(3), weights(6)
    # Stage 1 trains the front end (and its head) only; the encoder and heads move in stage 2.
    assert not torch.equal(first["fbank.subsample.weight"], boundary["fbank.subsample.weight"])
    assert not torch.equal(first["front_end_head.weight"], boundary["front_end_head.weight"])
    for key in ("encoder.layers.0.attention.q_proj.weight", "prediction_head.heads.0.projection.weight",
                "codeword_head.weight"):
        assert torch.equal(first[key], boundary[key]), key
        assert not torch.equal(boundary[key], last[key]), key
    # Normalisation statistics: computed from the training audio before step 1, unchanged afterwards.
    assert first["fbank.statistics_frames"].item() > 0
    assert torch.equal(first["fbank.mean"], last["fbank.mean"])

    # Resuming at the boundary continues exactly as the uninterrupted run did.
    resumed = tmp_path / "fbank_resumed"
    resumed.mkdir()
    shutil.copy(expdir / "states-3.ckpt", resumed / "states-3.ckpt")
    result = pretrain(["-e", str(resumed / "states-3.ckpt")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = load_checkpoint(resumed / "states-6.ckpt")["Student"]
    assert all(torch.equal(again[key], last[key]) for key in last), "resumed run differs"
    assert "fbank normalisation statistics" not in result.stderr  # the checkpoint's, not recomputed

    import s3prl.hub as hub

    upstream = hub.deepthin_fbank_local(ckpt=str(expdir / "states-6.ckpt")).eval()
    with torch.no_grad():
        assert upstream(random_waves([16000]))["last_hidden_state"].shape == (1, 49, 40)
    with pytest.raises(CheckpointError, match="load it with deepthin_fbank_local"):
        hub.deepthin_local(ckpt=str(expdir / "states-6.ckpt"))


def test_shipped_asr_distill_configs():
    from s3prl_distill.pretrain.config import load_config
    from s3prl_distill.pretrain.s3prl_link import generate_configs  # s3prl's config_model/config_runner.yaml

    root = Path(__file__).resolve().parents[1] / "pretrain" / "asr_distill"
    deep, wide, fbank = (load_config(root / name) for name in
                         ("config.yaml", "config_shallowwide.yaml", "config_fbank.yaml"))
    assert deep.student == with_codeword_head(deepthin_config(), "logits", 504)
    assert wide.student == with_codeword_head(shallowwide_config(), "logits", 504)
    assert fbank.student == with_codeword_head(with_fbank_front_end(deepthin_config()), "logits", 504)
    assert wide.student_init.layers == 2 and deep.student_init.layers == 0
    assert fbank.method.front_end_steps > 0 and deep.method.front_end_steps == 0
    assert 0.2 <= deep.method.discriminative_weight <= 0.8 and deep.method.temperature == 0.1
    assert (deep.runner.total_steps, deep.data.train_batch_size, deep.optimizer.lr) == (25000, 12, 2.0e-4)
    full = yaml.safe_load((root / "config.yaml").read_text())
    generated = generate_configs(root / "config.yaml")
    model, runner = (yaml.safe_load(generated[name]) for name in ("config_model.yaml", "config_runner.yaml"))
    assert model == {k: full[k] for k in ("teacher", "student", "student_init", "follow_teacher", "method")}
    assert runner["pretrain_expert"]["datarc"] == full["data"]
    assert runner["runner"]["total_steps"] == full["runner"]["total_steps"]


@pytest.mark.slow
def test_s3prl_runner_trains_on_the_fbank_student(tmp_path, emotion_setup):
    config = tiny_deepthin(codeword=None, fbank=True)
    torch.manual_seed(0)
    model = StudentModel(config)
    mean, std, frames = fbank_statistics(random_waves([16000, 8000]), 80)
    model.fbank.set_statistics(mean, std, frames)
    checkpoint = save_checkpoint(export_student("asr_distill", config, model.state_dict()), tmp_path / "fb.ckpt")
    weights = featurizer_weights_after_training("deepthin_fbank_local", checkpoint, emotion_setup, tmp_path)
    assert weights.shape == (4,)  # front end + 3 layers
