"""The training data loader of a data config: CSVs, header checks, length buckets, resumable crops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Tuple

import torch

from s3prl_distill.audio_lists import AudioItem, check_audio_files, read_length_csvs

from .config import DataConfig
from .data import BucketBatchSampler, CroppedAudioDataset, collate_waveforms
from .teacher_cache import CachedWindowDataset, TeacherCache, collate_with_targets

logger = logging.getLogger(__name__)


def build_data(data: DataConfig, seed: int, world_size: int = 1, rank: int = 0, pin_memory: bool = False,
               progress: bool = True) -> Tuple[List[AudioItem], BucketBatchSampler, torch.utils.data.DataLoader]:
    """(items, sampler, loader) for a data config: CSVs, header checks, length buckets, resumable crops (or, with a
    teacher cache, its windows and their cached targets)."""
    items = read_length_csvs(Path(data.root), Path(data.bucket_dir), data.sets)
    if data.check_files:
        items = check_audio_files(items, data.on_bad_file, progress=progress,
                                  source=f"sets {data.sets} in {data.bucket_dir}")
    if data.train_batch_size % world_size:
        raise ValueError(f"data.train_batch_size={data.train_batch_size} is not divisible by the {world_size} processes")
    sampler = BucketBatchSampler([item.length for item in items], data.train_batch_size, seed, world_size, rank)
    if data.teacher_cache is not None:
        dataset = CachedWindowDataset(items, TeacherCache(Path(data.teacher_cache)), data.max_length, seed,
                                      data.on_bad_file)
        collate = collate_with_targets
    else:
        dataset, collate = CroppedAudioDataset(items, data.max_length, seed, data.on_bad_file), collate_waveforms
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=data.num_workers,
        pin_memory=pin_memory,
        persistent_workers=data.num_workers > 0,
        # Its own generator: creating an iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator(),
    )
    logger.info("data: %d utterances, %d batches per epoch", len(items), len(sampler))
    return items, sampler, loader

