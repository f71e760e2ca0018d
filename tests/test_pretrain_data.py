"""Tests of the pretraining data pipeline: length CSVs, header checks, bucketed resumable batches, crops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from s3prl_distill.audio_lists import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioItem,
    DataError,
    check_audio_files,
    read_length_csvs,
    write_length_csvs,
)
from s3prl_distill.pretrain.data import BucketBatchSampler, CroppedAudioDataset, collate_waveforms


def write_audio(path: Path, length: int, sample_rate: int = SAMPLE_RATE, channels: int = 1, seed: int = 0) -> Path:
    """A short noise file (16-bit PCM, so the float values read back are exact multiples of 1/32768)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (length,) if channels == 1 else (length, channels)
    soundfile.write(str(path), 0.5 * rng.uniform(-1, 1, size=shape), sample_rate, subtype="PCM_16")
    return path


# Set name -> {path relative to the set folder: samples}. Two equal lengths in set_b exercise the tie order.
TREE: Dict[str, Dict[str, int]] = {
    "set_a": {"spk1/ch1/a-long.flac": 8000, "spk1/ch1/a-short.flac": 2000, "spk2/a-mid.wav": 5000},
    "set_b": {"z-tie.flac": 3000, "b-tie.flac": 3000, "deep/er/b-max.flac": 9000},
}


