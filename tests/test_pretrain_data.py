"""Tests of the pretraining data pipeline: bucketed resumable batches, crops, collation, loader workers (the length
CSVs and header checks it reads through are in test_audio_lists.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from s3prl_distill.audio_lists import SAMPLE_RATE, AudioItem, DataError, check_audio_files
from s3prl_distill.pretrain.data import BucketBatchSampler, CroppedAudioDataset, collate_waveforms

from helpers import write_audio, write_csv


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
