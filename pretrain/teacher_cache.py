"""Teacher-target cache: run the frozen teacher once over the training set, store the layers the method needs, and
train from them with no teacher forward.

Windows: each utterance is cut into fixed windows of ``data.max_length`` samples (starting at 0, max_length, ...,
the last one ending at the utterance's end; a shorter utterance is one window). The teacher runs on exactly those
windows, so a window read back from disk and its cached frames are aligned by construction; in training, each epoch
picks one window per utterance (a pure function of seed, epoch and item, like the random crops).

Layout of a cache directory (written to ``DIR.partial`` and renamed when complete, so a crash leaves no half cache):

* ``meta.json``: format, the key (below), layers, width, shards, sizes;
* ``index.npy``: int64 rows ``(item, offset, samples, shard, frame_start, frames)``, one per window;
* ``shard-NNNNN.f16``: float16 frames ``(frames, layers, width)`` of consecutive windows, memory-mapped when read;
* ``codebook.pt``: the teacher's HuBERT codebook, when the method's discriminative loss needs it.

The key is what makes cached targets valid for a run: the teacher (name, SHA-256 of its checkpoint and config), the
hidden-state indices, the data list (SHA-256 of every utterance's path and length) and window length, and the
teacher's frame rate. Training refuses a cache whose key differs, naming what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from s3prl_distill.audio_lists import SAMPLE_RATE, AudioItem, check_audio_files, read_length_csvs
from s3prl_distill.checkpoint import file_sha256
from s3prl_distill.errors import UserError
from s3prl_distill.locking import ExclusiveLock
from s3prl_distill.progress import progress as show_progress

from .config import DataConfig, PretrainConfig, TeacherConfig
from .data import CroppedAudioDataset, collate_waveforms

logger = logging.getLogger(__name__)

FORMAT = "s3prl_distill.teacher_cache/1"
SHARD_BYTES = 1 << 30  # start a new shard file after ~1 GiB
INDEX_COLUMNS = ("item", "offset", "samples", "shard", "frame_start", "frames")


class CacheExistsError(UserError, FileExistsError):
    """The output of a cache build already holds a complete cache."""


class CacheMismatchError(UserError, ValueError):
    """A cache that does not belong to this run (different teacher, layers, data or frame rate)."""


def _sha256_file(path: Optional[str]) -> Optional[str]:
    return None if path is None else file_sha256(path)


def data_digest(items: Sequence[AudioItem], root: Path) -> str:
    """SHA-256 of the utterance list: each path (relative to the audio root) and length, in order."""
    digest = hashlib.sha256()
    for item in items:
        try:
            name = str(Path(item.path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            name = str(item.path)
        digest.update(f"{name}\t{item.length}\n".encode())
    return digest.hexdigest()


def required_layers(method, num_hidden_states: int) -> List[int]:
    """The teacher hidden states a method reads: its target layers, hidden state 0 for a front-end stage, the last
    one for the codebook."""
    layers = set(method.target_layers)
    if method.front_end_steps > 0:
        layers.add(0)
    if method.uses_codebook:
        layers.add(num_hidden_states - 1)
    return sorted(layers)


def cache_key(teacher: TeacherConfig, data: DataConfig, items: Sequence[AudioItem], layers: List[int],
              frame_rate: int, layer_zero: str = "transformer_input") -> Dict[str, Any]:
    key = {
        "teacher": {"name": teacher.name, "ckpt_sha256": _sha256_file(teacher.ckpt),
                    "upstream_config_sha256": _sha256_file(teacher.upstream_config)},
        "layers": list(layers),
        "data": {"sha256": data_digest(items, Path(data.root)), "utterances": len(items), "window": data.max_length},
        "frame_rate": int(frame_rate),
    }
    if 0 in layers and layer_zero != "transformer_input":
        # Only then: caches of s3prl's hidden state 0 (all caches written before this key existed) stay valid.
        key["layer_zero"] = layer_zero
    return key


def compute_windows(items: Sequence[AudioItem], max_length: Optional[int]) -> List[Tuple[int, int, int]]:
    """(item, offset, samples) of every window."""
    windows = []
    for index, item in enumerate(items):
        if max_length is None or item.length <= max_length:
            windows.append((index, 0, item.length))
            continue
        starts = list(range(0, item.length - max_length + 1, max_length))
        if starts[-1] + max_length < item.length:
            starts.append(item.length - max_length)
        windows += [(index, start, max_length) for start in starts]
    return windows


def _differences(expected: Any, found: Any, path: str = "") -> List[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        keys = sorted(set(expected) | set(found))
        return [d for key in keys for d in _differences(expected.get(key), found.get(key), f"{path}.{key}".lstrip("."))]
    return [] if expected == found else [f"{path}: cache has {found!r}, this run needs {expected!r}"]


class TeacherCache:
    """A finished cache directory, opened for reading (shards are memory-mapped lazily, once per process)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            partial = self.directory.with_name(self.directory.name + ".partial")
            hint = f" ({partial} exists: its build did not finish; run cache-teacher again)" if partial.exists() else ""
            raise FileNotFoundError(f"teacher cache {self.directory} has no meta.json{hint}")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as error:
            raise CacheMismatchError(f"{meta_path} is not readable JSON ({error}): rebuild the cache with "
                                     "s3prl-distill cache-teacher") from None
        if self.meta.get("format") != FORMAT:
            raise CacheMismatchError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.layers: List[int] = list(self.meta["key"]["layers"])
        self.width: int = int(self.meta["width"])
        for info in self.meta["shards"]:  # a cut shard would fail later as a bare mmap error, or read short
            shard = self.directory / info["file"]
            expected = info["frames"] * len(self.layers) * self.width * np.dtype(np.float16).itemsize
            found = shard.stat().st_size if shard.is_file() else None
            if found != expected:
                raise CacheMismatchError(
                    f"teacher cache shard {shard} is {'missing' if found is None else f'{found} bytes'}, expected "
                    f"{expected} ({info['frames']} frames x {len(self.layers)} layers x {self.width} float16): "
                    "rebuild the cache with s3prl-distill cache-teacher")
        self.index = np.load(self.directory / "index.npy")
        self._by_item: Dict[int, List[int]] = {}
        for row, item in enumerate(self.index[:, 0].tolist()):
            self._by_item.setdefault(item, []).append(row)
        self._shards: Dict[int, np.memmap] = {}

    def check(self, expected_key: Dict[str, Any]) -> None:
        """Refuse a cache built for another teacher, layer set, data list or frame rate."""
        problems = _differences(expected_key, self.meta["key"])
        if problems:
            raise CacheMismatchError(f"teacher cache {self.directory} does not match this run:\n  "
                                     + "\n  ".join(problems) + "\nrebuild it with s3prl-distill cache-teacher")

    def codebook(self):
        from .teacher import HubertCodebook

        path = self.directory / "codebook.pt"
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache {self.directory} holds no codebook (built without one)")
        return HubertCodebook(**torch.load(path, map_location="cpu", weights_only=True))

    def windows_of(self, item: int) -> List[int]:
        return self._by_item[item]

    def _shard(self, shard: int) -> np.memmap:
        if shard not in self._shards:
            info = self.meta["shards"][shard]
            self._shards[shard] = np.memmap(self.directory / info["file"], dtype=np.float16, mode="r",
                                            shape=(info["frames"], len(self.layers), self.width))
        return self._shards[shard]

    def targets(self, row: int) -> np.ndarray:
        """(frames, layers, width) float16 of window ``row``."""
        _, _, _, shard, start, frames = (int(v) for v in self.index[row])
        return np.array(self._shard(shard)[start:start + frames])  # a copy: tensors need writable memory


