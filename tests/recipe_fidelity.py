"""Shared machinery of the recipe-fidelity tests (issue 16): ``test_distilhubert_fidelity.py``,
``test_fithubert_fidelity.py``, ``test_asr_distill_fidelity.py``.

Each test builds a tiny student through the production path (``DistillationTask`` with a teacher cache, so the real
``DistillationTask.losses`` runs on teacher hidden states given here), then rebuilds the official formulation
independently from the student's raw tensors with plain torch ops -- the official head applied to the backbone's
outputs with the head's weights, the official loss with its reductions -- and compares the loss and every
parameter's gradient (relative 1e-5), on an equal-length batch and on a padded one (the official code averages over
padded frames too). The optimizer tests take two steps with the optimizer the runner builds from the shipped config
and compare them with s3prl's ``AdamW_with_schedule`` rule written out below (relative 1e-6).

Official code read for this (formulas and reductions, not copied):
* s3prl/s3prl@ec8064b5 ``s3prl/pretrain/distiller/pretrain_expert.py`` (``DistillerForPretrain.compute_loss``),
  ``s3prl/upstream/distiller/model.py`` + ``module.py`` (expand-last head: Linear -> GELU -> SplitLinear),
  ``s3prl/optimizers.py`` (``get_grouped_parameters``, ``Lamb(adam=True, correct_bias=True)``, ``warmup_linear``),
  ``s3prl/pretrain/runner.py`` (``clip_grad_norm_`` over the upstream model before each step);
* glory20h/FitHuBERT@36d999c ``train.py::calculate_loss`` (MSE, hints x 0.1, per-layer means summed; target cut to
  the prediction's length), ``modules/module.py::LayerWiseProjHead`` (ConvTranspose1d -> Linear); its Lightning
  Trainer sets no ``gradient_clip_val`` (no clipping);
* TCL606/s3prl@a975aa5f ``s3prl/pretrain/distiller/pretrain_expert.py::compute_loss`` (type1/type2 KL with
  ``reduction="batchmean"`` over B*T rows, teacher logits cos(final_proj(h_T^last), label_embs)/tau),
  ``s3prl/upstream/distiller/model.py`` (layer-wise heads, ``final_proj`` on the last layer),
  ``s3prl/pretrain/distillFBANK/pretrain_expert.py`` (front-end stage: mean L1/MSE between ``hidden_states[0]`` and
  ``frontend_proj(front end)``, for the first ``frontend_steps`` forward calls).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from s3prl_distill.losses import combine
from s3prl_distill.model import (
    StudentConfig,
    deepthin_config,
    distilhubert_config,
    fithubert_config,
    with_codeword_head,
    with_fbank_front_end,
)
from s3prl_distill.pretrain.config import StudentInitConfig, TeacherConfig, load_config
from s3prl_distill.pretrain.methods import build_method
from s3prl_distill.pretrain.runner import Trainer
from s3prl_distill.pretrain.task import DistillationTask
from s3prl_distill.pretrain.teacher_cache import FORMAT, TeacherCache, required_layers

RECIPES = Path(__file__).resolve().parents[1] / "pretrain"
TINY_CNN = "[(16,10,5)] + [(16,3,2)]*4 + [(16,2,2)]*2"
TEACHER_DIM, TEACHER_LAYERS = 24, 3  # the teacher's hidden states: 0..3, each 24-d
CODEBOOK_DIM, CODEWORDS = 8, 12
SAMPLES = 4320  # 13 CNN frames (odd: FitHuBERT's time reduction drops one), 25 fbank frames -> 13
PADDED_LENGTHS = [SAMPLES, 3500]  # 13 and 10 CNN frames
LOSS_RTOL, GRAD_RTOL, STEP_RTOL = 1e-5, 1e-5, 1e-6


# --- tiny students (dropout off, so train mode differs from eval only where the official code does too) -------------

def _tiny(config: StudentConfig, layers: int, embed: int, ffn: int, cnn: Optional[str] = TINY_CNN) -> dict:
    data = config.to_dict()
    if cnn is not None:
        data["feature_extractor"]["conv_layers"] = cnn
    data["feature_dropout"] = 0.0
    data["encoder"].update(num_layers=layers, embed_dim=embed, ffn_dim=ffn, num_heads=4, pos_conv_kernel=8,
                           pos_conv_groups=4, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return data


def tiny_distilhubert() -> StudentConfig:
    data = _tiny(distilhubert_config(teacher_dim=TEACHER_DIM), layers=2, embed=32, ffn=64)
    data["prediction_head"].update(target_layers=[1, 2, 3], inner_dim=32)
    return StudentConfig.from_dict(data)


def tiny_fithubert() -> StudentConfig:
    cnn = "[(8,10,5)] + [(12,1,1)] + [(12,3,2)]*4 + [(16,1,1)] + [(16,2,2)]*2"
    data = _tiny(fithubert_config(teacher_dim=TEACHER_DIM), layers=3, embed=32, ffn=32, cnn=cnn)
    data["prediction_head"]["target_layers"] = [1, 2, 3]
    return StudentConfig.from_dict(data)


def tiny_deepthin(codeword: Optional[str] = "logits", fbank: bool = False) -> StudentConfig:
    data = _tiny(deepthin_config(teacher_dim=TEACHER_DIM), layers=3, embed=32, ffn=32)
    data["prediction_head"]["target_layers"] = [1, 2, 3]
    config = StudentConfig.from_dict(data)
    if fbank:
        config = with_fbank_front_end(config)
    if codeword is not None:
        config = with_codeword_head(config, codeword, CODEWORDS if codeword == "logits" else CODEBOOK_DIM)
    return config


def shipped(recipe: str, name: str = "config.yaml"):
    return load_config(RECIPES / recipe / name)


# --- the teacher: hidden states and codebook given directly, through a (minimal) teacher cache ----------------------

def teacher_cache(folder: Path, layers: List[int], codebook: Optional[dict]) -> TeacherCache:
    """A cache directory holding only what ``DistillationTask`` reads when targets are passed in (no shards)."""
    folder.mkdir()
    meta = {"format": FORMAT, "key": {"layers": layers}, "width": TEACHER_DIM,
            "num_hidden_states": TEACHER_LAYERS + 1, "shards": []}
    (folder / "meta.json").write_text(json.dumps(meta))
    np.save(folder / "index.npy", np.zeros((0, 6), dtype=np.int64))
    if codebook is not None:
        torch.save(codebook, folder / "codebook.pt")
    return TeacherCache(folder)


def random_codebook(seed: int = 5) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"projection_weight": torch.randn(CODEBOOK_DIM, TEACHER_DIM, generator=generator) / 4,
            "projection_bias": 0.1 * torch.randn(CODEBOOK_DIM, generator=generator),
            "embeddings": torch.randn(CODEWORDS, CODEBOOK_DIM, generator=generator)}


def build(tmp_path, student: StudentConfig, method, codebook: Optional[dict] = None, seed: int = 0):
    """(task, cached layer order) for ``student`` trained by ``method`` from teacher hidden states passed in."""
    layers = required_layers(build_method(method, student), TEACHER_LAYERS + 1)
    cache = teacher_cache(tmp_path / f"cache{seed}", layers, codebook)
    torch.manual_seed(seed)
    task = DistillationTask(TeacherConfig(name="hubert_local"), student, StudentInitConfig(), method,
                            torch.device("cpu"), cache)
    task.student.train()
    with torch.no_grad():  # move LayerNorm weights and biases off 1 / 0, so their gradients are generic
        for name, parameter in task.student.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    if task.student.fbank is not None:
        task.student.fbank.set_statistics(torch.full((80,), 5.0), torch.full((80,), 3.0), 100)
    return task, layers


def batch(padded: bool, frames: int, seed: int = 1):
    """Waveforms (B, S) zero-padded, lengths, and the teacher's hidden states 0..L (B, frames, D) with values on
    padded frames too (a real teacher's outputs there are not zero)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(PADDED_LENGTHS if padded else [SAMPLES, SAMPLES])
    waveforms = 0.1 * torch.randn(2, SAMPLES, generator=generator)
    waveforms[1, int(lengths[1]):] = 0.0
    hidden = [torch.randn(2, frames, TEACHER_DIM, generator=generator) for _ in range(TEACHER_LAYERS + 1)]
    return waveforms, lengths, hidden


def cached(hidden: List[torch.Tensor], layers: List[int]) -> torch.Tensor:
    return torch.stack([hidden[layer] for layer in layers], dim=2)  # (B, T, layers, D), the cache's layout


def student_lengths(lengths: torch.Tensor) -> Optional[torch.Tensor]:
    return None if bool((lengths == SAMPLES).all()) else lengths


# --- comparisons -------------------------------------------------------------------------------------------------

def gradients(module: torch.nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in module.named_parameters()}


def assert_relative(ours: torch.Tensor, reference: torch.Tensor, rtol: float, what: str, floor: float = 0.0) -> None:
    """Norm-based relative error; ``floor``: a scale below which the reference counts as zero."""
    error = (ours.double() - reference.double()).norm().item()
    scale = max(reference.double().norm().item(), floor)
    assert error <= rtol * scale, f"{what}: relative error {error / max(scale, 1e-300):.2e} > {rtol}"


def assert_same_gradients(ours: Dict[str, Optional[torch.Tensor]], reference: Dict[str, Optional[torch.Tensor]]):
    assert ours.keys() == reference.keys()
    # Some gradients are zero up to rounding (attention key biases: softmax ignores a shift shared by all keys);
    # they are compared at 1e-4 of the whole gradient's norm instead of their own.
    total = math.sqrt(sum(float(g.double().square().sum()) for g in reference.values() if g is not None))
    for name in ours:
        assert (ours[name] is None) == (reference[name] is None), f"{name}: gradient in one computation only"
        if ours[name] is not None:
            assert_relative(ours[name], reference[name], GRAD_RTOL, f"gradient of {name}", floor=1e-4 * total)


def ours_and_reference(task, waveforms, lengths, hidden, layers, reference, step: int = 0):
    """Loss and gradients of our task, then of ``reference(student)`` on the same weights."""
    student = task.student
    ours = combine(task.losses(student, waveforms, lengths, step, cached(hidden, layers)))
    ours.backward()
    our_grads = gradients(student)
    student.zero_grad(set_to_none=True)
    expected = reference(student)
    expected.backward()
    reference_grads = gradients(student)
    student.zero_grad(set_to_none=True)
    assert_relative(ours.detach(), expected.detach(), LOSS_RTOL, "loss")
    assert_same_gradients(our_grads, reference_grads)


# --- the official formulations -----------------------------------------------------------------------------------

def official_regression(pred: torch.Tensor, target: torch.Tensor, loss_type: str, cosine_weight: float,
                        rec_weight: float = 1.0) -> torch.Tensor:
    """s3prl's DistillerForPretrain.compute_loss (and the authors' fork): element-wise L1 (or MSE) mean over
    B x N x T x D, plus cosine_weight x the mean over B x N x T of -log sigmoid(cos); feat_pen weight 0."""
    difference = pred - target
    rec = (difference.abs() if loss_type == "l1" else difference.square()).mean()
    sim = -F.logsigmoid(F.cosine_similarity(pred, target, dim=-1)).mean()
    return rec_weight * rec + cosine_weight * sim




def teacher_targets(hidden: List[torch.Tensor], layers: List[int]) -> torch.Tensor:
    return torch.stack([hidden[layer] for layer in layers], dim=1)  # B x N x T x D


# --- one optimizer step, as the runner builds it ---------------------------------------------------------------------

class ReferenceAdamWWithSchedule:
    """s3prl's AdamW_with_schedule from its formulas, in float64: parameter groups by name ('bias' in it: no weight
    decay, else 0.01), and per parameter its own step count t (advanced only when it has a gradient):

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t) * warmup_linear(t / T)
        p = p - lr_t * (m / (sqrt(v) + eps) + wd * p)

    warmup_linear(x) = x / w below the warm-up fraction w, else max((x - 1) / (w - 1), 0)."""

    def __init__(self, lr: float, betas, eps: float, total_steps: int, warmup: float) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.total, self.warmup = lr, betas, eps, total_steps, warmup
        self.state: Dict[str, dict] = {}

    def schedule(self, t: int) -> float:
        x = t / self.total
        return x / self.warmup if x < self.warmup else max((x - 1.0) / (self.warmup - 1.0), 0.0)

    def step(self, params: Dict[str, torch.Tensor],
             grads: Dict[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        updated = {}
        for name, p in params.items():
            g = grads[name]
            if g is None:
                updated[name] = p
                continue
            state = self.state.setdefault(name, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            state["t"] += 1
            t = state["t"]
            state["m"] = self.b1 * state["m"] + (1 - self.b1) * g
            state["v"] = self.b2 * state["v"] + (1 - self.b2) * g * g
            lr_t = self.lr * math.sqrt(1 - self.b2 ** t) / (1 - self.b1 ** t) * self.schedule(t)
            decay = 0.0 if "bias" in name else 0.01
            updated[name] = p - lr_t * (state["m"] / (state["v"].sqrt() + self.eps) + decay * p)
        return updated


def clipped(grads: Dict[str, Optional[torch.Tensor]], max_norm: Optional[float]) -> Dict[str, Optional[torch.Tensor]]:
    """torch.nn.utils.clip_grad_norm_'s rule (what s3prl's runner calls): scale by max_norm / (norm + 1e-6) when < 1."""
    if max_norm is None:
        return grads
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values() if g is not None))
    scale = min(1.0, max_norm / (norm + 1e-6))
    return {name: None if g is None else g * scale for name, g in grads.items()}


def assert_steps_match_s3prl(task, config, steps, max_norm: Optional[float], our_clip: Optional[float]) -> None:
    """Our runner's update (clip_grad_norm_ over the student, then the optimizer built by Trainer._optimizer) for each
    of ``steps`` = [(waveforms, lengths, cached, step)], against the reference; float64 weights, so that the update
    itself (not only the weights after it) is compared at STEP_RTOL."""
    student = task.student.double()
    optimizer = Trainer._optimizer(SimpleNamespace(config=config, task=task, student=student,
                                                   device=torch.device("cpu")))
    opt = config.optimizer
    reference = ReferenceAdamWWithSchedule(opt.lr, opt.betas, opt.eps, config.runner.total_steps,
                                           config.scheduler.warmup_proportion)
    for waveforms, lengths, targets, step in steps:
        before = {name: p.detach().clone() for name, p in student.named_parameters()}
        combine(task.losses(student, waveforms.double(), lengths, step, targets.double())).backward()
        grads = gradients(student)
        # As pretrain/runner.py: null clipping still measures the norm.
        norm = torch.nn.utils.clip_grad_norm_(student.parameters(), math.inf if our_clip is None else our_clip)
        assert (our_clip is None) == (max_norm is None)  # the two runs clip alike
        if max_norm is not None:
            assert norm > max_norm  # clipping acts on this batch
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        expected = reference.step(before, clipped(grads, max_norm))
        for name, p in student.named_parameters():
            if grads[name] is None:
                assert torch.equal(p.detach(), before[name]), f"{name} moved without a gradient"
                continue
            assert_relative(p.detach(), expected[name], STEP_RTOL, f"{name} after step {step}")
            assert_relative(p.detach() - before[name], expected[name] - before[name], STEP_RTOL,
                            f"update of {name} at step {step}")


def runner_config(recipe: str, name: str = "config.yaml", total_steps: int = 20, clip: Optional[float] = None):
    """The shipped optimizer/scheduler/runner sections over ``total_steps`` updates (DistilHuBERT's and Wang et al.'s
    7 % warm-up: W = 1.4, so step 1 warms up and step 2 decays; FitHuBERT's 5 %: W = 1, both decay)."""
    config = shipped(recipe, name)
    assert config.optimizer.name == "AdamW_with_schedule", f"{recipe}/{name}: s3prl's optimizer"
    runner = {"total_steps": total_steps, **({} if clip is None else {"gradient_clipping": clip})}
    return SimpleNamespace(optimizer=config.optimizer, scheduler=config.scheduler,
                           runner=config.runner.model_copy(update=runner))
