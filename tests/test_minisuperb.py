"""mini-SUPERB generator: every on-disk rule s3prl 0.4.18's PR/ASR/KS/SID/ER readers rely on, determinism, voice
validation, and s3prl's own dataset classes reading the generated "tiny" corpora."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile

from s3prl_distill.downstream_recipes.minisuperb import (
    CHAR_SYMBOLS,
    ER_LABELS,
    KS_CLASSES,
    KS_KEYWORDS,
    LIBRISPEECH_SPLITS,
    MANIFEST,
    PHONEME_VOCAB,
    SIZES,
    Prosody,
    available_variants,
    available_voices,
    cmudict_pronunciations,
    generate_minisuperb,
    hash_partition,
    synthesize,
    validate_voice,
)
from s3prl_distill.downstream_recipes.minisuperb.__main__ import main as cli_main

ALL_TASKS = ("pr", "asr", "ks", "sid", "er")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, Path]:
    """Three tiny builds: seed 0 twice (different worker counts) and seed 1."""
    base = tmp_path_factory.mktemp("minisuperb")
    generate_minisuperb(base / "a", size="tiny", seed=0, jobs=2, progress=False)
    generate_minisuperb(base / "b", size="tiny", seed=0, jobs=1, progress=False)
    generate_minisuperb(base / "c", size="tiny", seed=1, jobs=2, progress=False)
    return {"a": base / "a", "b": base / "b", "c": base / "c"}


@pytest.fixture(scope="module")
def paths(runs) -> Dict[str, Dict[str, Path]]:
    # Regenerating in place replaces the earlier build (marker files) and must return the same layout.
    return generate_minisuperb(runs["a"], size="tiny", seed=0, jobs=2, progress=False)


def audio_files(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".wav", ".flac"))


def assert_16k_mono_pcm16(path: Path) -> soundfile.SoundFile:
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), (path, info)
    return info


def test_paths_per_task(paths):
    assert set(paths) == set(ALL_TASKS)
    assert set(paths["pr"]) == {"path", "lexicon", "vocab_file"}
    assert set(paths["asr"]) == {"libri_root", "bucket_file", "dict_path"}
    assert set(paths["ks"]) == {"speech_commands_root", "speech_commands_test_root"}
    assert set(paths["sid"]) == {"file_path", "meta_data"}
    assert set(paths["er"]) == {"root", "meta_data"}
    for entries in paths.values():
        for path in entries.values():
            assert path.exists(), path
    manifest = json.loads((paths["pr"]["path"].parent / MANIFEST).read_text())
    assert manifest["seed"] == 0 and manifest["size"] == "tiny" and manifest["tasks"] == list(ALL_TASKS)


# --- PR + ASR: the LibriSpeech corpus --------------------------------------------------------------------------------

def read_transcripts(root: Path) -> Dict[str, str]:
    """uid -> text, the way s3prl's libriphone corpus reads lines (``line[:-1]`` drops the last character)."""
    found = {}
    for trans in root.rglob("*.trans.txt"):
        speaker, chapter = trans.parent.parent.name, trans.parent.name
        assert trans.name == f"{speaker}-{chapter}.trans.txt"
        raw = trans.read_bytes().decode("utf-8")  # bytes: read_text() would hide "\r\n" line ends
        assert raw.endswith("\n") and "\r" not in raw
        for line in raw.splitlines(keepends=True):
            assert line.endswith("\n") and line.count("\n") == 1, (trans, line)
            uid, text = line[:-1].split(" ", 1)
            assert uid.startswith(f"{speaker}-{chapter}-") and uid not in found
            assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text), text
            found[uid] = text
    return found