@pytest.fixture
def audio_tree(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    for seed, (set_name, files) in enumerate(TREE.items()):
        for offset, (relative, length) in enumerate(files.items()):
            write_audio(root / set_name / relative, length, seed=10 * seed + offset)
    (root / "set_a" / "notes.txt").write_text("not audio")
    (root / "no_audio_here").mkdir()
    return root


# --------------------------------------------------------------------------------------------------------------------
# Length CSVs


def test_write_then_read_round_trip(audio_tree: Path, tmp_path: Path):
    out = tmp_path / "len_for_bucket"
    written = write_length_csvs(audio_tree, out, progress=False)
    assert written == {"set_a": out / "set_a.csv", "set_b": out / "set_b.csv"}
    # Only the two CSVs: no temporary file left behind.
    assert sorted(p.name for p in out.iterdir()) == ["set_a.csv", "set_b.csv"]

    lines = (out / "set_b.csv").read_text().splitlines()
    assert lines == [
        ",file_path,length,label",
        "0,set_b/deep/er/b-max.flac,9000,b-max",
        "1,set_b/b-tie.flac,3000,b-tie",
        "2,set_b/z-tie.flac,3000,z-tie",
    ]

    items = read_length_csvs(audio_tree, out, ["set_a", "set_b"])
    assert items == [
        AudioItem(audio_tree / "set_a/spk1/ch1/a-long.flac", 8000),
        AudioItem(audio_tree / "set_a/spk2/a-mid.wav", 5000),
        AudioItem(audio_tree / "set_a/spk1/ch1/a-short.flac", 2000),
        AudioItem(audio_tree / "set_b/deep/er/b-max.flac", 9000),
        AudioItem(audio_tree / "set_b/b-tie.flac", 3000),
        AudioItem(audio_tree / "set_b/z-tie.flac", 3000),
    ]
    assert all(item.path.is_file() for item in items)
    # Set order is the caller's.
    assert [item.length for item in read_length_csvs(audio_tree, out, ["set_b", "set_a"])][:3] == [9000, 3000, 3000]
    # The header checks pass on what was written.
    assert check_audio_files(items, progress=False) == items


def test_write_only_requested_sets_and_single_root_set(audio_tree: Path, tmp_path: Path):
    written = write_length_csvs(audio_tree, tmp_path / "only_b", sets=["set_b"], progress=False)
    assert list(written) == ["set_b"]
    assert sorted(p.name for p in (tmp_path / "only_b").iterdir()) == ["set_b.csv"]

    # A folder holding audio files directly becomes one set named after the folder.
    flat = tmp_path / "flat_corpus"
    write_audio(flat / "one.wav", 1000)
    write_audio(flat / "two.FLAC", 1500)
    written = write_length_csvs(flat, tmp_path / "flat_csv", progress=False)
    assert list(written) == ["flat_corpus"]
    items = read_length_csvs(flat, tmp_path / "flat_csv", ["flat_corpus"])
    assert items == [AudioItem(flat / "two.FLAC", 1500), AudioItem(flat / "one.wav", 1000)]


def test_write_errors_name_the_set_or_file(audio_tree: Path, tmp_path: Path, caplog):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="missing_set"):
        write_length_csvs(audio_tree, out, sets=["set_a", "missing_set"], progress=False)
    with pytest.raises(DataError, match="no_audio_here"):
        write_length_csvs(audio_tree, out, sets=["no_audio_here"], progress=False)
    with pytest.raises(DataError, match="no audio files"):
        write_length_csvs(tmp_path / "audio" / "no_audio_here", out, progress=False)
    with pytest.raises(ValueError, match="'stop', 'skip'"):
        write_length_csvs(audio_tree, out, on_bad_file="ignore", progress=False)
    with pytest.raises(TypeError, match="single string"):
        write_length_csvs(audio_tree, out, sets="set_a", progress=False)
    assert not out.exists()  # nothing written by any failed call

    narrowband = write_audio(audio_tree / "set_a" / "spk3" / "narrow.flac", 800, sample_rate=8000)
    stereo = write_audio(audio_tree / "set_b" / "stereo.wav", 900, channels=2)
    with pytest.raises(DataError) as error:
        write_length_csvs(audio_tree, out, progress=False)
    assert str(narrowband) in str(error.value) and "8000 Hz" in str(error.value)
    assert not out.exists()  # all sets are checked before any CSV is written

    with caplog.at_level(logging.WARNING, logger="s3prl_distill.audio_lists"):
        written = write_length_csvs(audio_tree, out, on_bad_file="skip", progress=False)
    assert str(narrowband) in caplog.text and str(stereo) in caplog.text
    assert "2 channels" in caplog.text
    paths = {item.path for item in read_length_csvs(audio_tree, out, list(written))}
    assert len(paths) == 6 and narrowband not in paths and stereo not in paths


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "not found"),
        ("", "empty CSV"),
        ("file_path,length\n", "empty CSV"),
        ("file_path,label\na.flac,a\n", "missing column"),
        ("path,length\na.flac,10\n", "missing column"),
        ("file_path,length\na.flac,10\nb.flac,ten\n", r"row 2 .*'ten' is not an integer"),
        ("file_path,length\na.flac,10.5\n", r"row 1 .*not an integer"),
        ("file_path,length\na.flac,10\nb.flac,0\n", r"row 2 .*not positive"),
        ("file_path,length\na.flac,-3\n", r"row 1 .*not positive"),
        ("file_path,length\n,10\n", r"row 1 .*empty file_path"),
    ],
)
def test_csv_errors_name_the_csv(tmp_path: Path, text, message):
    csv_path = tmp_path / "buckets" / "train.csv"
    if text is not None:
        write_csv(csv_path, text)
    with pytest.raises(DataError, match=message) as error:
        read_length_csvs(tmp_path, tmp_path / "buckets", ["train"])
    assert str(csv_path) in str(error.value)


def test_csv_extra_columns_are_ignored(tmp_path: Path):
    write_csv(tmp_path / "b" / "x.csv", "speaker,length,file_path,label\ns1,30,x/1.flac,1\ns2,20,x/2.flac,2\n")
    items = read_length_csvs(tmp_path / "root", tmp_path / "b", ["x"])
    assert items == [AudioItem(tmp_path / "root/x/1.flac", 30), AudioItem(tmp_path / "root/x/2.flac", 20)]


# --------------------------------------------------------------------------------------------------------------------
# Header checks


