"""A student defined relative to its teacher, and the check that a student fits its teacher, both from the teacher's
checkpoint alone (no model is built) before anything heavy starts.

DistilHuBERT's student *is* its teacher's CNN and width with fewer layers; FitHuBERT's and Wang et al.'s thin students
have one layer per teacher layer; DPHuBERT's starts as the whole teacher. A run config says so with
``follow_teacher`` (:class:`~.config.FollowTeacherConfig`): the student section holds the values for the teacher the
recipe was written for, and :func:`fit_to_teacher` replaces them by the run's teacher's, rescaling the target layers
to its depth. Then, whether or not anything followed, every place where the student must match the teacher (the
parts ``student_init`` copies, the heads' widths, the target layers, the codebook size) is compared with it, and all
differences are reported in one error naming each key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from s3prl_distill.checkpoint import CheckpointError
from s3prl_distill.errors import ConfigError, validated
from s3prl_distill.formats.architecture import Architecture, read_architecture
from s3prl_distill.model.config import StudentConfig, format_conv_layers

from .config import FollowTeacherConfig, ModelSections, PretrainConfig, TeacherConfig
from .methods import method_spec

logger = logging.getLogger(__name__)

Sections = TypeVar("Sections", PretrainConfig, ModelSections)

# What each follow_teacher switch takes from the teacher's backbone config (same keys on both sides).
CNN_FIELDS = ("conv_layers", "norm", "bias")
WIDTH_FIELDS = ("embed_dim", "ffn_dim", "num_heads", "head_dim", "layer_norm_first", "activation", "pos_conv_kernel",
                "pos_conv_groups", "pos_conv_weight_norm", "relative_position")


def teacher_architecture(teacher: TeacherConfig, required: bool = False) -> Optional[Architecture]:
    """The teacher's architecture read from ``teacher.ckpt``; None when it cannot be read there (no local file: a hub
    entry that fetches its own weights; or a format we do not read), unless ``required``: then an error saying
    why."""
    path = Path(teacher.ckpt) if teacher.ckpt else None
    try:
        if path is None or not path.is_file():
            raise CheckpointError(f"{teacher.describe()} has no local checkpoint file to read its architecture from")
        return read_architecture(path, what=f"teacher {teacher.name!r} checkpoint")
    except CheckpointError as error:
        if required:
            raise ConfigError(f"follow_teacher: {error}; set the student's shape explicitly and drop follow_teacher")\
                from None
        logger.debug("not checking the student against the teacher before it loads: %s", error)
        return None


def layer_scale(written_for: int, teacher_layers: int) -> Callable[[List[int]], List[int]]:
    """Maps layer lists written for a ``written_for``-layer teacher to one of ``teacher_layers``: l -> ceil(l * L /
    written_for), 0 stays 0, repeats dropped (so 1..12 becomes 1..L, and 4, 8, 12 becomes 2, 3, 4 for L = 4)."""

    def scale(layers: List[int]) -> List[int]:
        scaled: List[int] = []
        for layer in layers:
            value = -(-layer * teacher_layers // written_for)
            if value not in scaled:
                scaled.append(value)
        return scaled

    return scale


def _followed_student(config: Sections, follow: FollowTeacherConfig, teacher: Architecture,
                      scale: Optional[Callable[[List[int]], List[int]]]) -> Dict[str, Any]:
    student = config.student.to_dict()
    theirs = teacher.backbone.to_dict()
    if follow.cnn:
        if config.student.fbank_front_end is not None:
            raise ConfigError("follow_teacher.cnn: the student has the fbank front end, not a CNN; set "
                              "follow_teacher.cnn: false")
        if "feature_extractor" not in theirs:
            raise ConfigError(f"follow_teacher.cnn: {config.teacher.describe()} has no CNN to follow")
        for key in CNN_FIELDS:
            student["feature_extractor"][key] = theirs["feature_extractor"][key]
    if follow.width:
        for key in WIDTH_FIELDS:
            student["encoder"][key] = theirs["encoder"][key]
        student["encoder"]["kept_heads"] = theirs["encoder"]["kept_heads"]
        head = student.get("prediction_head")
        if head is not None and head.get("inner_dim") is not None:
            head["inner_dim"] = teacher.width
    if follow.depth:
        student["encoder"]["num_layers"] = teacher.num_layers
        reuse = student["encoder"].get("attention_reuse")
        if reuse:  # ARMHuBERT's per-layer pattern (every second layer reuses): repeated, or cut, to the new depth
            student["encoder"]["attention_reuse"] = [reuse[i % len(reuse)] for i in range(teacher.num_layers)]
    head = student.get("prediction_head")
    if head is not None:
        head["out_dim"] = teacher.width
        if scale is not None:
            if head["type"] == "projection":
                head["target_groups"] = _scaled_groups(head["target_groups"], scale, follow.layers_of, teacher)
            else:
                head["target_layers"] = scale(head["target_layers"])
    codeword = student.get("codeword_head")
    if codeword is not None:
        size = teacher.codewords if codeword["type"] == "logits" else teacher.codeword_dim
        if size is not None:
            codeword["out_dim"] = size
    return student


def _scaled_groups(groups: List[List[int]], scale: Callable[[List[int]], List[int]], written_for: int,
                   teacher: Architecture) -> List[List[int]]:
    scaled = [scale(group) for group in groups]
    flat = [layer for group in scaled for layer in group]
    if len(flat) != len(set(flat)):
        raise ConfigError(
            f"follow_teacher.layers_of: student.prediction_head.target_groups {groups}, written for a {written_for}-"
            f"layer teacher, overlap as {scaled} for this teacher's {teacher.num_layers} layers; list target_groups "
            "for this teacher (for SKILL, s3prl-distill layer-similarity computes them from it)")
    return scaled


def _flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _follow(config: Sections, follow: FollowTeacherConfig, teacher: Architecture) -> Sections:
    scale = layer_scale(follow.layers_of, teacher.num_layers) if follow.layers_of is not None else None
    student = _followed_student(config, follow, teacher, scale)
    method = config.method
    if scale is not None:
        resolved = StudentConfig.from_dict(student, "student as it follows the teacher")
        method = method_spec(method.name).recipe.scale_layers(method, scale, resolved)
    data = {**config.model_dump(), "student": student, "method": method.model_dump(), "follow_teacher": None}
    return validated(type(config), data, f"the student as it follows {config.teacher.describe()}")


def following_summary(written: Sections, followed: Sections) -> str:
    """One line for the log: what following the teacher changed in the student and the method."""
    before = {**_flatten(written.student.to_dict(), "student"), **_flatten(written.method.model_dump(), "method")}
    after = {**_flatten(followed.student.to_dict(), "student"), **_flatten(followed.method.model_dump(), "method")}
    changes = [f"{key} {before.get(key)!r} -> {value!r}" for key, value in after.items() if before.get(key) != value]
    return (f"the student follows {written.teacher.describe()}: "
            + ("; ".join(changes) if changes else "nothing to change (the config is written for this teacher)"))


def teacher_mismatches(config: Sections, teacher: Architecture) -> List[Tuple[str, Any, Any]]:
    """Every (key, the student's value, the teacher's) where the student must match its teacher and does not: the
    parts ``student_init`` copies, the heads' output widths, target layers the teacher has, the codebook size."""
    rows: Dict[str, Tuple[Any, Any]] = {}

    def differ(key: str, ours: Any, theirs: Any) -> None:
        if ours != theirs and key not in rows:
            rows[key] = (ours, theirs)

    student, backbone, init = config.student, teacher.backbone, config.student_init
    head = student.prediction_head
    if head is not None:
        differ("student.prediction_head.out_dim", head.out_dim, teacher.width)
        beyond = [layer for layer in head.target_layers if layer > teacher.num_layers]
        if beyond:
            key = "target_groups" if head.type == "projection" else "target_layers"
            rows[f"student.prediction_head.{key}"] = (beyond, f"only hidden states 0..{teacher.num_layers}")
    codeword = student.codeword_head
    if codeword is not None and getattr(config.method, "codebook_ckpt", None) is None:
        size = teacher.codewords if codeword.type == "logits" else teacher.codeword_dim
        if size is not None:
            differ("student.codeword_head.out_dim", codeword.out_dim, size)
    ours_encoder, their_encoder = student.encoder, backbone.encoder
    cnn = student.fbank_front_end is None and backbone.fbank_front_end is None
    if (init.whole or init.feature_extractor) and cnn:
        for key in CNN_FIELDS:
            ours, theirs = getattr(student.feature_extractor, key), getattr(backbone.feature_extractor, key)
            if key == "conv_layers":
                ours, theirs = format_conv_layers(ours), format_conv_layers(theirs)
            differ(f"student.feature_extractor.{key}", ours, theirs)
    if (init.whole or init.feature_projection) and cnn:
        if "student.feature_extractor.conv_layers" not in rows:  # the projection's input: the CNN's last channels
            differ("student.feature_extractor.conv_layers (the last layer's channels)",
                   student.feature_extractor.conv_layers[-1][0], backbone.feature_extractor.conv_layers[-1][0])
        differ("student.encoder.embed_dim", ours_encoder.embed_dim, their_encoder.embed_dim)
    if init.whole or init.pos_conv:
        for key in ("embed_dim", "pos_conv_kernel", "pos_conv_groups", "pos_conv_weight_norm"):
            differ(f"student.encoder.{key}", getattr(ours_encoder, key), getattr(their_encoder, key))
    copied = ours_encoder.num_layers if init.whole else init.layers
    if copied:
        if copied > their_encoder.num_layers:
            rows["student_init.layers" if not init.whole else "student.encoder.num_layers"] = (
                copied, f"{their_encoder.num_layers} layers")
        count = min(copied, their_encoder.num_layers)
        differ("student.encoder.embed_dim", ours_encoder.embed_dim, their_encoder.embed_dim)
        for key, ours, theirs in (("ffn_dim", ours_encoder.layer_ffn_dims(), their_encoder.layer_ffn_dims()),
                                  ("num_heads", ours_encoder.layer_num_heads(), their_encoder.layer_num_heads())):
            ours, theirs = ours[:count], theirs[:count]
            if ours != theirs:  # shown as the config writes them when every layer has the same value
                rows[f"student.encoder.{key}"] = (ours[0] if len(set(ours)) == 1 else ours,
                                                  theirs[0] if len(set(theirs)) == 1 else theirs)
        if not {"student.encoder.embed_dim", "student.encoder.num_heads"} & set(rows):  # else those explain it
            differ("student.encoder.head_dim (each head's width)",
                   [ours_encoder.layer_head_dim(h) for h in ours_encoder.layer_num_heads()[:count] if h][:1],
                   [their_encoder.layer_head_dim(h) for h in their_encoder.layer_num_heads()[:count] if h][:1])
        differ("student.encoder.relative_position", ours_encoder.relative_position, their_encoder.relative_position)
    if init.whole:
        differ("student.encoder.num_layers", ours_encoder.num_layers, their_encoder.num_layers)
        differ("student.feature_layer_norm", student.feature_layer_norm, backbone.feature_layer_norm)
    return [(key, ours, theirs) for key, (ours, theirs) in rows.items()]


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def fit_to_teacher(config: Sections) -> Sections:
    """``config`` with its student following the teacher where ``follow_teacher`` says so (``follow_teacher`` then
    becomes null: the result is what the run trains, and what a resume reads back), after checking that the student
    fits the teacher; a :class:`ConfigError` lists every key that does not. Reads only the teacher's checkpoint; a
    teacher whose architecture cannot be read there is checked when it is built. ``config`` itself is returned when
    nothing followed; otherwise log :func:`following_summary` once logging is set up."""
    follow = config.follow_teacher
    teacher = teacher_architecture(config.teacher, required=follow is not None)
    if teacher is None:
        return config
    if follow is not None:
        config = _follow(config, follow, teacher)
    problems = teacher_mismatches(config, teacher)
    if problems:
        lines = "\n".join(f"  {key}: {_shown(ours)} here; the teacher: {_shown(theirs)}" for key, ours, theirs in problems)
        raise ConfigError(
            f"the student does not fit {config.teacher.describe()} ({teacher.num_layers} layers, width "
            f"{teacher.width}):\n{lines}\nset these keys to the teacher's values (-o config.KEY=VALUE), or let the "
            "student follow its teacher: follow_teacher: {cnn: true, width: true, depth: ..., layers_of: 12} (see "
            "pretrain/distilhubert/config.yaml and the README's 'Distilling a student')")
    return config
