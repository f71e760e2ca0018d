"""The shared body of our methods' ``pretrain_expert.py`` files: our teacher/student/loss code
(:class:`DistillationTask`) behind the interface s3prl's ``run_pretrain.py`` drives, so s3prl's own loop trains the
same thing as ``s3prl-distill pretrain``. s3prl imports those files as ``pretrain.<method>.pretrain_expert``;
everything here uses absolute imports.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch
from torch import nn

from s3prl_distill.errors import validated
from s3prl_distill.losses import combine
from s3prl_distill.pretrain.config import DataConfig, ModelSections, PretrainConfig
from s3prl_distill.pretrain.config_files import read_config
from s3prl_distill.pretrain.follow_teacher import fit_to_teacher, following_summary
from s3prl_distill.pretrain.loader import build_data
from s3prl_distill.pretrain.task import DistillationTask
from s3prl_distill.pretrain.teacher_cache import TeacherCache

logger = logging.getLogger(__name__)



def _model_sections(config: Mapping[str, Any], source: str) -> ModelSections:
    """The teacher/student/student_init/method sections of ``-g``: a model config, or a whole pretrain config (then
    validated whole, and its runner/optimizer/scheduler/data sections left to s3prl's ``-c`` config)."""
    extra = sorted(set(config) - set(ModelSections.model_fields))
    if extra and set(extra) <= set(PretrainConfig.model_fields):
        validated(PretrainConfig, config, f"invalid {source}")
        logger.info("%s: sections %s are ignored here; s3prl's runner config (-c) sets them", source, ", ".join(extra))
        config = {key: value for key, value in config.items() if key in ModelSections.model_fields}
    return validated(ModelSections, config, f"invalid {source}")


class S3prlPretrainExpert(nn.Module):
    """The interface s3prl's pretrain runner asserts: ``device``, ``forward``, ``load_model``,
    ``add_state_to_save``, ``on_before_zero_grad``, ``get_train_dataloader`` (+ ``log_records``).

    Each method folder's ``pretrain_expert.py`` subclasses this as ``UpstreamPretrainExpert``."""

    def __init__(
        self, datarc: Mapping[str, Any], upstream_config: Union[str, Mapping[str, Any]], device: str = "cuda",
        multi_gpu: bool = False, **kwargs: Any,
    ) -> None:
        super().__init__()
        if multi_gpu:
            raise ValueError("--multi_gpu (DataParallel) is not supported; use s3prl-distill pretrain under torchrun")
        if isinstance(upstream_config, (str, Path)):  # an overlay's extends base merged in, as s3prl-distill reads it
            self.upstream_config = read_config(upstream_config)
            source = str(upstream_config)
        else:  # a resumed s3prl run hands back the dict saved as Upstream_Config
            self.upstream_config = dict(upstream_config)
            source = "Upstream_Config"
        written = _model_sections(self.upstream_config, source)
        sections = fit_to_teacher(written)
        if sections is not written:  # saved as Upstream_Config (s3prl's -e reads it): the student as it was trained
            logger.info("%s", following_summary(written, sections))
            self.upstream_config.update(sections.model_dump(include={"follow_teacher", "method"}),
                                        student=sections.student.to_dict())
        self.datarc = validated(DataConfig, dict(datarc), "invalid pretrain_expert.datarc")
        self.device = torch.device(device)
        cache = TeacherCache(Path(self.datarc.teacher_cache)) if self.datarc.teacher_cache else None
        # The seed is what run_pretrain.py's --seed set (it draws masking distillation's masks).
        self.task = DistillationTask(sections.teacher, sections.student, sections.student_init, sections.method,
                                     self.device, cache, seed=torch.initial_seed())
        self.teacher_config = sections.teacher
        self.model = self.task.student  # what s3prl's runner optimises

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        # The seed is what run_pretrain.py's --seed set.
        items, _, loader = build_data(self.datarc, torch.initial_seed(), pin_memory=self.device.type == "cuda")
        if self.task.cache is not None:
            self.task.check_cache(self.teacher_config, self.datarc, items)
        self.task.prepare_front_end(items)  # after load_model: a resumed run keeps its statistics
        return loader

    def forward(self, data, records=None, global_step: int = 1, log_step: int = 1000, **kwargs: Any):
        waveforms, lengths, *cached = (tensor.to(self.device, non_blocking=True) for tensor in data)
        # s3prl counts the update being computed from 1; our step is the number of updates already done.
        terms = self.task.losses(self.task.student, waveforms, lengths, global_step - 1, *cached)
        loss = combine(terms)
        records = defaultdict(list) if records is None else records
        if global_step % log_step == 0:
            for name, term in terms.items():
                for layer, value in zip(term.layers or range(len(term.sums)), term.per_target().tolist()):
                    records[f"{name}/layer{layer}"].append(value)
        return loss, records

    def load_model(self, init_ckpt: Mapping[str, Any]) -> None:
        self.task.student.load_state_dict(self.task.student_state(init_ckpt))

    def add_state_to_save(self, all_states: Dict[str, Any]) -> Dict[str, Any]:
        exported = self.task.export()
        # "Config" is s3prl's runner config (its resume reads it); a distiller checkpoint adds Config["distiller"].
        all_states["Config"] = {**all_states.get("Config", {}), **exported.pop("Config", {})}
        all_states.update(exported)
        all_states["Upstream_Config"] = self.upstream_config
        return all_states

    def on_before_zero_grad(self) -> None:
        pass

    def log_records(self, records, logger, prefix: str, global_step: int, **kwargs: Any) -> None:
        for key, values in records.items():
            if values:
                logger.add_scalar(f"{prefix}{key}", sum(values) / len(values), global_step=global_step)
