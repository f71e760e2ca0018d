"""The audio lists of core ``s3prl_distill.audio_lists``: length CSVs (writing, reading, their errors) and the audio
header checks that ``prepare-data`` and the pretrain runner share."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import soundfile

from s3prl_distill.audio_lists import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioItem,
    DataError,
    check_audio_files,
    read_length_csvs,
    write_length_csvs,
)

from helpers import write_audio, write_csv


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
