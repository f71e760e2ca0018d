"""What every upstream family shares: input checks, padding, options, checkpoint resolution, weight loading.

The contract with s3prl (``s3prl/upstream/example/expert.py``): ``forward(wavs)`` takes a list of unpadded 1-D
float32 16 kHz tensors and returns a dict whose ``hidden_states`` is a list of equal-shape ``(batch, frames, dim)``
tensors; ``get_downsample_rates(key)`` gives waveform samples per frame for each key.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, \
    Type, TypeVar, Union

import torch
import yaml
from torch import Tensor, nn

from s3prl_distill.checkpoint import CheckpointError
from s3prl_distill.formats.huggingface import is_huggingface_directory
from s3prl_distill.errors import MissingFeatureError, validated
from s3prl_distill.model import StudentConfig, StudentModel
from s3prl_distill.model.config import StrictModel
from s3prl_distill.model.student import HEAD_PREFIXES

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def validate_waveforms(wavs: Any, min_samples: int, name: str) -> None:
    """Raise one clear ``ValueError`` for input s3prl's contract does not allow, before any model code runs."""
    if isinstance(wavs, Tensor) or not isinstance(wavs, Sequence) or len(wavs) == 0:
        raise ValueError(f"{name}: expected a non-empty list of 1-D waveform tensors, got {type(wavs).__name__}")
    for index, wav in enumerate(wavs):
        where = f"{name}: waveform {index}"
        if not isinstance(wav, Tensor):
            raise ValueError(f"{where} is a {type(wav).__name__}, expected a torch.Tensor")
        if wav.dim() != 1:
            raise ValueError(
                f"{where} has shape {tuple(wav.shape)}; expected a 1-D mono waveform (samples,). "
                "Downmix multi-channel audio first, e.g. wav.mean(dim=0)"
            )
        if wav.dtype != torch.float32:
            raise ValueError(
                f"{where} has dtype {wav.dtype}; expected torch.float32 samples in [-1, 1] "
                "(16-bit PCM: wav.float() / 32768)"
            )
        if wav.numel() == 0:
            raise ValueError(f"{where} is empty")
        if wav.numel() < min_samples:
            raise ValueError(
                f"{where} has {wav.numel()} samples, fewer than the {min_samples} "
                f"({1000 * min_samples / SAMPLE_RATE:.0f} ms at 16 kHz) the model needs for one frame"
            )
    # One check for the whole batch (a single device sync); find the culprit only on failure.
    if not bool(torch.isfinite(torch.cat([wav.reshape(-1) for wav in wavs])).all()):
        bad = next(i for i, wav in enumerate(wavs) if not bool(torch.isfinite(wav).all()))
        raise ValueError(f"{name}: waveform {bad} contains NaN or Inf samples")