def test_librispeech_audio_and_transcripts(paths):
    root = paths["asr"]["libri_root"]
    transcripts = read_transcripts(root)
    flacs = audio_files(root)
    assert {p.relative_to(root).parts[0] for p in flacs} == set(LIBRISPEECH_SPLITS)
    assert all(p.suffix == ".flac" for p in flacs)
    assert {p.stem for p in flacs} == set(transcripts)  # every file has a line and every line a file
    for flac in flacs:
        split, speaker, chapter, name = flac.relative_to(root).parts
        assert re.fullmatch(rf"{speaker}-{chapter}-\d{{4}}\.flac", name)
        # libriphone finds the transcript by cutting the path at its last "-".
        assert Path("-".join(str(flac).split("-")[:-1]) + ".trans.txt").is_file()
        assert_16k_mono_pcm16(flac)
    speakers = {split: {p.relative_to(root).parts[1] for p in flacs if p.relative_to(root).parts[0] == split}
                for split in LIBRISPEECH_SPLITS}
    assert not speakers["train-clean-100"] & speakers["test-clean"]  # disjoint speakers, as in LibriSpeech


def test_lexicon_covers_transcripts_and_phones_are_in_vocab(paths):
    vocab = paths["pr"]["vocab_file"].read_text().splitlines()
    assert len(vocab) == 71 and vocab[:2] == ["SIL", "SPN"] and len(set(vocab)) == 71
    assert paths["pr"]["vocab_file"].read_bytes() == PHONEME_VOCAB.read_bytes()
    phones = vocab[2:]
    vowels = {p[:-1] for p in phones if p[-1].isdigit()}
    assert len(vowels) == 15 and all(f"{v}{s}" in phones for v in vowels for s in "012")
    assert len([p for p in phones if not p[-1].isdigit()]) == 24

    cmu = cmudict_pronunciations()
    lexicon = {}
    raw = paths["pr"]["lexicon"].read_text()
    assert raw.endswith("\n")
    for line in raw.splitlines():
        word, *pronunciation = line.split()
        assert word == word.upper() and word not in lexicon
        assert pronunciation and all(p in vocab for p in pronunciation), line
        assert tuple(pronunciation) == cmu[word]  # CMUdict's first pronunciation
        lexicon[word] = pronunciation
    assert cmu["HELLO"] == ("HH", "AH0", "L", "OW1")
    for text in read_transcripts(paths["pr"]["path"]).values():
        for word in text.split():
            assert word in lexicon, word


def test_bucket_csvs_match_audio(paths):
    root, buckets = paths["asr"]["libri_root"], paths["asr"]["bucket_file"]
    assert sorted(p.name for p in buckets.glob("*.csv")) == sorted(f"{s}.csv" for s in LIBRISPEECH_SPLITS)
    for split in LIBRISPEECH_SPLITS:
        text = (buckets / f"{split}.csv").read_bytes().decode("utf-8")
        assert "\r" not in text and text.startswith(",file_path,length,label\n") and text.endswith("\n")
        rows = list(csv.reader(text.splitlines()[1:]))
        assert [int(r[0]) for r in rows] == list(range(len(rows)))
        lengths = [int(r[2]) for r in rows]
        assert lengths == sorted(lengths, reverse=True)
        assert len(rows) == len(list((root / split).rglob("*.flac"))) > 0
        for _, relative, length, label in rows:
            assert relative.startswith(f"{split}/") and not Path(relative).is_absolute()
            assert soundfile.info(str(root / relative)).frames == int(length)
            assert label == Path(relative).stem


def test_char_dict_symbols_order_and_counts(paths):
    lines = paths["asr"]["dict_path"].read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)
    symbols = [line.split(" ")[0] for line in lines]
    counts = [int(line.split(" ")[1]) for line in lines]
    assert symbols == list(CHAR_SYMBOLS) == list("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")
    train = [t for u, t in read_transcripts(paths["asr"]["libri_root"] / "train-clean-100").items()]
    letters = Counter("".join(t.replace(" ", "") for t in train))
    expected = {s: letters[s] + 1 for s in CHAR_SYMBOLS}
    expected["|"] = sum(len(t.split()) for t in train) + 1
    assert dict(zip(symbols, counts)) == expected


# --- KS -------------------------------------------------------------------------------------------------------------

