"""A small HuBERT teacher trained like HuBERT's first iteration, for offline demos and tests:
MFCC (+Δ, ΔΔ) at the CNN's 20 ms frame rate -> k-means targets (SciPy) -> masked prediction with cross-entropy,
using s3prl's own HuBERT model code, saved in the converted-checkpoint format ``hubert_local`` reads (``final_proj``
and ``label_embs_concat`` included), so it is a teacher like any other.

    s3prl-distill hubert-teacher --data-root DATA/LibriSpeech --csv DATA/len_for_bucket/train-clean-100.csv -o t.ckpt
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from pydantic import Field

from s3prl_distill.formats.s3prl_hubert import build_hubert, save_hubert_checkpoint
from s3prl_distill.model.config import StrictModel

from s3prl_distill.audio_lists import AudioItem
from s3prl_distill.progress import progress as show_progress

logger = logging.getLogger(__name__)

FRAME_SHIFT_MS, FRAME_LENGTH_MS = 20.0, 25.0  # = HuBERT's CNN: stride 320, receptive field 400 samples


class HubertTeacherConfig(StrictModel):
    # HuBERT model_cfg fields (s3prl's HubertConfig); a Base-like layout at demo size.
    model: Dict[str, Any] = Field(default_factory=lambda: {
        "label_rate": 50.0, "extractor_mode": "default",
        "conv_feature_layers": "[(128,10,5)] + [(128,3,2)] * 4 + [(128,2,2)] * 2",
        "encoder_layers": 4, "encoder_embed_dim": 192, "encoder_ffn_embed_dim": 768, "encoder_attention_heads": 4,
        "conv_pos": 32, "conv_pos_groups": 8, "final_dim": 64, "layer_norm_first": False,
        "mask_prob": 0.65, "mask_length": 5, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "feature_grad_mult": 0.1,
    })
    clusters: int = 50
    # HuBERT's alpha: loss = alpha * CE(masked frames) + (1 - alpha) * CE(unmasked frames). HuBERT Base uses 1.0,
    # but in a few hundred CPU steps the masked term alone stays at chance (measured: 3.8 vs 3.91 after 800 steps),
    # while with 0.5 the unmasked term teaches each frame's content and the masked CE falls to ~2.6 by step 400.
    masked_weight: float = Field(0.5, ge=0.0, le=1.0)
    kmeans_frames: int = 200000  # frames sampled for fitting k-means
    steps: int = 600
    batch_size: int = 8
    max_length: int = 48000  # crop, samples
    lr: float = 2.0e-3
    warmup_proportion: float = 0.08
    seed: int = 0


def mfcc_features(wave: np.ndarray) -> torch.Tensor:
    """(frames, 39): 13 MFCCs + deltas + delta-deltas at a 20 ms shift / 25 ms window (one row per CNN frame)."""
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as AF

    mfcc = kaldi.mfcc(torch.from_numpy(wave).float()[None] * 32768, sample_frequency=16000, num_ceps=13,
                      frame_shift=FRAME_SHIFT_MS, frame_length=FRAME_LENGTH_MS, dither=0.0)
    delta = AF.compute_deltas(mfcc.t()[None])[0]
    return torch.cat([mfcc.t(), delta, AF.compute_deltas(delta[None])[0]]).t()


def fit_kmeans(features: List[torch.Tensor], clusters: int, max_frames: int, seed: int) -> np.ndarray:
    """k-means codebook (clusters, 39) on standardised MFCC frames, SciPy's k-means++ initialisation."""
    from scipy.cluster.vq import kmeans2

    frames = torch.cat(features).numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(frames) > max_frames:
        frames = frames[rng.choice(len(frames), max_frames, replace=False)]
    codebook, _ = kmeans2(frames, clusters, iter=20, minit="++", seed=rng)
    return codebook


def assign(features: torch.Tensor, codebook: np.ndarray) -> torch.Tensor:
    from scipy.cluster.vq import vq

    labels, _ = vq(features.numpy().astype(np.float64), codebook)
    return torch.from_numpy(labels.astype(np.int64))


def train_hubert_teacher(items: List[AudioItem], output: Path, config: Optional[HubertTeacherConfig] = None,
                         progress: bool = True) -> Path:
    """Pretrain on ``items`` (16 kHz mono) and write a ``hubert_local`` checkpoint to ``output``."""
    config = config or HubertTeacherConfig()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)  # fairseq's mask sampling uses numpy's global generator
    waves = [soundfile.read(str(item.path), dtype="float32")[0] for item in
             show_progress(items, desc="reading audio", disable=not progress)]
    features = [mfcc_features(w) for w in show_progress(waves, desc="MFCC", disable=not progress)]
    mean = torch.cat(features).mean(0)
    std = torch.cat(features).std(0).clamp(min=1e-5)
    features = [(f - mean) / std for f in features]
    codebook = fit_kmeans(features, config.clusters, config.kmeans_frames, config.seed)
    labels = [assign(f, codebook) for f in features]
    used = len(torch.unique(torch.cat(labels)))
    logger.info("k-means: %d clusters, %d used, over %d frames", config.clusters, used, sum(len(x) for x in labels))

    model, task_cfg, dictionaries = build_hubert(dict(config.model), num_labels=config.clusters)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    warmup = max(1, int(config.steps * config.warmup_proportion))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup))))
    generator = np.random.default_rng(config.seed)
    order: List[int] = []
    bar = show_progress(range(config.steps), desc="HuBERT teacher", unit="step", disable=not progress)
    for step in bar:
        if len(order) < config.batch_size:
            order += list(generator.permutation(len(waves)))
        batch, order = order[: config.batch_size], order[config.batch_size:]
        crop_frames = min(min(len(labels[i]) for i in batch), (config.max_length - 400) // 320 + 1)
        sources, targets = [], []
        for i in batch:  # crops start on a frame boundary so waveform and labels stay aligned
            start = int(generator.integers(0, len(labels[i]) - crop_frames + 1))
            sources.append(torch.from_numpy(waves[i][start * 320: start * 320 + (crop_frames - 1) * 320 + 400]))
            targets.append(labels[i][start: start + crop_frames])
        source = torch.stack(sources)
        no_padding = torch.zeros(source.shape, dtype=torch.bool)  # equal-length crops; the model needs a mask
        output_dict = model(source, target_list=[torch.stack(targets)], padding_mask=no_padding, mask=True)
        masked = F.cross_entropy(model.get_logits(output_dict, True)[0].float(),
                                 model.get_targets(output_dict, True)[0])
        loss = config.masked_weight * masked
        if config.masked_weight < 1.0:
            unmasked = F.cross_entropy(model.get_logits(output_dict, False)[0].float(),
                                       model.get_targets(output_dict, False)[0])
            loss = loss + (1.0 - config.masked_weight) * unmasked
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        if step % 20 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", masked=f"{masked.item():.3f}")
            logger.info("teacher step %d: loss %.4f, masked-frame CE %.4f (chance %.3f)", step + 1, loss.item(),
                        masked.item(), math.log(config.clusters))
    model.eval()
    return save_hubert_checkpoint(model, dict(config.model), task_cfg, dictionaries, output)
