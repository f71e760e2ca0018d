"""The pretraining (distillation) config: one YAML with runner, optimizer, scheduler, teacher, student, student_init,
method and data sections. Unknown keys are errors; ``-o`` overrides use s3prl's syntax
(``config.runner.total_steps=10,,config.optimizer.lr=1e-4``), with values parsed as YAML (never ``eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from pydantic import Field, PlainValidator, SerializeAsAny, field_validator, model_validator

from s3prl_distill.errors import validated
from s3prl_distill.model.config import StrictModel, StudentConfig
from s3prl_distill.options import default_num_workers

from .config_files import apply_overrides, config_paths, read_configs
from .methods import check_compatible, validate_method_section
from .optim import SCHEDULES as S3PRL_SCHEDULES


class RunnerConfig(StrictModel):
    total_steps: int = 200000
    log_step: int = 50
    save_step: int = 5000
    keep_last: int = 3  # states-<step>.ckpt files kept; older ones are deleted after each save
    gradient_accumulate_steps: int = 1
    # Max global norm of the gradients of every trained parameter (null: no clipping, as FitHuBERT's Lightning run).
    gradient_clipping: Optional[float] = 5.0
    # Autocast precision: bf16 on CUDA and on CPU (fast where the CPU has AVX512-BF16 / AMX); fp16 (with loss
    # scaling) on CUDA only, elsewhere it falls back to fp32 with a warning.
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    # torch.compile the student, forward and backward (the teacher stays eager); the first steps pay for compiling.
    compile: bool = False
    seed: int = Field(1337, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "RunnerConfig":
        for name in ("total_steps", "log_step", "save_step", "keep_last", "gradient_accumulate_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.gradient_clipping is not None and self.gradient_clipping <= 0:
            raise ValueError("gradient_clipping must be > 0 (or null: no clipping)")
        return self


class OptimizerConfig(StrictModel):
    """The optimizer. Weight decay applies to every parameter except biases (as s3prl's AdamW_with_schedule groups
    them); ``weight_decay`` is the value of the decayed group.

    * ``AdamW``: torch's (fused) AdamW -- decoupled weight decay ``p *= 1 - lr * wd``, bias-corrected ``eps`` -- with
      the ``scheduler`` section applied as a LambdaLR over the run's global steps. DPHuBERT trains with it.
    * ``AdamW_with_schedule``: s3prl's optimizer of that name (its Lamb in Adam mode with bias correction; see
      ``pretrain/optim.py``), which DistilHuBERT, FitHuBERT and Wang et al. train with: ``eps`` on the uncorrected
      ``sqrt(v)``, weight decay inside the update and scaled by the bias-corrected step, and the ``scheduler`` section
      (``linear_warmup_decay`` or ``constant``) applied by the optimizer itself at each parameter's own step count.
      Same name as in s3prl's ``config_runner.yaml``, so a ported recipe reads the same.
    """

    name: Literal["AdamW", "AdamW_with_schedule"] = "AdamW"
    lr: float = Field(2.0e-4, gt=0)
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1.0e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, value: Tuple[float, float]) -> Tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class SchedulerConfig(StrictModel):
    """Linear warm-up from 0 to the optimizer's lr over ``W = runner.total_steps * warmup_proportion`` updates, then
    linear decay to 0 at ``runner.total_steps`` (s3prl's ``warmup_linear``, DPHuBERT's ``LinearDecayLRScheduler``:
    update ``t``, counted from 1, gets ``t / W``, then ``(T - t) / (T - W)``); or ``constant``. With
    ``optimizer.name: AdamW_with_schedule`` the optimizer applies it per parameter (see ``OPTIMIZER_SCHEDULES``)."""

    name: Literal["linear_warmup_decay", "constant"] = "linear_warmup_decay"
    warmup_proportion: float = 0.07

    @field_validator("warmup_proportion")
    @classmethod
    def _check_proportion(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value


# The scheduler.name values each optimizer.name can follow: AdamW through a LambdaLR, AdamW_with_schedule by itself
# (only what pretrain/optim.py implements). Checked when the config loads, before anything heavy is built.
OPTIMIZER_SCHEDULES: Dict[str, Tuple[str, ...]] = {
    "AdamW": ("linear_warmup_decay", "constant"),
    "AdamW_with_schedule": S3PRL_SCHEDULES,
}


class TeacherConfig(StrictModel):
    """Any s3prl upstream: ``getattr(s3prl.hub, name)(ckpt=..., model_config=..., refresh=...)``."""

    name: str
    ckpt: Optional[str] = None
    upstream_config: Optional[str] = None  # passed as the upstream's model_config (what -g gives it in s3prl)
    refresh: bool = False

    def describe(self) -> str:
        """``teacher 'NAME' (CKPT)``, as messages name it."""
        return f"teacher {self.name!r}" + (f" ({self.ckpt})" if self.ckpt else "")


class StudentInitConfig(StrictModel):
    """What the student copies from the teacher before training (shapes must match). DistilHuBERT: all of it.
    ``whole``: every backbone weight (DPHuBERT / SKILL: the student is the teacher plus pruning gates)."""

    whole: bool = False
    feature_extractor: bool = False
    feature_projection: bool = False
    pos_conv: bool = False
    layers: int = Field(0, ge=0)  # the first N transformer layers
    # A student checkpoint of ours with this run's exact student config (e.g. from s3prl-distill prune), loaded after
    # anything copied from the teacher.
    checkpoint: Optional[str] = None


class FollowTeacherConfig(StrictModel):
    """What the student's shape takes from the run's teacher, whichever it is (its architecture read from
    ``teacher.ckpt``; see :mod:`.follow_teacher`). The student section's values are then those for the teacher the
    recipe was written for (HuBERT Base in the shipped configs), replaced when the run starts. The heads' output
    widths (``prediction_head.out_dim``, ``codeword_head.out_dim``) always follow the teacher."""

    cnn: bool = False  # student.feature_extractor: conv_layers, norm, bias
    # student.encoder: embed_dim, ffn_dim, num_heads, head_dim, layer_norm_first, activation, the positional
    # convolution and relative_position; prediction_head.inner_dim
    width: bool = False
    depth: bool = False  # student.encoder.num_layers: as many layers as the teacher
    # The target layers (prediction_head.target_layers / target_groups, and the method's own layer lists) are
    # written for a teacher of this many layers: layer l of them becomes ceil(l * L / layers_of) for the teacher's
    # L layers (0 stays 0); null: they are used as written.
    layers_of: Optional[int] = Field(None, ge=1)


class DataConfig(StrictModel):
    """s3prl ``len_for_bucket`` CSVs (``<bucket_dir>/<set>.csv``: ``file_path`` relative to ``root``, ``length``)."""

    root: str
    bucket_dir: str
    sets: List[str]
    # Global batch: all ranks and one accumulation micro-batch together (s3prl's name for it).
    train_batch_size: int = 24
    max_length: Optional[int] = 250000  # random crop, in samples
    # Unset: derived from this machine's usable cores (see default_num_workers), so that a config written on a large
    # machine does not start more loader processes than a small one has cores.
    num_workers: int = Field(default_factory=default_num_workers)
    check_files: bool = True  # read every file's header before training starts
    on_bad_file: Literal["stop", "skip"] = "stop"
    # A teacher-target cache (s3prl-distill cache-teacher): targets are read from it instead of running the teacher,
    # and each epoch's crop is one of its fixed windows. It must match this run's teacher, layers and data.
    teacher_cache: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if not self.sets:
            raise ValueError("sets must name at least one CSV")
        if self.train_batch_size < 1 or self.num_workers < 0 or (self.max_length is not None and self.max_length < 400):
            raise ValueError("train_batch_size >= 1, num_workers >= 0 and max_length >= 400 samples are required")
        return self


# The ``method`` section: the config class registered for its ``name`` (pretrain/methods.py) validates it, so a method
# registered at run time needs no edit here; dumped with that class's fields.
MethodConfig = Annotated[SerializeAsAny[StrictModel], PlainValidator(validate_method_section)]


class _MethodChecksStudent(StrictModel):
    """The method's check of the student, when the config loads (before any teacher is built)."""

    @model_validator(mode="after")
    def _check_method_student(self) -> "_MethodChecksStudent":
        check_compatible(self.method, self.student)
        return self


