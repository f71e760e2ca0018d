"""Data pipeline of the distillation pretraining runner: batches over the audio lists of
:mod:`s3prl_distill.audio_lists` that are

* length-bucketed: items sorted by length are cut into fixed global batches, whose order is shuffled per epoch;
* exactly resumable: the batch order is a pure function of ``(seed, epoch)`` and each random crop a pure function of
  ``(seed, epoch, item index)``, so a run restarted at a recorded ``(epoch, batch_index)`` sees the same data as an
  uninterrupted one, whatever the number of DataLoader workers;
* DDP-shardable: rank ``r`` of ``world_size`` takes ``global_batch[r::world_size]``, so the union of the ranks'
  shares is the single-process batch.
"""

from __future__ import annotations

import logging
from typing import Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import soundfile
import torch

from s3prl_distill.audio_lists import SAMPLE_RATE, AudioItem, DataError, check_on_bad_file

logger = logging.getLogger(__name__)

# Multiplier that mixes the seed and the epoch into one generator seed for the batch order.
_EPOCH_SEED_STRIDE = 100003


# --------------------------------------------------------------------------------------------------------------------
# Batching


class BucketBatchSampler:
    """Length-bucketed batches with a resumable position.

    Item indices sorted by length (descending, ties by index) are cut into consecutive chunks of ``batch_size``:
    these global batches are fixed for the whole run, only their order changes per epoch (``batch_order``). Each
    rank yields its share ``global_batch[rank::world_size]`` as ``(item_index, epoch)`` pairs, ready to be the keys
    of a :class:`CroppedAudioDataset`. Use it as a DataLoader's ``batch_sampler``.

    Attributes:
        epoch: epoch of the next batch to be yielded.
        batch_index: position, within that epoch's order, of the next batch to be yielded.

    With DataLoader workers, the loader draws batches ahead of the training loop (``prefetch_factor`` per worker),
    so these attributes run ahead of the batches consumed. A runner that checkpoints should therefore read the
    position before ``iter(loader)`` and add the number of batches it consumed (see :meth:`position_after`).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, world_size: int = 1, rank: int = 0):
        """
        Args:
            lengths: length in samples of each item (index i = item i).
            batch_size: GLOBAL batch size, all ranks together.
            seed: seed of the per-epoch batch order (non-negative); identical on every rank.
            world_size: number of DDP processes.
            rank: this process's rank.
        """
        if len(lengths) == 0:
            raise ValueError("BucketBatchSampler needs at least one item")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0:
            raise ValueError(f"world_size must be positive, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must satisfy 0 <= rank < world_size={world_size}, got {rank}")
        if batch_size < world_size:
            raise ValueError(f"the global batch_size ({batch_size}) must be at least world_size ({world_size})")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.rank = int(rank)
        lengths = [int(length) for length in lengths]
        # sorted() is stable, so equal lengths keep index order.
        order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        if len(batches[-1]) < world_size:
            # Every rank needs a share of every batch, or DDP's collective calls would hang.
            logger.info(
                "Dropping the last batch (%d item(s), fewer than world_size=%d)", len(batches[-1]), world_size
            )
            batches.pop()
        if not batches:
            raise ValueError(f"{len(lengths)} item(s) cannot give every one of {world_size} ranks a share")
        self._batches: List[List[int]] = batches
        self.epoch = 0
        self.batch_index = 0

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return len(self._batches)

    @property
    def global_batches(self) -> List[List[int]]:
        """The fixed global batches (lists of item indices), by bucket; a copy."""
        return [list(batch) for batch in self._batches]

    def batch_order(self, epoch: int) -> List[int]:
        """The permutation of global-batch ids for ``epoch``: a pure function of ``(seed, epoch)``."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        # A fresh generator: the order must not depend on the global RNG state or on what ran before.
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + int(epoch))
        return torch.randperm(len(self._batches), generator=generator).tolist()

    def set_position(self, epoch: int, batch_index: int) -> None:
        """Makes the next iteration start at batch ``batch_index`` of ``epoch``.

        ``batch_index == len(self)`` (an epoch fully consumed) is stored as ``(epoch + 1, 0)``, which is the same
        position in the batch stream and avoids an empty epoch on resume.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"batch_index must be in [0, {len(self)}], got {batch_index}")
        self.epoch, self.batch_index = int(epoch), int(batch_index)
        if self.batch_index == len(self):
            self.epoch, self.batch_index = self.epoch + 1, 0

    def position_after(self, epoch: int, batch_index: int, consumed: int) -> Tuple[int, int]:
        """The position reached from ``(epoch, batch_index)`` after ``consumed`` more batches, across epochs."""
        absolute = epoch * len(self) + batch_index + consumed
        return divmod(absolute, len(self))

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        """Yields this rank's share of each remaining batch of the current epoch, as (item_index, epoch) pairs.

        The start position is read when ``iter()`` is called; afterwards the position moves with every batch,
        to ``(epoch + 1, 0)`` once the epoch's last batch is yielded, so the next ``iter()`` continues there.
        """
        return self._iterate(self.epoch, self.batch_index)

    def _iterate(self, epoch: int, start: int) -> Iterator[List[Tuple[int, int]]]:
        order = self.batch_order(epoch)
        for position in range(start, len(order)):
            batch = self._batches[order[position]]
            share = [(index, epoch) for index in batch[self.rank::self.world_size]]
            # Move first, so the attributes name the next batch while the consumer holds this one.
            if position + 1 == len(order):
                self.epoch, self.batch_index = epoch + 1, 0
            else:
                self.epoch, self.batch_index = epoch, position + 1
            yield share


# --------------------------------------------------------------------------------------------------------------------
# Loading


class CroppedAudioDataset(torch.utils.data.Dataset):
    """Waveforms of ``items``, randomly cropped to at most ``max_length`` samples.

    Keys are ``(item_index, epoch)`` pairs (what :class:`BucketBatchSampler` yields). The crop offset is drawn from
    ``numpy.random.default_rng([seed, epoch, item_index])``, so it is the same in any process or worker and on
    resume, and differs between epochs.

    Non-finite samples (NaN or Inf, which only float files can hold) are looked for in every decoded window, since a
    header check cannot see them. ``on_bad_file="stop"`` raises DataError naming the file and the window;
    ``"skip"`` replaces them with zeros (silence) and logs a warning naming the file, once per file and process (each
    DataLoader worker has its own copy of the dataset). Zeroing rather than dropping the item keeps every batch's
    items and shapes what the sampler decided, so exact resume, the ranks' equal DDP shares and cached teacher targets
    are unaffected; the zeroed stretch is trained on as silence.
    """

    def __init__(
        self, items: Sequence[AudioItem], max_length: Optional[int], seed: int, on_bad_file: str = "stop"
    ) -> None:
        """
        Args:
            items: the utterances (e.g. from :func:`read_length_csvs`).
            max_length: longest waveform returned, in samples; None returns whole files.
            seed: crop seed (non-negative).
            on_bad_file: what a window with non-finite samples does: ``"stop"`` raises DataError, ``"skip"`` zeroes
                those samples with a warning.
        """
        if max_length is not None and max_length <= 0:
            raise ValueError(f"max_length must be positive or None, got {max_length}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        check_on_bad_file(on_bad_file)
        self.items = list(items)
        self.max_length = None if max_length is None else int(max_length)
        self.seed = int(seed)
        self.on_bad_file = on_bad_file
        # Items already reported as holding non-finite samples (skip mode), so each is warned about once.
        self._reported_non_finite: Set[int] = set()

    def __len__(self) -> int:
        """Number of items."""
        return len(self.items)

    def crop_offset(self, index: int, epoch: int) -> int:
        """Start sample of the window read for item ``index`` in ``epoch`` (0 when the item is not cropped)."""
        length = self.items[index].length
        if self.max_length is None or length <= self.max_length:
            return 0
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return int(rng.integers(0, length - self.max_length, endpoint=True))

    def __getitem__(self, key: Tuple[int, int]) -> torch.Tensor:
        """The 1-D float32 waveform of item ``key[0]``, cropped for epoch ``key[1]``."""
        index, epoch = key
        if not 0 <= index < len(self.items):
            raise IndexError(f"item index {index} out of range for {len(self.items)} items")
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        item = self.items[index]
        frames = item.length if self.max_length is None else min(item.length, self.max_length)
        return self.read(index, self.crop_offset(index, epoch), frames)

    def read(self, index: int, offset: int, frames: int) -> torch.Tensor:
        """``frames`` samples of item ``index`` from ``offset``, checking the file against its CSV entry."""
        item = self.items[index]
        try:
            with soundfile.SoundFile(str(item.path)) as audio:
                if audio.samplerate != SAMPLE_RATE:
                    raise DataError(f"{item.path}: sample rate {audio.samplerate} Hz, expected {SAMPLE_RATE} Hz")
                if audio.channels != 1:
                    raise DataError(f"{item.path}: {audio.channels} channels, expected mono")
                if audio.frames != item.length:
                    # A wrong CSV length would silently shorten crops; check_audio_files reports all such files.
                    raise DataError(f"{item.path}: {audio.frames} samples in the file, {item.length} in the CSV")
                if offset:
                    audio.seek(offset)
                # Only the window is decoded, so long files cost no more than max_length samples.
                wave = audio.read(frames, dtype="float32", always_2d=False)
        except DataError:
            raise
        except (RuntimeError, OSError, ValueError) as error:  # LibsndfileError is a RuntimeError
            raise DataError(f"{item.path}: cannot read audio ({error})") from error
        if len(wave) != frames:
            raise DataError(f"{item.path}: read {len(wave)} samples at offset {offset}, expected {frames}")
        finite = np.isfinite(wave)
        if not finite.all():
            wave = self._handle_non_finite(index, offset, wave, finite)
        return torch.from_numpy(np.ascontiguousarray(wave))

    def _handle_non_finite(self, index: int, offset: int, wave: np.ndarray, finite: np.ndarray) -> np.ndarray:
        """Raises DataError (``stop``) or returns ``wave`` with its non-finite samples set to 0 (``skip``)."""
        path = self.items[index].path
        count = int(finite.size - np.count_nonzero(finite))
        where = (f"{path}: {count} non-finite (NaN or Inf) sample(s) in the {len(wave)}-sample window at offset "
                 f"{offset}")
        if self.on_bad_file == "stop":
            raise DataError(f"{where}\n(on_bad_file='skip' replaces them with zeros instead)")
        if index not in self._reported_non_finite:
            self._reported_non_finite.add(index)
            logger.warning("%s: replacing them with zeros (reported once per file)", where)
        return np.where(finite, wave, np.float32(0.0)).astype(np.float32, copy=False)


def collate_waveforms(batch: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stacks 1-D waveforms: a zero-padded ``(batch, max_samples)`` float32 tensor and int64 ``(batch,)`` lengths."""
    if len(batch) == 0:
        raise ValueError("collate_waveforms needs at least one waveform")
    for wave in batch:
        if wave.dim() != 1:
            raise ValueError(f"collate_waveforms expects 1-D waveforms, got shape {tuple(wave.shape)}")
    lengths = torch.tensor([wave.shape[0] for wave in batch], dtype=torch.long)
    padded = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
    for row, wave in enumerate(batch):
        padded[row, : wave.shape[0]] = wave
    return padded, lengths