def test_speech_commands_layout(paths):
    train, test = paths["ks"]["speech_commands_root"], paths["ks"]["speech_commands_test_root"]
    assert {p.name for p in test.iterdir()} == set(KS_CLASSES)
    assert all(list((test / c).glob("*.wav")) for c in KS_CLASSES)
    train_dirs = {p.name for p in train.iterdir() if p.is_dir()}
    assert set(KS_KEYWORDS) <= train_dirs and "_background_noise_" in train_dirs
    assert train_dirs - set(KS_KEYWORDS) - {"_background_noise_"}, "no _unknown_ source words"
    noises = list((train / "_background_noise_").glob("*.wav"))
    assert len(noises) >= 2
    for path in noises:
        assert assert_16k_mono_pcm16(path).frames >= 16000
    for path in audio_files(test) + [p for p in audio_files(train) if p.parent.name != "_background_noise_"]:
        assert assert_16k_mono_pcm16(path).frames == 16000, path
        assert "_nohash_" in path.name


def test_speech_commands_hash_split_has_train_and_dev(paths):
    sides = Counter()
    for path in paths["ks"]["speech_commands_root"].glob("*/*.wav"):
        if path.parent.name == "_background_noise_":
            continue
        speaker = re.sub(r"_nohash_.*$", "", path.name)
        assert re.fullmatch(r"[0-9a-f]{8}", speaker)
        # s3prl's rule, written out independently of the module's copy of it.
        value = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2 ** 27 * (100.0 / (2 ** 27 - 1))
        side = "dev" if value < 10 else ("dropped" if value < 20 else "train")
        assert side == hash_partition(path.name)
        sides[side] += 1
    assert sides["train"] > 0 and sides["dev"] > 0 and sides["dropped"] == 0


# --- SID ------------------------------------------------------------------------------------------------------------

def test_voxceleb1_split_file_resolves(paths):
    root, meta = paths["sid"]["file_path"], paths["sid"]["meta_data"]
    raw = meta.read_text()
    assert raw.endswith("\n")
    listed, splits_of = set(), {}
    for line in raw.splitlines():
        code, relative = line.split(" ")
        assert code in {"1", "2", "3"} and re.fullmatch(r"id1\d{4}/[A-Za-z0-9]{11}/\d{5}\.wav", relative)
        matches = list(root.glob("*/wav/" + relative))  # exactly how s3prl resolves it
        assert len(matches) == 1, relative
        assert matches[0].parts[-5] == ("test" if code == "3" else "dev")
        listed.add(matches[0])
        splits_of.setdefault(relative.split("/")[0], set()).add(code)
    assert listed == set(audio_files(root))
    speakers = sorted(splits_of)
    assert speakers == [f"id{10001 + i}" for i in range(SIZES["tiny"].sid_speakers)]
    assert all(codes == {"1", "2", "3"} for codes in splits_of.values())
    for path in listed:
        assert_16k_mono_pcm16(path)


# --- ER -------------------------------------------------------------------------------------------------------------

def test_iemocap_folds(paths):
    root, meta_root = paths["er"]["root"], paths["er"]["meta_data"]
    on_disk = {p.relative_to(root).as_posix() for p in audio_files(root)}
    for session in range(1, 6):
        documents = {split: json.loads((meta_root / f"Session{session}" / f"{split}_meta_data.json").read_text())
                     for split in ("train", "test")}
        for split, document in documents.items():
            assert document["labels"] == {"neu": 0, "hap": 1, "ang": 2, "sad": 3} == ER_LABELS
            entries = document["meta_data"]
            assert {e["label"] for e in entries} == set(ER_LABELS)
            for entry in entries:
                assert set(entry) == {"path", "label", "speaker"}
                match = re.fullmatch(r"Session(\d)/sentences/wav/(Ses0\d[FM]_impro\d\d)/\2_([FM])\d{3}\.wav",
                                     entry["path"])
                assert match, entry
                assert entry["speaker"] == f"Ses0{match.group(1)}{match.group(3)}"
                assert (int(match.group(1)) == session) == (split == "test")
                assert (root / entry["path"]).is_file()
        assert {e["path"] for d in documents.values() for e in d["meta_data"]} == on_disk
    for path in audio_files(root):
        assert_16k_mono_pcm16(path)