class ModelSections(_MethodChecksStudent):
    """The model part of a run (what s3prl's runner reads from ``config_model.yaml``)."""

    teacher: TeacherConfig
    student: StudentConfig
    student_init: StudentInitConfig = Field(default_factory=StudentInitConfig)
    follow_teacher: Optional[FollowTeacherConfig] = None
    method: MethodConfig


class PretrainConfig(_MethodChecksStudent):
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    teacher: TeacherConfig
    student: StudentConfig
    student_init: StudentInitConfig = Field(default_factory=StudentInitConfig)
    follow_teacher: Optional[FollowTeacherConfig] = None
    method: MethodConfig
    data: DataConfig

    @model_validator(mode="after")
    def _check_schedule(self) -> "PretrainConfig":
        supported = OPTIMIZER_SCHEDULES[self.optimizer.name]
        if self.scheduler.name not in supported:
            raise ValueError(f"scheduler.name={self.scheduler.name!r} cannot be used with optimizer.name="
                             f"{self.optimizer.name!r}, which supports {', '.join(supported)}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        data = self.model_dump()
        data["student"] = self.student.to_dict()
        return data


def validate_config(data: Any, source: str) -> PretrainConfig:
    return validated(PretrainConfig, data, f"invalid pretrain config {source}")


def load_config(path: Union[str, Path, Sequence[Union[str, Path]]], overrides: Optional[str] = None) -> PretrainConfig:
    """One YAML, or several deep-merged in order (e.g. a run config, then a layer-similarity groups snippet); each
    file's ``extends`` base merged under it (see :mod:`.config_files`)."""
    paths = config_paths(path)
    return validate_config(apply_overrides(read_configs(paths), overrides), " + ".join(map(str, paths)))
