"""Every student checkpoint format we read, recognised in one place.

:func:`read_student` turns a loaded checkpoint into our :class:`StudentConfig` and state dict, with the method
family it came from:

- ours (``formats.native``): the ``Family`` it was saved with;
- s3prl's distiller format (``formats.s3prl_distiller``): ``distilhubert``;
- FitHuBERT's official Lightning release plus its training YAML (``formats.fithubert``): ``fithubert``;
- ARMHuBERT / MaskHuBERT / STaRHuBERT's official Lightning releases plus their training YAML
  (``formats.armhubert``): ``armhubert`` (a layer reuses an attention map), ``maskhubert``, ``starhubert``;
- DPHuBERT / DPWavLM's official ``{config, state_dict}`` (``formats.dphubert``): ``dphubert``.

A transformers directory (HuBERT, or our own type) is not a loaded checkpoint: ``formats.huggingface.read_huggingface_student`` reads
it into the same :class:`StudentCheckpoint`.

Callers say which families they take, so a checkpoint of another family is refused in the same words as one of no
known format: what the file is, and what was wanted instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from ..checkpoint import CheckpointError
from ..model.config import StudentConfig
from . import armhubert
from .dphubert import dphubert_state_dict, dphubert_student_config, is_dphubert_checkpoint
from .fithubert import import_lightning
from .native import describe_checkpoint, is_native_student
from .s3prl_distiller import import_distiller, is_distiller_checkpoint

# What read_student takes when its caller does not narrow it down.
ANY_STUDENT = ("a student checkpoint: ours (s3prl-distill pretrain / prune), s3prl's distiller format, the official "
               "Lightning releases of FitHuBERT, ARMHuBERT, MaskHuBERT or STaRHuBERT (with the training YAML) or "
               "DPHuBERT's official {config, state_dict}")


@dataclass(frozen=True)
class StudentCheckpoint:
    """A student read from any supported format: config, weights (our key names), family and where it came from."""

    config: StudentConfig
    state: Dict[str, Tensor]
    family: str  # the method family: a native checkpoint's Family, else the family of the official format
    format: str  # "native", "s3prl_distiller", "<family>_lightning", "dphubert" or "transformers"
    description: str  # describe_checkpoint's words for the file, for the caller's own refusals
    # The upstream entry (without _local) recorded by our transformers export; None for every other format.
    upstream: Optional[str] = None


def _native(checkpoint: Mapping[str, Any], source: str, training_yaml: Any) -> Tuple[StudentConfig, Dict]:
    try:
        config = StudentConfig.from_dict(checkpoint["StudentConfig"], f"{source} (StudentConfig)")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return config, checkpoint["Student"]


def _distiller(checkpoint: Mapping[str, Any], source: str, training_yaml: Any) -> Tuple[StudentConfig, Dict]:
    try:
        return import_distiller(checkpoint)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None


def _lightning_reader(model: str, importer: Callable[[Mapping[str, Any], Mapping[str, Any]], Tuple]) -> "Reader":
    """The reader of an official Lightning release of ``model``, which needs its training YAML."""

    def read(checkpoint: Mapping[str, Any], source: str, training_yaml: Any) -> Tuple[StudentConfig, Dict]:
        if training_yaml is None:
            raise CheckpointError(
                f"{source} is an official {model} Lightning checkpoint: also pass its training YAML "
                "(the file with the 'distiller' section) with -g / model_config"
            )
        try:
            return importer(checkpoint, training_yaml)
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from None

    return read


def _dphubert(checkpoint: Mapping[str, Any], source: str, training_yaml: Any) -> Tuple[StudentConfig, Dict]:
    try:
        config = dphubert_student_config(checkpoint["config"], source)
    except ValueError as error:  # its messages name the source already
        raise CheckpointError(str(error)) from None
    try:
        return config, dphubert_state_dict(checkpoint["state_dict"], config)
    except ValueError as error:  # a key no rule covers
        raise CheckpointError(f"{source}: {error}") from None


Reader = Callable[[Mapping[str, Any], str, Any], Tuple[StudentConfig, Dict]]

# (format, detector, family: a name, a function of the checkpoint, or None for the checkpoint's own Family,
# reader); formats are mutually exclusive.
FORMATS: Tuple[Tuple[str, Callable[[Any], bool], Union[None, str, Callable[[Any], str]], Reader], ...] = (
    ("native", is_native_student, None, _native),
    ("s3prl_distiller", is_distiller_checkpoint, "distilhubert", _distiller),
    ("fithubert_lightning", armhubert.is_fithubert_lightning, "fithubert",
     _lightning_reader("FitHuBERT", import_lightning)),
    ("armhubert_lightning", armhubert.is_armhubert_lightning, armhubert.armhubert_family,
     _lightning_reader("ARMHuBERT / MaskHuBERT",
                       lambda checkpoint, yaml: armhubert.import_lightning(checkpoint, yaml, star=False))),
    ("starhubert_lightning", armhubert.is_starhubert_lightning, "starhubert",
     _lightning_reader("STaRHuBERT", lambda checkpoint, yaml: armhubert.import_lightning(checkpoint, yaml, star=True))),
    ("dphubert", is_dphubert_checkpoint, "dphubert", _dphubert),
)


def read_student(checkpoint: Any, source: str, model_config: Optional[Mapping[str, Any]] = None,
                 families: Optional[Collection[str]] = None, wanted: Optional[str] = None) -> StudentCheckpoint:
    """The student in a loaded ``checkpoint`` (read from ``source``, named in every error).

    ``model_config``: the official training YAML of a Lightning release (FitHuBERT, ARMHuBERT, MaskHuBERT,
    STaRHuBERT: its ``distiller`` section configures the model, the release holds weights only). ``families``: the families the caller takes (None: any); a checkpoint of
    another family, or of no format we read, raises :class:`CheckpointError` saying what it is and ``wanted``.
    """
    description = describe_checkpoint(checkpoint)
    for name, detect, family, read in FORMATS:
        if not detect(checkpoint):
            continue
        found = family(checkpoint) if callable(family) else family or str(checkpoint.get("Family"))
        if families is not None and found not in families:
            break
        config, state = read(checkpoint, source, model_config)
        return StudentCheckpoint(config, dict(state), found, name, description)
    raise CheckpointError(f"{source} is {description}; {wanted or 'expected ' + ANY_STUDENT}")