@pytest.fixture
def mixed_items(tmp_path: Path) -> Dict[str, AudioItem]:
    return {
        "good": AudioItem(write_audio(tmp_path / "good.flac", 1600), 1600),
        "narrowband": AudioItem(write_audio(tmp_path / "narrowband.flac", 800, sample_rate=8000), 800),
        "stereo": AudioItem(write_audio(tmp_path / "stereo.wav", 1600, channels=2), 1600),
        "missing": AudioItem(tmp_path / "missing.flac", 1600),
        "mismatch": AudioItem(write_audio(tmp_path / "mismatch.flac", 1700), 1600),
        "good2": AudioItem(write_audio(tmp_path / "good2.wav", 400), 400),
    }


def test_check_audio_files_stop_lists_every_bad_file(mixed_items: Dict[str, AudioItem]):
    with pytest.raises(DataError) as error:
        check_audio_files(list(mixed_items.values()), progress=False)
    message = str(error.value)
    assert "4 of 6 audio files are bad" in message
    for name, reason in [
        ("narrowband", "8000 Hz"), ("stereo", "2 channels"), ("missing", "not found"), ("mismatch", "1700 samples"),
    ]:
        line = next(line for line in message.splitlines() if str(mixed_items[name].path) in line)
        assert reason in line
    assert str(mixed_items["good"].path) not in message


def test_check_audio_files_skip_returns_good_items_and_warns(mixed_items: Dict[str, AudioItem], caplog):
    with caplog.at_level(logging.WARNING, logger="s3prl_distill.audio_lists"):
        good = check_audio_files(list(mixed_items.values()), on_bad_file="skip", progress=False)
    assert good == [mixed_items["good"], mixed_items["good2"]]
    assert "4 of 6 audio files are bad" in caplog.text
    assert str(mixed_items["stereo"].path) in caplog.text
    with pytest.raises(ValueError, match="'stop', 'skip'"):
        check_audio_files([mixed_items["good"]], on_bad_file="warn", progress=False)


def test_files_shorter_than_the_receptive_field_are_bad(tmp_path: Path, audio_tree: Path, caplog):
    assert MIN_SAMPLES == 400
    tiny = AudioItem(write_audio(tmp_path / "tiny.flac", 300), 300)
    just_enough = AudioItem(write_audio(tmp_path / "just_enough.flac", MIN_SAMPLES), MIN_SAMPLES)
    with pytest.raises(DataError) as error:
        check_audio_files([tiny, just_enough], progress=False)
    line = next(line for line in str(error.value).splitlines() if str(tiny.path) in line)
    assert "300 samples, shorter than the 400-sample (25 ms) receptive field" in line
    assert str(just_enough.path) not in str(error.value)
    with caplog.at_level(logging.WARNING, logger="s3prl_distill.audio_lists"):
        assert check_audio_files([tiny, just_enough], on_bad_file="skip", progress=False) == [just_enough]
    assert str(tiny.path) in caplog.text and "receptive field" in caplog.text

    # prepare-data reads headers the same way: a stop names the file, a skip leaves it out of the CSV.
    short = write_audio(audio_tree / "set_a" / "short.flac", MIN_SAMPLES - 1)
    empty = audio_tree / "set_a" / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    out = tmp_path / "csvs"
    with pytest.raises(DataError) as error:
        write_length_csvs(audio_tree, out, progress=False)
    assert f"{short}: 399 samples, shorter than" in str(error.value)
    assert f"{empty}: 0 samples, shorter than" in str(error.value)
    assert not out.exists()
    written = write_length_csvs(audio_tree, out, on_bad_file="skip", progress=False)
    paths = {item.path for item in read_length_csvs(audio_tree, out, list(written))}
    assert len(paths) == 6 and short not in paths and empty not in paths