def test_an_emotion_shows_in_the_words_of_most_of_its_utterances():
    """ER's content cue (what a pretrained upstream can use beyond the delivery): ~70 % of an emotion's utterances
    open with one of its own interjections, never another emotion's, and every interjection is in CMUdict."""
    import numpy as np

    from s3prl_distill.downstream_recipes.minisuperb.iemocap import INTERJECTIONS, emotional_text
    from s3prl_distill.downstream_recipes.minisuperb.text import cmudict_pronunciations

    owner = {word: emotion for emotion, words in INTERJECTIONS.items() for word in words}
    assert len(owner) == sum(len(words) for words in INTERJECTIONS.values())  # no word shared by two emotions
    assert set(owner) <= set(cmudict_pronunciations())
    rng = np.random.default_rng(0)
    for emotion in INTERJECTIONS:
        opened = 0
        for _ in range(400):
            text = emotional_text("THE DOG SLEPT", emotion, rng)
            first = text.split()[0]
            if first in owner:
                assert owner[first] == emotion and text.endswith(" THE DOG SLEPT")
                opened += 1
            else:
                assert text == "THE DOG SLEPT"
        assert 0.62 < opened / 400 < 0.78, (emotion, opened)


# --- determinism and options ----------------------------------------------------------------------------------------

def text_files(root: Path) -> Dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix not in (".wav", ".flac")}


def test_same_seed_is_identical_and_other_seed_differs(runs):
    a, b, c = (text_files(runs[k]) for k in "abc")
    assert len(a) > 20 and a == b
    audio_a, audio_b = audio_files(runs["a"]), audio_files(runs["b"])
    assert [p.relative_to(runs["a"]) for p in audio_a] == [p.relative_to(runs["b"]) for p in audio_b]
    for left, right in zip(audio_a, audio_b):
        assert np.array_equal(soundfile.read(str(left), dtype="int16")[0],
                              soundfile.read(str(right), dtype="int16")[0]), left
    assert a["len_for_bucket/train-clean-100.csv"] != c["len_for_bucket/train-clean-100.csv"]
    assert a["VoxCeleb1/veri_test_class.txt"] != c["VoxCeleb1/veri_test_class.txt"]

    def fingerprints(root: Path) -> set:
        return {hashlib.sha1(soundfile.read(str(p), dtype="int16")[0].tobytes()).hexdigest()
                for p in audio_files(root)}

    assert not fingerprints(runs["a"]) & fingerprints(runs["c"])


def test_one_task_alone_matches_the_full_build(runs, tmp_path):
    generate_minisuperb(tmp_path, tasks=["er"], size="tiny", seed=0, progress=False)
    assert not (tmp_path / "LibriSpeech").exists()
    full = text_files(runs["a"] / "IEMOCAP")
    assert text_files(tmp_path / "IEMOCAP") == full


def test_cli_writes_paths_json(tmp_path, capsys):
    assert cli_main([str(tmp_path / "out"), "--size", "tiny", "--tasks", "sid", "--no-progress", "--seed", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"sid"} and Path(printed["sid"]["meta_data"]).is_file()


def test_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    (tmp_path / "LibriSpeech" / "real.flac").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="LibriSpeech"):
        generate_minisuperb(tmp_path, tasks=["asr", "er"], size="tiny", progress=False)
    assert (tmp_path / "LibriSpeech" / "real.flac").read_bytes() == b"not ours"
    assert not (tmp_path / "IEMOCAP").exists()  # checked before anything was written


def test_voice_validation_names_the_bad_name(tmp_path):
    assert {"en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc"} <= set(available_voices())
    assert {"m1", "m8", "f1", "f5", "klatt"} <= set(available_variants())
    assert validate_voice("en-us+m3") == ("en-us", "m3")
    assert validate_voice("en-gb") == ("en-gb", None)
    with pytest.raises(ValueError, match="'nosuch'"):
        validate_voice("en-us+nosuch")
    with pytest.raises(ValueError, match="'xx-nope'"):
        validate_voice("xx-nope")
    with pytest.raises(ValueError, match="'xx-nope'"):
        generate_minisuperb(tmp_path / "v", voices=["en-us", "xx-nope"], size="tiny", progress=False)
    with pytest.raises(ValueError, match="'nosuch'"):
        generate_minisuperb(tmp_path / "v", variants=["m1", "nosuch"], size="tiny", progress=False)
    assert not (tmp_path / "v").exists()
    with pytest.raises(ValueError, match="size"):
        generate_minisuperb(tmp_path / "v", size="huge", progress=False)


