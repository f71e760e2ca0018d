"""The teacher-target cache: windows, build, aligned targets equal to the teacher's, same loss as the online path,
refusal of a cache that belongs to another run, and training from it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from s3prl_distill.formats.s3prl_hubert import write_random_hubert
from s3prl_distill.losses import combine
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.audio_lists import AudioItem, read_length_csvs
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.pretrain.teacher_cache import (
    CacheMismatchError,
    CachedWindowDataset,
    TeacherCache,
    build_teacher_cache,
    compute_windows,
)

from helpers import online_and_cached_tasks, pretrain


def test_windows_tile_each_utterance_and_end_at_its_end():
    items = [AudioItem("a", 1000), AudioItem("b", 2500), AudioItem("c", 3000), AudioItem("d", 2400)]
    assert compute_windows(items, 1200) == [
        (0, 0, 1000),  # shorter than a window: whole
        (1, 0, 1200), (1, 1200, 1200), (1, 1300, 1200),  # the last window ends at the end
        (2, 0, 1200), (2, 1200, 1200), (2, 1800, 1200),
        (3, 0, 1200), (3, 1200, 1200),  # exact tiling, no extra window
    ]
    assert compute_windows(items, None) == [(i, 0, item.length) for i, item in enumerate(items)]


@pytest.fixture(scope="module")
def cache(setup, tmp_path_factory):
    output = tmp_path_factory.mktemp("cache") / "targets"
    build_teacher_cache(load_config(setup["config"]), output, batch_size=4, progress=False)
    return output


def test_cache_layout_and_targets_equal_the_teacher_on_each_window(setup, cache):
    from s3prl_distill.pretrain.teacher import Teacher

    config = load_config(setup["config"])
    opened = TeacherCache(cache)
    meta = json.loads((cache / "meta.json").read_text())
    assert opened.layers == [1, 2, 3] == meta["key"]["layers"]  # the student's target layers, nothing else
    assert meta["key"]["frame_rate"] == 320 and meta["num_hidden_states"] == 4
    assert not (cache.parent / "targets.partial").exists()
    assert meta["bytes"] == sum((cache / s["file"]).stat().st_size for s in meta["shards"])
    assert meta["bytes"] == sum(int(f) for f in opened.index[:, 5]) * 3 * 48 * 2  # fp16 frames x layers x width
    assert meta["bytes_per_audio_hour"] > 0
    teacher = Teacher(config.teacher)
    items = read_length_csvs(Path(config.data.root), Path(config.data.bucket_dir), config.data.sets)
    dataset = CachedWindowDataset(items, opened, config.data.max_length, seed=0)
    assert set(opened.index[:, 0].tolist()) == set(range(len(items)))
    for row in (0, len(opened.index) // 2, len(opened.index) - 1):
        item, offset, samples = (int(v) for v in opened.index[row, :3])
        wave = dataset.read(item, offset, samples)
        expected = teacher(wave[None], torch.tensor([samples]))
        cached = torch.from_numpy(opened.targets(row)).float()
        for position, layer in enumerate(opened.layers):
            assert torch.allclose(cached[:, position], expected[layer][0], atol=2e-2, rtol=2e-3)


def test_cached_and_online_losses_agree_on_aligned_windows(setup, cache):
    from s3prl_distill.pretrain.runner import build_data

    config = load_config(setup["config"])
    data = config.data.model_copy(update={"teacher_cache": str(cache), "num_workers": 0})
    _, sampler, loader = build_data(data, seed=3, progress=False)
    online, offline = online_and_cached_tasks(config, cache)
    assert offline.teacher is None  # no teacher forward from the cache
    compared = 0
    for waveforms, lengths, targets in loader:
        assert targets.dtype == torch.float16 and targets.shape[2:] == (3, 48)
        if int(lengths.min()) != int(lengths.max()):
            continue  # the online teacher would see padding; cached targets come from unpadded windows
        with torch.no_grad():
            a = combine(online.losses(online.student, waveforms, lengths))
            b = combine(offline.losses(offline.student, waveforms, lengths, 0, targets))
        assert torch.allclose(a, b, rtol=2e-3), (a, b)
        compared += 1
    assert compared > 0


def test_a_cache_for_another_teacher_layers_or_data_is_refused(setup, cache, tmp_path):
    other_teacher = write_random_hubert(tmp_path / "other.ckpt", seed=5)
    base = yaml.safe_load(setup["config"].read_text())
    cases = {
        "teacher.ckpt_sha256": lambda c: c["teacher"].update(ckpt=str(other_teacher)),
        "layers": lambda c: c["student"]["prediction_head"].update(target_layers=[1, 2, 2]),
        "data.window": lambda c: c["data"].update(max_length=16000),
    }
    for field, change in cases.items():
        config = json.loads(json.dumps(base))
        change(config)
        config["data"]["teacher_cache"] = str(cache)
        config["runner"]["total_steps"] = 1
        path = tmp_path / f"{field}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = pretrain(["-g", str(path), "-n", field, "-p", str(tmp_path)], cwd=tmp_path)
        assert result.returncode != 0 and "does not match this run" in result.stderr, result.stderr[-2000:]
        assert f"{field}: cache has" in result.stderr, (field, result.stderr[-2000:])
    with pytest.raises(FileNotFoundError, match="has no meta.json"):
        TeacherCache(tmp_path / "missing")
    opened = TeacherCache(cache)
    key = json.loads(json.dumps(opened.meta["key"]))
    key["data"]["sha256"] = "0" * 64
    with pytest.raises(CacheMismatchError, match="data.sha256"):
        opened.check(key)
    with pytest.raises(FileExistsError, match="remove it to rebuild"):
        build_teacher_cache(load_config(setup["config"]), cache, progress=False)


def test_an_output_folder_with_other_files_is_refused_before_the_teacher_runs(setup, tmp_path, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built before the output was checked")

    monkeypatch.setattr("s3prl_distill.pretrain.teacher.Teacher", no_teacher)
    notes = tmp_path / "taken" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine\n")
    for output in (notes.parent, notes):  # a folder with files in it, or a file
        with pytest.raises(FileExistsError, match=rf"--output {output} exists and is not an empty folder"):
            build_teacher_cache(load_config(setup["config"]), output, progress=False)
    # Nothing else was made (the builders' hidden lock files aside): no partial cache.
    made = sorted(path for path in tmp_path.rglob("*") if not path.name.endswith(".lock"))
    assert notes.read_text() == "mine\n" and made == [notes.parent, notes]


def test_training_from_the_cache(setup, cache, tmp_path):
    overrides = f"config.data.teacher_cache={cache},,config.runner.total_steps=12,,config.runner.save_step=12"
    result = pretrain(["-g", str(setup["config"]), "-n", "cached", "-p", str(tmp_path), "-o", overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no teacher forward" in (tmp_path / "cached" / "train.log").read_text()
    losses = metric_values(read_metrics(tmp_path / "cached"), "loss")
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])


def test_a_cut_shard_or_meta_file_is_named(cache, tmp_path):
    """A cache damaged on disk (a copy cut short, a full disk) stops with the file named, not a bare mmap or JSON
    error later."""
    import shutil

    from s3prl_distill.pretrain.teacher_cache import CacheMismatchError

    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    shard = copy / json.loads((copy / "meta.json").read_text())["shards"][0]["file"]
    size = shard.stat().st_size
    with shard.open("r+b") as handle:
        handle.truncate(size - 2)
    with pytest.raises(CacheMismatchError, match=rf"shard {shard} is {size - 2} bytes, expected {size} "):
        TeacherCache(copy)
    shard.unlink()
    with pytest.raises(CacheMismatchError, match=rf"shard {shard} is missing"):
        TeacherCache(copy)
    (copy / "meta.json").write_text('{"format": ')
    with pytest.raises(CacheMismatchError, match=rf"{copy / 'meta.json'} is not readable JSON"):
        TeacherCache(copy)