class CachedWindowDataset(CroppedAudioDataset):
    """Like :class:`CroppedAudioDataset`, but the crop is one of the item's cached windows, returned with its
    teacher frames: ``(waveform, targets (frames, layers, width) float16)``."""

    def __init__(self, items: Sequence[AudioItem], cache: TeacherCache, max_length: Optional[int], seed: int,
                 on_bad_file: str = "stop") -> None:
        super().__init__(items, max_length, seed, on_bad_file)
        self.cache = cache

    def _window(self, index: int, epoch: int) -> int:
        rows = self.cache.windows_of(index)
        if len(rows) == 1:
            return rows[0]
        return rows[int(np.random.default_rng([self.seed, int(epoch), int(index)]).integers(len(rows)))]

    def crop_offset(self, index: int, epoch: int) -> int:
        return int(self.cache.index[self._window(index, epoch), 1])

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        wave = super().__getitem__(key)
        return wave, torch.from_numpy(self.cache.targets(self._window(*key)))


def collate_with_targets(batch: Sequence[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
    """Padded waveforms, their lengths, and the cached frames zero-padded to (batch, frames, layers, width)."""
    waveforms, lengths = collate_waveforms([wave for wave, _ in batch])
    targets = torch.nn.utils.rnn.pad_sequence([target for _, target in batch], batch_first=True)
    return waveforms, lengths, targets


def build_teacher_cache(config: PretrainConfig, output: Path, batch_size: int = 8, device: str = "cpu",
                        progress: bool = True) -> Path:
    """Run ``config.teacher`` over every window of ``config.data`` and write the cache to ``output``."""
    output = Path(output)
    # One builder per output: the lock is a hidden file beside it (the output itself appears only when complete).
    lock = ExclusiveLock(output.parent / f".{output.name}.lock", f"teacher cache {output}",
                         hint="wait for that build to finish, or choose another --output")
    with lock:
        return _build(config, output, batch_size, device, progress)


def _build(config: PretrainConfig, output: Path, batch_size: int, device: str, progress: bool) -> Path:
    from .methods import build_method
    from .teacher import Teacher

    if (output / "meta.json").is_file():
        raise CacheExistsError(f"teacher cache {output} exists; remove it to rebuild, or choose another --output")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        # Checked now, not when the finished cache is moved into place after the whole teacher pass.
        raise CacheExistsError(f"--output {output} exists and is not an empty folder (nor a teacher cache): choose "
                               "another --output")
    data = config.data
    items = read_length_csvs(Path(data.root), Path(data.bucket_dir), data.sets)
    if data.check_files:
        items = check_audio_files(items, data.on_bad_file, progress=progress,
                                  source=f"sets {data.sets} in {data.bucket_dir}")
    teacher = Teacher(config.teacher).to(device)
    method = build_method(config.method, config.student)
    dataset = CroppedAudioDataset(items, data.max_length, seed=0, on_bad_file=data.on_bad_file)
    windows = compute_windows(items, data.max_length)
    # Only windows of equal length share a batch: no padding, so each window's targets are what the teacher gives
    # for that audio alone (padding can change a teacher's output, e.g. fairseq's GroupNorm averages over it).
    by_length: Dict[int, List[int]] = {}
    for w, (_, _, samples) in enumerate(windows):
        by_length.setdefault(samples, []).append(w)
    batches = [group[i:i + batch_size] for _, group in sorted(by_length.items()) for i in range(0, len(group), batch_size)]
    partial = output.with_name(output.name + ".partial")
    if partial.exists():  # an interrupted build of this output (we hold its lock, so no build is writing it)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    start_time = time.perf_counter()
    index = np.zeros((len(windows), len(INDEX_COLUMNS)), dtype=np.int64)
    shards: List[Dict[str, Any]] = []
    handle, layers, width, hidden_count, frame_rate = None, None, None, None, None
    bar = show_progress(total=len(windows), desc="teacher cache", unit="window", disable=not progress)
    try:
        for chosen in batches:
            waves = torch.stack([dataset.read(*windows[w]) for w in chosen]).to(device)
            hidden = teacher(waves, torch.full((len(chosen),), waves.shape[1], device=device),
                             method.teacher_layer_zero)
            if layers is None:
                hidden_count, width = len(hidden), hidden[0].shape[-1]
                layers = required_layers(method, hidden_count)
                teacher.check_layers(layers, hidden_count)
                frame_rate = int(teacher.upstream.get_downsample_rates("hidden_states"))
            stacked = torch.stack([hidden[layer] for layer in layers], dim=2).to(torch.float16).cpu().numpy()
            frames = stacked.shape[1]  # equal-length windows: no padding frames
            for row, w in enumerate(chosen):
                if handle is None or shards[-1]["bytes"] >= SHARD_BYTES:
                    if handle is not None:
                        handle.close()
                    shards.append({"file": f"shard-{len(shards):05d}.f16", "frames": 0, "bytes": 0})
                    handle = open(partial / shards[-1]["file"], "wb")
                block = np.ascontiguousarray(stacked[row])
                handle.write(block.tobytes())
                item, offset, samples = windows[w]
                index[w] = (item, offset, samples, len(shards) - 1, shards[-1]["frames"], frames)
                shards[-1]["frames"] += frames
                shards[-1]["bytes"] += block.nbytes
            bar.update(len(chosen))
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    np.save(partial / "index.npy", index)
    if method.uses_codebook:
        codebook = teacher.codebook(method.codebook_ckpt)
        torch.save(dataclasses.asdict(codebook), partial / "codebook.pt")
    audio_seconds = sum(w[2] for w in windows) / SAMPLE_RATE
    total_bytes = sum(s["bytes"] for s in shards)
    meta = {
        "format": FORMAT,
        "key": cache_key(config.teacher, config.data, items, layers, frame_rate, method.teacher_layer_zero),
        "width": int(width), "num_hidden_states": int(hidden_count),
        "shards": [{"file": s["file"], "frames": s["frames"]} for s in shards],
        "windows": len(windows), "audio_hours": round(audio_seconds / 3600, 4), "bytes": total_bytes,
        "bytes_per_audio_hour": int(total_bytes / max(audio_seconds / 3600, 1e-9)),
        "build_seconds": round(time.perf_counter() - start_time, 1),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    os.replace(partial, output)
    logger.info("teacher cache %s: %d windows, %.2f h of audio, %.1f MB (%.0f MB per hour)", output, len(windows),
                audio_seconds / 3600, total_bytes / 1e6, meta["bytes_per_audio_hour"] / 1e6)
    return output