def pad_waveforms(wavs: Sequence[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """Zero-pad to ``(batch, max_samples)``; lengths are None when nothing was padded."""
    lengths = [wav.numel() for wav in wavs]
    padded = nn.utils.rnn.pad_sequence(list(wavs), batch_first=True)
    if min(lengths) == max(lengths):
        return padded, None
    return padded, torch.tensor(lengths, device=padded.device)


# How the student's forward runs (the ``precision`` upstream option).
Precision = Literal["fp32", "bf16"]


class UpstreamOptions(StrictModel):
    """Options an upstream reads from ``-g`` (``model_config``): a YAML file, or a dict from Python."""

    # Allow full unpickling of a checkpoint that holds Python objects beyond s3prl's known formats.
    trust_checkpoint: bool = False
    # The student's forward in fp32 (default), or under bf16 autocast (outputs still float32); see ``precision_context``.
    precision: Precision = "fp32"


def input_device_type(wavs: Any) -> str:
    """The device type of the first waveform (``cpu`` where there is none to ask: validation reports that input)."""
    if isinstance(wavs, Sequence) and len(wavs) > 0 and isinstance(wavs[0], Tensor):
        return wavs[0].device.type
    return "cpu"


def precision_context(precision: Precision, device_type: str) -> ContextManager[Any]:
    """``bf16``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` (CPU and CUDA); ``fp32``: nothing at all, so
    the default forward is exactly what it was before the option existed."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def as_float32(value: Any, _cast: Optional[Dict[int, Tensor]] = None) -> Any:
    """``value`` with every reduced-precision floating tensor (in lists, tuples and dicts too) cast to float32; a
    tensor found twice (``last_hidden_state`` is ``hidden_states[-1]``) is cast once and stays one tensor.

    s3prl's featurizer and downstream models run outside the upstream's autocast with float32 weights: a bf16
    feature would meet float32 layer weights in its weighted sum or first Linear (a dtype error, or a silent
    bf16 downstream), so a bf16 upstream returns float32 like an fp32 one."""
    cast: Dict[int, Tensor] = {} if _cast is None else _cast
    if isinstance(value, Tensor):
        if not value.is_floating_point() or value.dtype == torch.float32:
            return value
        if id(value) not in cast:
            cast[id(value)] = value.float()
        return cast[id(value)]
    if isinstance(value, list):
        return [as_float32(item, cast) for item in value]
    if isinstance(value, tuple):
        return tuple(as_float32(item, cast) for item in value)
    if isinstance(value, dict):
        return {key: as_float32(item, cast) for key, item in value.items()}
    return value


def read_options(model_config: Union[None, str, Path, Mapping[str, Any]], name: str) -> UpstreamOptions:
    if model_config is None:
        return UpstreamOptions()
    source = "model_config"
    if isinstance(model_config, (str, Path)):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: upstream config (-g / model_config) {path} does not exist")
        source = str(path)
        with path.open() as file:
            model_config = yaml.safe_load(file) or {}
    return validated(UpstreamOptions, model_config, f"{name}: invalid upstream options in {source}")


OptionsT = TypeVar("OptionsT", bound=UpstreamOptions)


def read_options_or_official(
    model_config: Union[None, str, Path, Mapping[str, Any]], name: str, options_class: Type[OptionsT],
) -> Tuple[OptionsT, Optional[Mapping[str, Any]]]:
    """``-g`` is either our options YAML, or an official training YAML (with a ``distiller`` section; our options
    may then sit in an ``s3prl_distill`` section). Returns (options, official YAML or None)."""
    if model_config is None:
        return options_class(), None
    source = "model_config"
    data = model_config
    if isinstance(model_config, (str, Path)):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: config (-g / model_config) {path} does not exist")
        source = str(path)
        data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{name}: {source} must be a YAML mapping")
    official = data if "distiller" in data else None
    options = data.get("s3prl_distill", {}) if official is not None else data
    return validated(options_class, options, f"{name}: invalid options in {source}"), official


def resolve_local_checkpoint(ckpt: Optional[Union[str, Path]], name: str) -> str:
    if ckpt is None or str(ckpt) == "":
        raise ValueError(f"{name} needs a checkpoint path: pass it with -k (run_downstream.py) or ckpt=")
    path = Path(ckpt).expanduser()
    if is_huggingface_directory(path):  # a transformers directory: the expert reads it
        return str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: checkpoint {path} does not exist" + ("" if not path.exists() else
                                " as a file (a directory must be a transformers one, with config.json)"))
    return str(path)


def resolve_checkpoint(ckpt: Union[str, Path], refresh: bool, name: str) -> str:
    """A local path as is, or a URL downloaded into s3prl's cache (``~/.cache/s3prl/download``)."""
    text = str(ckpt)
    if "://" not in text:
        return resolve_local_checkpoint(text, name)
    from s3prl.util.download import _urls_to_filepaths

    try:
        return _urls_to_filepaths(text, refresh=refresh)
    except Exception as error:
        raise RuntimeError(
            f"{name}: could not download {text} ({type(error).__name__}: {error}). "
            "Download the file where a network is available and pass its path with -k."
        ) from None


def run_student(model: nn.Module, waveforms: Tensor, lengths: Optional[Tensor]) -> Tuple[Any, List[Tensor]]:
    """Run our ``StudentModel`` on a padded batch; returns its output and the hidden states every student upstream
    starts from: [front-end output (transformer input), each transformer layer]."""
    out = model(waveforms, lengths)
    return out, [out.features, *out.layer_outputs]


def load_weights(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """Strict load whose failure names the file and the mismatching keys or shapes."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not match the model its config describes "
            f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})"
        )


def check_feature_key(key: str, keys: Sequence[str], name: str) -> None:
    if key not in keys:
        raise MissingFeatureError(f"{name} has no feature {key!r}; available: {', '.join(keys)}")


def stackable(states: List[Tensor]) -> bool:
    return all(state.shape == states[0].shape for state in states)


def as_pad_mask(padding_mask: Optional[Tensor], like: Tensor) -> Tensor:
    """s3prl's ``pad_mask``: float, 1 on valid frames."""
    if padding_mask is None:
        return torch.ones(like.shape[:2], device=like.device)
    return (~padding_mask).float()


OutputDict = Dict[str, Any]

# What a backbone-only student upstream returns (deep-thin / shallow-wide, DPHuBERT / SKILL).
STUDENT_FEATURE_KEYS = ("hidden_states", "last_hidden_state", "pad_mask")


def load_backbone(config: StudentConfig, student_state: Mapping[str, Tensor], path: str) -> StudentModel:
    """The student without its training heads (they give no features and would count in the parameters), with the
    backbone's weights from ``student_state`` loaded strictly."""
    model = StudentModel(config.model_copy(update={"prediction_head": None, "codeword_head": None,
                                                   "mask_embedding": False}))
    load_weights(model, {key: value for key, value in student_state.items() if not key.startswith(HEAD_PREFIXES)},
                 path)
    return model


def student_outputs(out: Any, hidden_states: List[Tensor]) -> OutputDict:
    """The :data:`STUDENT_FEATURE_KEYS` outputs of a student forward."""
    return {
        "hidden_states": hidden_states,
        "last_hidden_state": hidden_states[-1],
        "pad_mask": as_pad_mask(out.padding_mask, out.features),
    }


def head_outputs_on_demand(heads: Sequence[nn.Module], layer_outputs: Sequence[Tensor],
                           frames: Optional[int] = None) -> Callable[[int], Tensor]:
    """``head_output(i)``: head ``i`` on layer output ``i`` (cut to ``frames``), run on first use and kept, so the
    keys of :class:`LazyOutputs` that read the same head share one computation and the others run none."""
    computed: Dict[int, Tensor] = {}

    def head_output(index: int) -> Tensor:
        if index not in computed:
            output = heads[index](layer_outputs[index])
            computed[index] = output if frames is None else output[:, :frames]
        return computed[index]

    return head_output


class LazyOutputs(Mapping[str, Any]):
    """An upstream's outputs, each computed on first access and kept.

    s3prl's featurizer reads one key (``features.get(selection)``), so an output nobody selects costs nothing: the
    FitHuBERT upstream, for instance, runs its 12 hint heads only for ``-s head_outputs``. Entries are computed under
    the grad mode of the forward that made them, since s3prl reads them after leaving its ``no_grad`` block.
    """

    def __init__(self, compute: Mapping[str, Callable[[], Any]]) -> None:
        self._compute = dict(compute)
        self._values: Dict[str, Any] = {}
        self._grad_enabled = torch.is_grad_enabled()

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            make = self._compute[key]  # KeyError for an unknown key, as a dict would
            with torch.set_grad_enabled(self._grad_enabled):
                self._values[key] = make()
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._compute)

    def __len__(self) -> int:
        return len(self._compute)

    def __repr__(self) -> str:
        return f"LazyOutputs({', '.join(self._compute)}; computed: {', '.join(self._values) or 'none'})"
