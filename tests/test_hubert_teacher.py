"""The small HuBERT teacher: MFCC frames aligned with the CNN, k-means targets, a hubert_local checkpoint."""

import numpy as np
import torch

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.audio_lists import read_length_csvs, write_length_csvs
from s3prl_distill.pretrain.hubert_teacher import HubertTeacherConfig, assign, fit_kmeans, mfcc_features, train_hubert_teacher

from helpers import write_audio_tree

TINY = {"label_rate": 50.0, "extractor_mode": "default", "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        "encoder_layers": 2, "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4,
        "conv_pos": 16, "conv_pos_groups": 4, "final_dim": 16, "mask_prob": 0.5, "mask_length": 3}


def test_mfcc_frames_align_with_the_cnn():
    for samples in (400, 719, 720, 16000, 23457):
        assert mfcc_features(np.zeros(samples, dtype=np.float32) + 0.01).shape == ((samples - 400) // 320 + 1, 39)


def test_kmeans_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    frames = [torch.from_numpy(rng.normal(size=(200, 39)).astype(np.float32) + 10 * k) for k in range(3)]
    a, b = fit_kmeans(frames, 3, 10000, seed=1), fit_kmeans(frames, 3, 10000, seed=1)
    assert np.array_equal(a, b)
    labels = [assign(f, a) for f in frames]
    assert all(len(torch.unique(x)) == 1 for x in labels)  # three well-separated blobs -> one cluster each
    assert len(torch.unique(torch.cat(labels))) == 3


def test_teacher_trains_and_loads_in_hubert_local(tmp_path):
    audio = write_audio_tree(tmp_path / "audio", count=8)
    write_length_csvs(audio, tmp_path / "csv", progress=False)
    items = read_length_csvs(audio, tmp_path / "csv", ["train-tiny"])
    config = HubertTeacherConfig(model=TINY, clusters=8, steps=6, batch_size=4, max_length=12000)
    path = train_hubert_teacher(items, tmp_path / "teacher.ckpt", config, progress=False)
    checkpoint = load_checkpoint(path)
    weights = checkpoint["model_weight"]
    assert weights["label_embs_concat"].shape == (8, 16) and weights["final_proj.weight"].shape == (16, 48)
    assert len(checkpoint["dictionaries_symbols"][0]) == 8
    import s3prl.hub as hub

    teacher = hub.hubert_local(ckpt=str(path)).eval()
    with torch.no_grad():
        states = teacher([torch.randn(16000)])["hidden_states"]
    assert len(states) == 3 and states[0].shape == (1, 49, 48)
    # Training changed the weights (the same seed's random init differs from the saved model).
    from s3prl_distill.formats.s3prl_hubert import build_hubert

    torch.manual_seed(config.seed)
    initial, _, _ = build_hubert(dict(TINY), num_labels=8)
    assert not torch.equal(initial.state_dict()["encoder.layers.0.fc1.weight"], weights["encoder.layers.0.fc1.weight"])
