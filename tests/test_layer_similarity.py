"""``s3prl-distill layer-similarity``: SKILL's teacher-layer similarity (linear CKA / cosine) and layer grouping."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import List

import numpy as np
import pytest
import soundfile
import yaml

from s3prl_distill.formats.s3prl_hubert import write_random_hubert
from s3prl_distill.pretrain.dphubert.layer_clustering import cluster_layers, linear_cka, similarity_matrix
from s3prl_distill.pretrain.dphubert.layer_similarity import (
    analyse_layers,
    choose_evenly,
    collect_hidden_states,
    find_audio,
    files_sha1,
)
from s3prl_distill.pretrain.config import TeacherConfig

BLOCKS = [[0, 1, 2], [3, 4], [5, 6, 7]]
OUTPUTS = ("similarity.npy", "similarity.csv", "groups.json", "layer_similarity.png", "skill_groups.yaml")


def block_similarity(blocks: List[List[int]] = BLOCKS, within: float = 0.9, across: float = 0.2) -> np.ndarray:
    count = sum(len(block) for block in blocks)
    similarity = np.full((count, count), across)
    for block in blocks:
        similarity[np.ix_(block, block)] = within
    np.fill_diagonal(similarity, 1.0)
    return similarity


def random_orthogonal(size: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------------------------------
# Similarity measures
# ---------------------------------------------------------------------------------------------------------------------

def test_linear_cka_known_answers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6))  # correlated columns
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # Invariant to an orthogonal rotation, isotropic scaling and a shift of the features.
    rotated = 3.7 * x @ random_orthogonal(6, rng) + 5.0
    assert linear_cka(x, rotated) == pytest.approx(1.0, abs=1e-10)
    # ... but not to an anisotropic scaling.
    assert linear_cka(x, x * np.array([1.0, 10.0, 1.0, 1.0, 1.0, 1.0])) < 0.99
    # Independent features, N >> D: close to 0.
    a, b = rng.standard_normal((5000, 4)), rng.standard_normal((5000, 4))
    assert 0 <= linear_cka(a, b) < 0.05
    # One feature each: the squared Pearson correlation.
    u = rng.standard_normal(200)
    v = 0.6 * u + rng.standard_normal(200)
    assert linear_cka(u, v) == pytest.approx(np.corrcoef(u, v)[0, 1] ** 2, rel=1e-10)
    # Different widths are fine for CKA; the same number of frames is required.
    assert 0 < linear_cka(x, x[:, :2]) < 1
    with pytest.raises(ValueError, match="frame counts"):
        linear_cka(x, x[:10])


def test_linear_cka_with_fewer_frames_than_features_uses_the_same_formula():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((10, 30)), rng.standard_normal((10, 40))  # N < D: the Gram form
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="constant"):
        linear_cka(x, np.ones((10, 3)))


def test_similarity_matrix_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((300, 5))
    states = [base, base + 0.1 * rng.standard_normal((300, 5)), rng.standard_normal((300, 5))]
    for measure in ("linear_cka", "cosine"):
        matrix = similarity_matrix(states, measure)
        assert matrix.shape == (3, 3) and matrix.dtype == np.float64
        assert np.array_equal(matrix, matrix.T)
        assert np.array_equal(np.diag(matrix), np.ones(3))
        assert matrix[0, 1] > 0.9 and abs(matrix[0, 2]) < 0.2  # near copy vs unrelated
        assert matrix[0, 1] == pytest.approx(
            linear_cka(states[0], states[1]) if measure == "linear_cka" else matrix[1, 0])
    with pytest.raises(ValueError, match="--measure"):
        similarity_matrix(states, "rbf_cka")


def test_cosine_measure():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 8))
    matrix = similarity_matrix([x, x.copy(), -x, 2.5 * x], "cosine")
    assert matrix[0, 1] == pytest.approx(1.0)
    assert matrix[0, 2] == pytest.approx(-1.0)
    assert matrix[0, 3] == pytest.approx(1.0)  # per-frame scale does not matter
    # Time-averaged: half the frames identical, half negated -> 0.
    half = x.copy()
    half[50:] *= -1
    assert similarity_matrix([x, half], "cosine")[0, 1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one width"):
        similarity_matrix([x, x[:, :4]], "cosine")


# ---------------------------------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("linkage", ["average", "complete", "single"])
def test_block_similarity_recovers_the_blocks(linkage):
    similarity = block_similarity()
    layers = list(range(8))
    assert cluster_layers(similarity, layers, k=3, linkage=linkage) == BLOCKS
    # Within-block distance 0.1, across 0.8: any threshold in between gives the blocks.
    assert cluster_layers(similarity, layers, threshold=0.3, linkage=linkage) == BLOCKS
    assert cluster_layers(similarity, layers, threshold=0.05, linkage=linkage) == [[i] for i in layers]
    assert cluster_layers(similarity, layers, threshold=0.9, linkage=linkage) == [layers]
    assert cluster_layers(similarity, layers, k=1, linkage=linkage) == [layers]
    assert cluster_layers(similarity, layers, k=3, linkage=linkage, contiguous=True) == BLOCKS
    assert cluster_layers(similarity, layers, threshold=0.3, linkage=linkage, contiguous=True) == BLOCKS


def test_groups_are_sorted_and_ordered_by_first_layer():
    # Blocks listed out of order in the matrix: {0, 4}, {1, 3}, {2}.
    similarity = np.full((5, 5), 0.1)
    for block in ([0, 4], [1, 3]):
        similarity[np.ix_(block, block)] = 0.95
    np.fill_diagonal(similarity, 1.0)
    assert cluster_layers(similarity, [4, 3, 2, 1, 0], k=3) == [[0, 4], [1, 3], [2]]


def test_contiguous_gives_runs_where_plain_clustering_does_not():
    similarity = block_similarity()
    similarity[0, 5] = similarity[5, 0] = 0.99  # layer 0 looks like layer 5
    layers = list(range(8))
    plain = cluster_layers(similarity, layers, k=3, linkage="average")
    assert 5 in next(group for group in plain if 0 in group)  # plain clustering puts 0 with 5
    assert any(group != list(range(group[0], group[-1] + 1)) for group in plain)  # not all runs
    for linkage in ("average", "complete", "single"):
        groups = cluster_layers(similarity, layers, k=3, linkage=linkage, contiguous=True)
        assert groups == BLOCKS
        assert all(group == list(range(group[0], group[-1] + 1)) for group in groups)
    for k in range(1, 9):  # always k runs partitioning the layers
        groups = cluster_layers(similarity, layers, k=k, contiguous=True)
        assert len(groups) == k and sum(groups, []) == layers


def test_exclude_layer0_and_argument_errors(caplog):
    similarity = block_similarity()
    groups = cluster_layers(similarity, list(range(1, 8)), k=3)
    assert groups == [[1, 2], [3, 4], [5, 6, 7]]
    assert cluster_layers(similarity, list(range(1, 8)), k=3, contiguous=True) == [[1, 2], [3, 4], [5, 6, 7]]
    assert cluster_layers(similarity, [5], k=1) == [[5]]
    with pytest.raises(ValueError, match="--groups 8: more groups than the 7 layers"):
        cluster_layers(similarity, list(range(1, 8)), k=8)
    with pytest.raises(ValueError, match="--groups 0"):
        cluster_layers(similarity, list(range(8)), k=0)
    with pytest.raises(ValueError, match="exactly one"):
        cluster_layers(similarity, list(range(8)), k=2, threshold=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        cluster_layers(similarity, list(range(8)))
    with pytest.raises(ValueError, match="--linkage 'median'"):
        cluster_layers(similarity, list(range(8)), k=2, linkage="median")
    with pytest.raises(ValueError, match=r"layers \[8\] are outside"):
        cluster_layers(similarity, list(range(9)), k=2)
    with caplog.at_level(logging.WARNING, logger="s3prl_distill.pretrain.dphubert.layer_similarity"):
        assert cluster_layers(similarity, list(range(8)), k=3, linkage="ward") == BLOCKS
    assert "Euclidean" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s3prl_distill.pretrain.dphubert.layer_similarity"):
        assert cluster_layers(similarity, list(range(8)), k=3, linkage="ward", contiguous=True) == BLOCKS
    assert "average linkage instead" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Calibration files
# ---------------------------------------------------------------------------------------------------------------------

def write_wave(path: Path, seconds: float, seed: int, rate: int = 16000, channels: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (150 + 90 * seed) * t) + 0.05 * rng.standard_normal(t.shape)
    if channels > 1:
        wave = np.stack([wave] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave.astype(np.float32), rate)
    return path


def test_find_audio_and_even_choice(tmp_path, caplog):
    for index, name in enumerate(["b/2.wav", "a/1.flac", "a/3.WAV", "c/0.wav"]):
        write_wave(tmp_path / "audio" / name, 0.1, index)
    (tmp_path / "audio" / "notes.txt").write_text("not audio")
    found = find_audio(tmp_path / "audio")
    assert [p.relative_to(tmp_path / "audio").as_posix() for p in found] == ["a/1.flac", "a/3.WAV", "b/2.wav", "c/0.wav"]
    listing = tmp_path / "lists" / "calib.txt"
    listing.parent.mkdir()
    listing.write_text("../audio/c/0.wav\n\n# comment\n" + str(tmp_path / "audio" / "a" / "1.flac") + "\n")
    assert find_audio(listing) == [tmp_path / "audio" / "a" / "1.flac", tmp_path / "audio" / "c" / "0.wav"]
    listing.write_text("../audio/missing.wav\n")
    with pytest.raises(ValueError, match=r"calib.txt, line 1: audio file .*missing.wav does not exist"):
        find_audio(listing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--data .*empty: no .wav or .flac"):
        find_audio(tmp_path / "empty")
    with pytest.raises(ValueError, match="--data .*nowhere"):
        find_audio(tmp_path / "nowhere")

    files = [Path(f"/x/{i:02d}.wav") for i in range(10)]
    assert choose_evenly(list(reversed(files)), 5) == files[0::2]
    assert choose_evenly(files, 3) == [files[0], files[3], files[6]]
    with caplog.at_level(logging.INFO, logger="s3prl_distill.pretrain.dphubert.layer_similarity"):
        assert choose_evenly(files, 50) == files
    assert "only 10 audio files" in caplog.text
    with pytest.raises(ValueError, match="--utterances 0"):
        choose_evenly(files, 0)
    assert files_sha1(files) == files_sha1(list(reversed(files))) != files_sha1(files[1:])


class CountingTeacher:
    """Two hidden states per utterance, frame t of call c = (c, t) and (c, -t); ``frames(call, samples)`` frames."""

    def __init__(self, frames) -> None:
        self.frames = frames
        self.calls = 0

    def __call__(self, waveforms, lengths):
        import torch

        count = self.frames(self.calls, int(lengths[0]))
        t = torch.arange(count, dtype=torch.float32)
        call = torch.full_like(t, float(self.calls))
        self.calls += 1
        return [torch.stack([call, t], dim=1)[None], torch.stack([call, -t], dim=1)[None]]


def test_frames_are_kept_at_one_stride_over_all_utterances_and_capped(tmp_path):
    files = [write_wave(tmp_path / f"{i}.wav", 0.2, i) for i in range(3)]  # 3200 samples each
    states = collect_hidden_states(CountingTeacher(lambda call, samples: samples // 90), files, max_frames=30)
    # 3 x 35 = 105 frames expected, at most 30 kept: every 4th frame of the concatenation (across utterances).
    kept = [(int(call), int(t)) for call, t in states[0]]
    assert kept == [(index // 35, index % 35) for index in range(0, 105, 4)]
    assert np.array_equal(states[1][:, 1], -states[0][:, 1]) and states[0].dtype == np.float64
    # A first utterance that under-states the frame rate: the cap still holds, thinned evenly.
    states = collect_hidden_states(CountingTeacher(lambda call, samples: 1 if call == 0 else samples // 100), files,
                                   max_frames=30)
    assert [state.shape for state in states] == [(30, 2), (30, 2)]
    assert states[0][0, 0] == 0 and states[0][-1, 0] == 2  # spread over all utterances
    # --max-seconds crops to the first samples.
    states = collect_hidden_states(CountingTeacher(lambda call, samples: samples // 100), files, max_seconds=0.05)
    assert states[0].shape == (24, 2)


# ---------------------------------------------------------------------------------------------------------------------
# End to end on a tiny HuBERT teacher
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hubert_ckpt(tmp_path_factory) -> Path:
    return write_random_hubert(tmp_path_factory.mktemp("layer_similarity") / "hubert.ckpt")  # 3 layers, width 48


@pytest.fixture
def audio_dir(tmp_path) -> Path:
    for index, seconds in enumerate([0.5, 0.7, 0.9, 1.0]):
        write_wave(tmp_path / "audio" / f"utt{index}.wav", seconds, index)
    return tmp_path / "audio"


def test_analyse_layers_end_to_end_is_deterministic(hubert_ckpt, audio_dir, tmp_path):
    config = TeacherConfig(name="hubert_local", ckpt=str(hubert_ckpt))
    files = find_audio(audio_dir)
    runs = [analyse_layers(config, files, tmp_path / f"out{run}", utterances=10, groups=2) for run in range(2)]
    first, second = tmp_path / "out0", tmp_path / "out1"
    for name in OUTPUTS:
        assert (first / name).is_file() and (first / name).stat().st_size > 0, name
    similarity = np.load(first / "similarity.npy")
    assert similarity.shape == (4, 4) and np.allclose(similarity, similarity.T)
    assert np.array_equal(np.diag(similarity), np.ones(4))
    assert np.all(similarity <= 1 + 1e-9) and np.all(similarity > 0)
    csv = (first / "similarity.csv").read_text().splitlines()
    assert csv[0] == "layer,0,1,2,3" and len(csv) == 5
    assert np.allclose(np.array([[float(v) for v in line.split(",")[1:]] for line in csv[1:]]), similarity)

    groups = runs[0]["groups"]
    assert len(groups) == 2 and sorted(sum(groups, [])) == [0, 1, 2, 3]
    assert all(group == sorted(group) for group in groups) and groups == sorted(groups, key=lambda g: g[0])
    saved = json.loads((first / "groups.json").read_text())
    assert saved == runs[0]
    assert saved["utterances"] == 4 and saved["teacher"] == "hubert_local" and saved["ckpt"] == str(hubert_ckpt)
    assert saved["measure"] == "linear_cka" and saved["k"] == 2 and saved["threshold"] is None
    # 0.5 + 0.7 + 0.9 + 1.0 s at HuBERT's 20 ms hop: about 150 frames, all kept under the default cap.
    assert 140 <= saved["frames"] <= 160
    assert saved["files_sha1"] == files_sha1(files)

    text = (first / "skill_groups.yaml").read_text()
    assert text.startswith("# layer-similarity: linear_cka, average linkage, 2 groups, 4 utterances from ")
    assert f"teacher hubert_local {hubert_ckpt}\n" in text.splitlines(keepends=True)[0]
    assert yaml.safe_load(text) == {"student": {"prediction_head": {
        "type": "projection", "target_groups": groups, "group_target": "mean", "layer_zero": "feature_projection"}}}
    assert saved["layer_zero"] == "feature_projection"

    for name in ("similarity.npy", "groups.json", "skill_groups.yaml", "similarity.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_frame_cap_utterance_choice_and_cosine(hubert_ckpt, audio_dir, tmp_path):
    config = TeacherConfig(name="hubert_local", ckpt=str(hubert_ckpt))
    files = find_audio(audio_dir)
    result = analyse_layers(config, files, tmp_path / "out", utterances=2, measure="cosine", distance_threshold=0.5,
                            exclude_layer0=True, contiguous=True, max_frames=30, max_seconds=0.6)
    assert result["utterances"] == 2 and result["files_sha1"] == files_sha1([files[0], files[2]])
    assert 2 <= result["frames"] <= 30
    assert result["k"] is None and result["threshold"] == 0.5 and result["exclude_layer0"] and result["contiguous"]
    assert sorted(sum(result["groups"], [])) == [1, 2, 3]  # layer 0 in no group
    assert all(group == list(range(group[0], group[-1] + 1)) for group in result["groups"])
    similarity = np.load(tmp_path / "out" / "similarity.npy")
    assert similarity.shape == (4, 4)  # all hidden states, layer 0 included
    assert np.all(similarity <= 1 + 1e-9) and np.all(similarity >= -1 - 1e-9)


def test_cli(hubert_ckpt, audio_dir, tmp_path, capsys):
    from s3prl_distill.cli import main

    listing = tmp_path / "calib.txt"
    listing.write_text("\n".join(f"audio/utt{i}.wav" for i in (3, 1, 0)) + "\n")  # relative to the list file
    output = tmp_path / "cli"
    main(["layer-similarity", "--teacher", "hubert_local", "--ckpt", str(hubert_ckpt), "--data", str(listing),
          "--output", str(output), "--groups", "2", "--exclude-layer0", "--linkage", "complete", "--max-seconds", "1"])
    printed = capsys.readouterr().out
    for name in OUTPUTS:
        assert (output / name).is_file() and str(output / name) in printed
    saved = json.loads((output / "groups.json").read_text())
    assert saved["utterances"] == 3 and saved["linkage"] == "complete" and saved["exclude_layer0"]
    assert len(saved["groups"]) == 2 and sorted(sum(saved["groups"], [])) == [1, 2, 3]
    snippet = yaml.safe_load((output / "skill_groups.yaml").read_text())
    assert snippet["student"]["prediction_head"]["target_groups"] == saved["groups"]
    assert f"from {listing};" in (output / "skill_groups.yaml").read_text().splitlines()[0]

    with pytest.raises(SystemExit, match="--groups 4: more groups than the 3 layers"):
        main(["layer-similarity", "--teacher", "hubert_local", "--ckpt", str(hubert_ckpt), "--data", str(audio_dir),
              "--output", str(tmp_path / "bad"), "--groups", "4", "--exclude-layer0"])
    with pytest.raises(SystemExit, match="--ckpt .*missing.ckpt does not exist"):
        main(["layer-similarity", "--teacher", "hubert_local", "--ckpt", str(tmp_path / "missing.ckpt"), "--data",
              str(audio_dir), "--output", str(tmp_path / "bad"), "--groups", "2"])
    with pytest.raises(SystemExit, match="--data .*nothing: no such directory"):
        main(["layer-similarity", "--teacher", "hubert_local", "--data", str(tmp_path / "nothing"),
              "--output", str(tmp_path / "bad"), "--groups", "2"])


@pytest.mark.parametrize("rate,channels,problem", [(8000, 1, "8000 Hz"), (16000, 2, "2 channel")])
def test_bad_audio_is_named(hubert_ckpt, audio_dir, tmp_path, rate, channels, problem):
    bad = write_wave(audio_dir / "zz_bad.wav", 0.5, 7, rate=rate, channels=channels)
    config = TeacherConfig(name="hubert_local", ckpt=str(hubert_ckpt))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))} is .*{problem}.*16000 Hz mono"):
        analyse_layers(config, find_audio(audio_dir), tmp_path / "out", groups=2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=rf"layer-similarity: audio file {re.escape(str(bad))}"):
        from s3prl_distill.cli import main

        main(["layer-similarity", "--teacher", "hubert_local", "--ckpt", str(hubert_ckpt), "--data", str(audio_dir),
              "--output", str(tmp_path / "out"), "--groups", "2"])