def test_skip_with_every_file_bad_is_an_error_listing_them(mixed_items: Dict[str, AudioItem], tmp_path: Path):
    bad = [mixed_items[name] for name in ("narrowband", "stereo", "missing", "mismatch")]
    with pytest.raises(DataError) as error:
        check_audio_files(bad, on_bad_file="skip", progress=False, source="sets ['train'] in /data/len_for_bucket")
    message = str(error.value)
    assert "All 4 audio files are bad: on_bad_file='skip' leaves none to use" in message
    assert "sets ['train'] in /data/len_for_bucket" in message
    for name, reason in [("narrowband", "8000 Hz"), ("stereo", "2 channels"), ("missing", "not found")]:
        line = next(line for line in message.splitlines() if str(mixed_items[name].path) in line)
        assert reason in line

    root = tmp_path / "all_bad"
    narrow = write_audio(root / "train" / "narrow.flac", 800, sample_rate=8000)
    tiny = write_audio(root / "train" / "tiny.flac", 100)
    with pytest.raises(DataError) as error:
        write_length_csvs(root, tmp_path / "csvs", on_bad_file="skip", progress=False)
    message = str(error.value)
    assert "set 'train'" in message and "All 2 audio files are bad" in message
    assert f"{narrow}: sample rate 8000 Hz" in message and f"{tiny}: 100 samples" in message
    assert not (tmp_path / "csvs").exists()


# --------------------------------------------------------------------------------------------------------------------
# Sampler


LENGTHS = [int(x) for x in np.random.default_rng(3).integers(1000, 50000, size=23)]


def run_epoch(sampler: BucketBatchSampler) -> List[List[tuple]]:
    return [list(batch) for batch in sampler]


def test_sampler_covers_every_item_once_in_length_buckets():
    sampler = BucketBatchSampler(LENGTHS, batch_size=4, seed=7)
    assert len(sampler) == 6  # 23 items: 5 full batches and one of 3
    by_length = sorted(range(len(LENGTHS)), key=lambda i: (-LENGTHS[i], i))
    buckets = {tuple(by_length[start:start + 4]) for start in range(0, 23, 4)}
    for epoch in range(3):
        batches = run_epoch(sampler)
        assert all(e == epoch for batch in batches for _, e in batch)
        indices = [index for batch in batches for index, _ in batch]
        assert sorted(indices) == list(range(len(LENGTHS)))
        # Each batch is one chunk of the length-sorted order: similar lengths, little padding.
        assert {tuple(index for index, _ in batch) for batch in batches} == buckets
    assert (sampler.epoch, sampler.batch_index) == (3, 0)


def test_sampler_order_depends_only_on_seed_and_epoch():
    first = BucketBatchSampler(LENGTHS, batch_size=3, seed=11)
    torch.manual_seed(123)  # the global RNG must not matter
    np.random.seed(5)
    second = BucketBatchSampler(LENGTHS, batch_size=3, seed=11)
    epochs_first = [run_epoch(first) for _ in range(3)]
    epochs_second = [run_epoch(second) for _ in range(3)]
    assert epochs_first == epochs_second
    orders = [[tuple(i for i, _ in batch) for batch in epoch] for epoch in epochs_first]
    assert orders[0] != orders[1] and orders[1] != orders[2]
    other_seed = BucketBatchSampler(LENGTHS, batch_size=3, seed=12)
    assert other_seed.batch_order(0) != first.batch_order(0)
    assert sorted(first.batch_order(4)) == list(range(len(first)))


