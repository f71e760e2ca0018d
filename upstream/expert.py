"""The one upstream expert every family's entries build: a student read by ``formats.read_student``, presented by
its family's :class:`OutputAdapter`.

The base adapter gives the standard student outputs, which is all a new method's students need: register the
method with ``family="student"`` and ``student_local`` / ``student_url`` load its checkpoints. A family has its own
adapter only where it really differs: DistilHuBERT (heads in ``hidden_states``, ``paper``), FitHuBERT (40 ms layers,
hint heads, options from ``-g``), Wang et al.'s students (the entry name must fit the student's shape), the pruned
students (gates refused, DPHuBERT's official format), sungnyun/ARMHuBERT's models (the official ``hidden_states``:
ARMHuBERT / MaskHuBERT's heads, STaRHuBERT's layers).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

from torch import Tensor, nn

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint
from s3prl_distill.errors import validated
from s3prl_distill.formats import StudentCheckpoint, read_student
from s3prl_distill.formats.huggingface import is_huggingface_directory, read_huggingface_student
from s3prl_distill.model import StudentModel

from .interfaces import (
    STUDENT_FEATURE_KEYS,
    LazyOutputs,
    Precision,
    UpstreamOptions,
    as_float32,
    check_feature_key,
    input_device_type,
    load_backbone,
    load_weights,
    pad_waveforms,
    precision_context,
    read_options,
    resolve_checkpoint,
    resolve_local_checkpoint,
    student_outputs,
    validate_waveforms,
)

ModelConfig = Union[None, str, Mapping[str, Any]]


class OutputAdapter:
    """How an upstream reads and presents its students. This base is the generic ``student`` family: any student
    checkpoint, the training heads dropped, and s3prl's HuBERT indexing of the outputs (``hidden_states`` =
    [transformer input after the positional conv, each layer], ``last_hidden_state``, ``pad_mask``), so a student's
    layer weights compare with its teacher's."""

    # Checkpoint families this upstream takes (None: any); see formats.read_student.
    families: Optional[Tuple[str, ...]] = None
    # Keep the prediction heads in the model (an adapter whose outputs use them).
    keep_heads = False

    def __init__(self, name: str) -> None:
        self.name = name  # the entry name without _local / _url: names the upstream in every message

    @property
    def label(self) -> str:
        """What the checkpoint is called when it cannot be read."""
        return f"{self.name} checkpoint"

    @property
    def wanted(self) -> str:
        """The end of the refusal of a checkpoint of another family or format."""
        return (f"{self.name} expects a student checkpoint: ours (s3prl-distill pretrain / prune), s3prl's distiller "
                "format or DPHuBERT's official {config, state_dict} (FitHuBERT's release: fithubert_local)")

    def read_options(self, model_config: ModelConfig, **kwargs: Any) -> Tuple[UpstreamOptions, Optional[Mapping]]:
        """The options given with ``-g``, and an official training YAML for ``read_student`` (none here)."""
        return read_options(model_config, self.name), None

    def check(self, student: StudentCheckpoint, source: str) -> None:
        """Refuse a student this upstream cannot present, before any model is built."""
        if student.config.pruning is not None:
            raise CheckpointError(f"{source} still has its pruning gates: run `s3prl-distill prune {source} "
                                  "--output DIR` and load DIR/pruned.ckpt")
        if student.config.encoder.time_reduction is not None:
            raise CheckpointError(f"{source} holds a student with a time reduction (its layers have two frame "
                                  "rates, which s3prl's weighted sum cannot mix); load it with fithubert_local")

    def build(self, student: StudentCheckpoint, source: str) -> StudentModel:
        if self.keep_heads:
            model = StudentModel(student.config)
            load_weights(model, student.state, source)
        else:
            model = load_backbone(student.config, student.state, source)
        if model.fbank is not None and not model.fbank.has_statistics:
            raise CheckpointError(f"{source}: the fbank front end has no normalisation statistics")
        return model

    def rates(self, model: StudentModel) -> Dict[str, int]:
        """Waveform samples per frame of every output key."""
        return {key: model.downsample_rate for key in STUDENT_FEATURE_KEYS}

    def outputs(self, model: StudentModel, wavs: List[Tensor]) -> Mapping[str, Any]:
        """Validate and pad ``wavs``, then :meth:`batch_outputs`."""
        validate_waveforms(wavs, model.receptive_field, self.name)
        waveforms, lengths = pad_waveforms(wavs)
        return self.batch_outputs(model, waveforms, lengths)

    def batch_outputs(self, model: StudentModel, waveforms: Tensor, lengths: Optional[Tensor]) -> Mapping[str, Any]:
        """The outputs for a padded batch ``waveforms`` (batch, samples) with ``lengths`` valid samples per row (None:
        no padding); tensor operations only, so the ONNX export traces it with dynamic batch and length."""
        out = model(waveforms, lengths)
        return student_outputs(out, out.hidden_states())