def test_voices_and_variants_change_the_audio():
    # The point of validating: espeak-ng would otherwise fall back silently to one voice.
    a = synthesize("hello there", Prosody("en-us", "m3", pitch=50, speed=160))
    b = synthesize("hello there", Prosody("en-us", "f2", pitch=50, speed=160))
    c = synthesize("hello there", Prosody("en-gb-scotland", "m3", pitch=50, speed=160))
    slow = synthesize("hello there", Prosody("en-us", "m3", pitch=50, speed=100))
    assert a.ndim == 1 and 0.3 < a.size / 16000 < 3 and np.abs(a).max() <= 1
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert slow.size > 1.3 * a.size


# --- s3prl's own readers ----------------------------------------------------------------------------------------------

def test_s3prl_readers_load_the_data(paths, monkeypatch, tmp_path):
    import s3prl_distill

    s3prl_distill.register()
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary
    from s3prl.downstream.emotion.dataset import IEMOCAPDataset
    from s3prl.downstream.speech_commands.dataset import SpeechCommandsDataset, SpeechCommandsTestingDataset
    from s3prl.downstream.speech_commands.expert import split_dataset
    import s3prl.downstream.voxceleb1.dataset as voxceleb1

    er = IEMOCAPDataset(str(paths["er"]["root"]), str(paths["er"]["meta_data"] / "Session2" / "test_meta_data.json"))
    wav, label, _ = er[0]
    assert len(er) == 2 * 4 * SIZES["tiny"].er_utterances and wav.ndim == 1 and label in range(4)

    ks = {key: str(value) for key, value in paths["ks"].items()}
    train_list, dev_list = split_dataset(ks["speech_commands_root"])
    train, dev = SpeechCommandsDataset(train_list, **ks), SpeechCommandsDataset(dev_list, **ks)
    test = SpeechCommandsTestingDataset(**ks)
    assert len(dev_list) > 0 and len(train_list) > 0
    assert {name for name, _ in test.data} == set(KS_CLASSES)
    assert {train.class2index[name] for name, _ in train.data} == set(range(12))
    assert all(test[i][0].shape == (16000,) for i in range(len(test)))

    # s3prl caches SID file lists inside its package folder; keep this test's lists out of it.
    monkeypatch.setattr(voxceleb1, "CACHE_PATH", str(tmp_path / "sid-cache") + "/")
    counts = []
    for mode in ("train", "dev", "test"):
        dataset = voxceleb1.SpeakerClassifiDataset(mode, paths["sid"]["file_path"], str(paths["sid"]["meta_data"]))
        counts.append(len(dataset))
        assert sorted(set(dataset.label)) == list(range(SIZES["tiny"].sid_speakers))
    assert counts == [n * SIZES["tiny"].sid_speakers for n in SIZES["tiny"].sid_utterances]

    dictionary = Dictionary.load(str(paths["asr"]["dict_path"]))
    assert len(dictionary.symbols) == 4 + 28
    asr = {"libri_root": str(paths["asr"]["libri_root"]), "bucket_file": str(paths["asr"]["bucket_file"])}
    for split in ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"):
        dataset = SequenceDataset("s", 1, dictionary, s=[split], **asr)
        wavs, labels, names = dataset[0]
        assert wavs[0].ndim == 1 and dictionary.unk() not in labels[0].tolist()
        transcript = dictionary.string(labels[0]).replace(" ", "").replace("|", " ").strip()
        assert transcript == read_transcripts(paths["asr"]["libri_root"] / split)[names[0]]


def test_a_failing_job_stops_the_pool_early(tmp_path):
    import time

    from s3prl_distill.downstream_recipes.minisuperb.jobs import ArrayJob, run_jobs

    def broken(rng):
        raise RuntimeError("boom")

    def slow(rng):
        time.sleep(0.05)
        return np.zeros(16000)

    jobs = [ArrayJob(tmp_path / "bad.wav", broken)] + [ArrayJob(tmp_path / f"{i}.wav", slow) for i in range(100)]
    with pytest.raises(RuntimeError, match="boom"):
        run_jobs(jobs, workers=2, progress=False)
    assert len(list(tmp_path.glob("*.wav"))) < 20  # the queued jobs were cancelled, not run to the end