def test_set_position_gives_the_tail_of_a_fresh_epoch():
    reference = BucketBatchSampler(LENGTHS, batch_size=4, seed=1)
    full_epochs = [run_epoch(reference) for _ in range(3)]
    for epoch in (0, 2):
        for start in range(len(reference)):
            sampler = BucketBatchSampler(LENGTHS, batch_size=4, seed=1)
            sampler.set_position(epoch, start)
            iterator = iter(sampler)
            seen = []
            for consumed, batch in enumerate(iterator, start=1):
                seen.append(batch)
                expected = (epoch, start + consumed) if start + consumed < len(sampler) else (epoch + 1, 0)
                assert (sampler.epoch, sampler.batch_index) == expected
            assert seen == full_epochs[epoch][start:]
    # A fully consumed epoch resumes at the start of the next one.
    sampler = BucketBatchSampler(LENGTHS, batch_size=4, seed=1)
    sampler.set_position(1, len(sampler))
    assert (sampler.epoch, sampler.batch_index) == (2, 0)
    assert run_epoch(sampler) == full_epochs[2]
    with pytest.raises(ValueError):
        sampler.set_position(0, len(sampler) + 1)
    with pytest.raises(ValueError):
        sampler.set_position(-1, 0)


def test_killed_and_resumed_run_sees_the_same_batches():
    uninterrupted = BucketBatchSampler(LENGTHS, batch_size=5, seed=3)
    stream = [batch for _ in range(3) for batch in uninterrupted]

    # A run that stops after 7 batches (mid epoch 1), checkpoints the position, and a new process resumes it.
    killed = BucketBatchSampler(LENGTHS, batch_size=5, seed=3)
    seen: List = []
    while len(seen) < 7:
        for batch in killed:
            seen.append(batch)
            if len(seen) == 7:
                break
    checkpoint = (killed.epoch, killed.batch_index)
    assert checkpoint == killed.position_after(0, 0, 7) == (1, 2)
    resumed = BucketBatchSampler(LENGTHS, batch_size=5, seed=3)
    resumed.set_position(*checkpoint)
    while resumed.epoch < 3:
        seen.extend(resumed)
    assert seen == stream


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_union_to_the_single_process_batch(world_size: int):
    lengths = LENGTHS[:21]  # 21 items, global batch 6: the last chunk (3 items) gives every rank a share
    single = BucketBatchSampler(lengths, batch_size=6, seed=5)
    ranks = [BucketBatchSampler(lengths, 6, seed=5, world_size=world_size, rank=r) for r in range(world_size)]
    assert all(len(sampler) == len(single) for sampler in ranks)
    for _ in range(2):
        steps = 0
        for global_batch, *shares in zip(single, *ranks):
            steps += 1
            for rank, share in enumerate(shares):
                assert share == global_batch[rank::world_size]
            assert sorted(pair for share in shares for pair in share) == sorted(global_batch)
        assert steps == len(single)