class StudentExpert(nn.Module):
    """s3prl's upstream contract (see ``interfaces``) over one student checkpoint of any format we read."""

    def __init__(
        self,
        ckpt: str,
        expected: str,
        model_config: ModelConfig = None,
        trust_checkpoint: bool = False,
        adapter: Type[OutputAdapter] = OutputAdapter,
        precision: Optional[Precision] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.name = expected
        self.adapter = adapter(expected)
        options, training_yaml = self.adapter.read_options(model_config, **kwargs)
        if precision is not None:  # from Python (S3PRLUpstream's extra_conf): overrides -g, validated the same way
            options = validated(type(options), {**options.model_dump(), "precision": precision},
                                f"{expected}: invalid upstream option precision=")
        self.precision: Precision = options.precision
        if is_huggingface_directory(Path(ckpt)):  # a transformers directory (config.json + weights)
            student = read_huggingface_student(Path(ckpt), self.adapter.families, self.adapter.wanted)
        else:
            checkpoint = load_checkpoint(ckpt, trust_checkpoint=trust_checkpoint or options.trust_checkpoint,
                                         what=self.adapter.label)
            student = read_student(checkpoint, ckpt, training_yaml, families=self.adapter.families,
                                   wanted=self.adapter.wanted)
        self.adapter.check(student, ckpt)
        self.model = self.adapter.build(student, ckpt)
        self.family = student.family
        self.rates = self.adapter.rates(self.model)

    def get_downsample_rates(self, key: str) -> int:
        check_feature_key(key, tuple(self.rates), self.name)
        return self.rates[key]

    def forward(self, wavs: List[Tensor]) -> Mapping[str, Any]:
        """The adapter's outputs (a dict, or FitHuBERT's lazily computed mapping).

        ``precision: bf16`` runs the student under bf16 autocast on the input's device and returns every output as
        float32 (see ``interfaces.as_float32``); a lazily computed output runs under the same autocast when read."""
        if self.precision == "fp32":
            return self.adapter.outputs(self.model, wavs)
        device_type = input_device_type(wavs)
        with precision_context(self.precision, device_type):
            outputs = self.adapter.outputs(self.model, wavs)
        if not isinstance(outputs, LazyOutputs):
            return as_float32(dict(outputs))

        def entry(key: str) -> Any:
            with precision_context(self.precision, device_type):
                value = outputs[key]
            return as_float32(value)

        return LazyOutputs({key: functools.partial(entry, key) for key in outputs})


def local_entry(adapter: Type[OutputAdapter], expected: str, ckpt: Optional[str], model_config: Any,
                **kwargs: Any) -> StudentExpert:
    """``<expected>_local``: the expert for an existing local file."""
    path = resolve_local_checkpoint(ckpt, f"{expected}_local")
    return StudentExpert(path, expected, model_config, adapter=adapter, **kwargs)


def url_entry(adapter: Type[OutputAdapter], expected: str, ckpt: Optional[str], model_config: Any, refresh: bool,
              **kwargs: Any) -> StudentExpert:
    """``<expected>_url``: the same from a URL (downloaded into s3prl's cache) or a local path; ``-g`` may be a URL."""
    if ckpt is None:
        raise ValueError(f"{expected}_url needs the checkpoint URL: pass it with -k or ckpt=")
    path = resolve_checkpoint(ckpt, refresh, f"{expected}_url")
    if isinstance(model_config, str) and "://" in model_config:  # -g may be a URL too (an official training YAML)
        model_config = resolve_checkpoint(model_config, refresh, f"{expected}_url")
    return StudentExpert(path, expected, model_config, adapter=adapter, **kwargs)


def default_location(family: str) -> Path:
    """Where ``<family>`` looks without ``-k``: ``<s3prl's download cache>/<family>``, i.e.
    ``~/.cache/s3prl/download/<family>`` by default."""
    try:
        from s3prl.util.download import get_dir

        return Path(get_dir()) / family
    except ImportError:
        return Path.home() / ".cache" / "s3prl" / "download" / family


def location_variables(family: str) -> Tuple[str, str]:
    """The environment variables naming ``<family>``'s checkpoint and (official release) training YAML."""
    return f"S3PRL_DISTILL_{family.upper()}", f"S3PRL_DISTILL_{family.upper()}_CONFIG"


def default_entry(adapter: Type[OutputAdapter], family: str, release: str, ckpt: Optional[str], model_config: Any,
                  **kwargs: Any) -> StudentExpert:
    """``<family>`` (no suffix): ``-k`` when given; else ``$S3PRL_DISTILL_<FAMILY>`` (+ ``..._CONFIG``); else
    ``<default_location(family)>/<release>.ckpt`` (+ ``<release>.yaml`` beside it for an official Lightning release).
    ``-g`` overrides the YAML found."""
    if ckpt:
        return local_entry(adapter, family, ckpt, model_config, **kwargs)
    ckpt_variable, config_variable = location_variables(family)
    folder = default_location(family)
    candidates = [(os.environ.get(ckpt_variable), os.environ.get(config_variable))] \
        if os.environ.get(ckpt_variable) else []
    candidates.append((str(folder / f"{release}.ckpt"), str(folder / f"{release}.yaml")))
    for path, config in candidates:
        if path and Path(path).is_file():
            config = model_config or (config if config and Path(config).is_file() else None)
            return local_entry(adapter, family, path, config, **kwargs)
    raise FileNotFoundError(
        f"{family}: no checkpoint found. Either pass -k CKPT (and -g YAML for the official release), or set "
        f"{ckpt_variable}=/path/to/checkpoint (and {config_variable}=/path/to/training.yaml for the official "
        f"release), or put the checkpoint at {folder / (release + '.ckpt')} and, for the official Lightning release, "
        f"its training YAML at {folder / (release + '.yaml')}."
    )