def test_sampler_drops_a_last_chunk_smaller_than_world_size_and_validates():
    lengths = LENGTHS[:20]  # global batch 6 leaves a last chunk of 2 items
    assert len(BucketBatchSampler(lengths, 6, seed=0, world_size=2, rank=1)) == 4
    sampler = BucketBatchSampler(lengths, 6, seed=0, world_size=3, rank=2)
    assert len(sampler) == 3
    shortest_two = set(sorted(range(20), key=lambda i: (-lengths[i], i))[-2:])
    for rank in range(3):
        seen = {i for batch in BucketBatchSampler(lengths, 6, 0, 3, rank) for i, _ in batch}
        assert not seen & shortest_two
    for kwargs in [
        dict(lengths=[], batch_size=2, seed=0),
        dict(lengths=[1, 2], batch_size=0, seed=0),
        dict(lengths=[1, 2], batch_size=2, seed=0, world_size=2, rank=2),
        dict(lengths=[1, 2], batch_size=2, seed=0, world_size=2, rank=-1),
        dict(lengths=[1, 2, 3], batch_size=2, seed=0, world_size=3, rank=0),
        dict(lengths=[1], batch_size=2, seed=0, world_size=2, rank=0),
        dict(lengths=[1, 2], batch_size=2, seed=-1),
    ]:
        with pytest.raises(ValueError):
            BucketBatchSampler(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Dataset and collate


def test_crops_are_deterministic_windows_of_the_file(tmp_path: Path):
    long_path = write_audio(tmp_path / "long.flac", 20000, seed=1)
    short_path = write_audio(tmp_path / "short.wav", 1500, seed=2)
    items = [AudioItem(long_path, 20000), AudioItem(short_path, 1500)]
    full, _ = soundfile.read(str(long_path), dtype="float32")
    dataset = CroppedAudioDataset(items, max_length=4000, seed=9)
    assert len(dataset) == 2

    offsets = []
    for epoch in range(6):
        crop = dataset[(0, epoch)]
        assert crop.dtype == torch.float32 and crop.shape == (4000,)
        assert float(crop.abs().max()) <= 1.0
        # The crop is the window of the full file at the seeded offset, and a pure function of (seed, epoch, index).
        offset = int(np.random.default_rng([9, epoch, 0]).integers(0, 20000 - 4000, endpoint=True))
        assert dataset.crop_offset(0, epoch) == offset
        np.testing.assert_array_equal(crop.numpy(), full[offset:offset + 4000])
        assert torch.equal(crop, CroppedAudioDataset(items, 4000, seed=9)[(0, epoch)])
        offsets.append(offset)
    assert len(set(offsets)) > 1  # crops move between epochs
    assert not torch.equal(dataset[(0, 0)], CroppedAudioDataset(items, 4000, seed=10)[(0, 0)])

    short_full, _ = soundfile.read(str(short_path), dtype="float32")
    np.testing.assert_array_equal(dataset[(1, 3)].numpy(), short_full)  # shorter than max_length: whole file
    np.testing.assert_array_equal(CroppedAudioDataset(items, None, seed=9)[(0, 1)].numpy(), full)


def test_dataset_errors_name_the_path(tmp_path: Path):
    items = [
        AudioItem(write_audio(tmp_path / "narrow.flac", 800, sample_rate=8000), 800),
        AudioItem(write_audio(tmp_path / "stereo.flac", 800, channels=2), 800),
        AudioItem(tmp_path / "missing.flac", 800),
        AudioItem(write_audio(tmp_path / "short.flac", 700), 800),
        AudioItem(write_csv(tmp_path / "garbage.flac", "not audio at all"), 800),
    ]
    dataset = CroppedAudioDataset(items, max_length=None, seed=0)
    for index, item in enumerate(items):
        with pytest.raises(DataError) as error:
            dataset[(index, 0)]
        assert str(item.path) in str(error.value)
    with pytest.raises(IndexError):
        dataset[(len(items), 0)]
    with pytest.raises(ValueError):
        CroppedAudioDataset(items, max_length=0, seed=0)


def write_float_wav_with_nan(path: Path, length: int, bad: Sequence[int], inf: Sequence[int] = ()) -> np.ndarray:
    """A 32-bit float WAV with NaN at the ``bad`` positions (+Inf at ``inf``); returns the samples written."""
    wave = np.random.default_rng(4).uniform(-0.5, 0.5, size=length).astype(np.float32)
    wave[list(bad)] = np.nan
    wave[list(inf)] = np.inf
    soundfile.write(str(path), wave, SAMPLE_RATE, subtype="FLOAT")
    return wave


def test_non_finite_samples_stop_with_the_file_named(tmp_path: Path):
    nan_path = tmp_path / "has_nan.wav"
    write_float_wav_with_nan(nan_path, 2000, bad=[1500])
    good_path = write_audio(tmp_path / "good.flac", 2000)
    items = [AudioItem(nan_path, 2000), AudioItem(good_path, 2000)]
    assert check_audio_files(items, progress=False) == items  # headers cannot show NaN
    dataset = CroppedAudioDataset(items, max_length=None, seed=0)
    with pytest.raises(DataError) as error:
        dataset[(0, 0)]
    assert f"{nan_path}: 1 non-finite (NaN or Inf) sample(s) in the 2000-sample window at offset 0" in str(error.value)
    assert dataset[(1, 0)].shape == (2000,)
    # A window that misses the bad sample is fine.
    assert torch.isfinite(dataset.read(0, 0, 1000)).all()
    with pytest.raises(DataError, match="at offset 1000"):
        dataset.read(0, 1000, 1000)

    # Raised in a DataLoader worker, the error comes back as a DataError whose text still names the file.
    sampler = BucketBatchSampler([2000, 2000], batch_size=1, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=1, collate_fn=collate_waveforms)
    with pytest.raises(DataError) as error:
        list(loader)
    assert str(nan_path) in str(error.value) and "non-finite" in str(error.value)


def test_non_finite_samples_skip_gives_zeros_and_warns_once(tmp_path: Path, caplog):
    nan_path = tmp_path / "has_nan.wav"
    written = write_float_wav_with_nan(nan_path, 3000, bad=[10, 2500], inf=[2999])
    items = [AudioItem(nan_path, 3000)]
    with pytest.raises(ValueError, match="'stop', 'skip'"):
        CroppedAudioDataset(items, None, seed=0, on_bad_file="zero")
    dataset = CroppedAudioDataset(items, max_length=None, seed=0, on_bad_file="skip")
    with caplog.at_level(logging.WARNING, logger="s3prl_distill.pretrain.data"):
        first = dataset[(0, 0)]
        second = dataset[(0, 1)]
    expected = np.where(np.isfinite(written), written, 0).astype(np.float32)
    assert first.shape == (3000,) and first.dtype == torch.float32
    np.testing.assert_array_equal(first.numpy(), expected)
    assert torch.equal(first, second)
    warnings = [record for record in caplog.records if str(nan_path) in record.getMessage()]
    assert len(warnings) == 1 and "3 non-finite" in warnings[0].getMessage()
    assert "replacing them with zeros" in warnings[0].getMessage()


def test_collate_pads_with_zeros():
    waves = [torch.full((3,), 0.5), torch.arange(1, 6, dtype=torch.float32) / 10, torch.full((2,), -0.25)]
    padded, lengths = collate_waveforms(waves)
    assert padded.shape == (3, 5) and padded.dtype == torch.float32
    assert lengths.tolist() == [3, 5, 2] and lengths.dtype == torch.int64
    for row, wave in enumerate(waves):
        assert torch.equal(padded[row, : len(wave)], wave)
        assert torch.count_nonzero(padded[row, len(wave):]) == 0
    with pytest.raises(ValueError):
        collate_waveforms([])
    with pytest.raises(ValueError):
        collate_waveforms([torch.zeros(2, 3)])


def loader_batches(items: Sequence[AudioItem], num_workers: int, epochs: int = 2) -> List:
    sampler = BucketBatchSampler([item.length for item in items], batch_size=4, seed=2)
    dataset = CroppedAudioDataset(items, max_length=3000, seed=2)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_waveforms)
    assert len(loader) == len(sampler)
    return [batch for _ in range(epochs) for batch in loader]


def test_dataloader_workers_give_the_same_batches(tmp_path: Path):
    lengths = [1200, 5000, 3100, 8000, 2500, 4400, 6000, 900, 7000, 3300, 2800]
    items = [AudioItem(write_audio(tmp_path / f"u{i}.flac", n, seed=i), n) for i, n in enumerate(lengths)]
    in_process = loader_batches(items, num_workers=0)
    with_workers = loader_batches(items, num_workers=2)
    assert len(in_process) == 2 * 3
    assert len(in_process) == len(with_workers)
    for (waves_a, lengths_a), (waves_b, lengths_b) in zip(in_process, with_workers):
        assert torch.equal(lengths_a, lengths_b)
        assert torch.equal(waves_a, waves_b)
        assert int(lengths_a.max()) <= 3000 and waves_a.shape[1] == int(lengths_a.max())
    # The bucket of the 4 longest files (all cropped to 3000) gets new crops in the second epoch.
    longest = [waves for waves, lengths in in_process if lengths.tolist() == [3000] * 4]
    assert len(longest) == 2 and not torch.equal(longest[0], longest[1])
