"""DPHuBERT / SKILL (joint distillation and pruning) for s3prl's own ``run_pretrain.py`` (after
``s3prl-distill link-pretrain S3PRL_CHECKOUT``):

    python3 run_pretrain.py -u dphubert -g pretrain/dphubert/config.yaml -c pretrain/dphubert/config_runner.yaml -n NAME

(``-g`` takes the model sections of our config; a SKILL run uses ``-u dphubert`` with ``config_skill.yaml``).
s3prl's runner builds one optimizer over ``model``: here that is the student's weights and heads only. What it
cannot express, this expert owns: the gates' ``log_alpha`` (their own learning rate, no weight decay) and the
Lagrangian λ1, λ2 (gradient ascent) go to a second AdamW, stepped right after s3prl's optimizer by a post-step
hook, with the learning-rate factor s3prl's schedule gave that step. An update s3prl skips (fp16 overflow) is
skipped here too, because the hook does not run. The gate optimizer and λ are saved in s3prl's checkpoints, so
``run_pretrain.py -e`` resumes them.

s3prl's fp16 GradScaler unscales only its own optimizer's gradients: the expert divides the gates' and λ's by the
gradient s3prl's backward fed into the loss (the loss scale, over the accumulation steps). What s3prl's loop imposes
stays: its gradient clipping covers only ``model``.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from s3prl_distill.model.student import GATE_SUFFIX
from s3prl_distill.pretrain.s3prl_expert import S3prlPretrainExpert


class StudentWeights(nn.Module):
    """The student's parameters that s3prl's optimizer trains (all but the gates), registered under their own
    names with ``.`` spelt ``__``; the tensors are the student's own, not copies."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        for name, parameter in student.named_parameters():
            if parameter.requires_grad and not name.endswith(GATE_SUFFIX):
                self.register_parameter(name.replace(".", "__"), parameter)


class UpstreamPretrainExpert(S3prlPretrainExpert):
    """What s3prl's runner looks up by name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        method = self.task.method
        if not hasattr(method, "penalty"):
            raise ValueError(f"pretrain/dphubert's expert runs the dphubert and skill methods, not "
                             f"{self.upstream_config['method'].get('name')!r}")
        self.student = self.task.student  # registered, so s3prl's .to() and .train() reach it
        self.model = StudentWeights(self.student)  # what s3prl's optimizer holds
        self._anchor = next(iter(self.model.parameters()))
        # The recipe's own groups after the two of the weights: the gates and λ (none once the student is pruned).
        groups = (method.parameter_groups(self.student, 0.0) or [])[2:]
        self.gate_lrs = [group["lr"] for group in groups]  # before s3prl's schedule factor
        self.gate_optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8) if groups else None
        self._loss_gradient: Optional[Tensor] = None  # what s3prl's backward fed into the loss (its fp16 scale)
        if self.gate_optimizer is not None:
            expert = weakref.ref(self)  # the global hook must not keep the expert alive

            def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                alive = expert()
                if alive is not None:
                    alive._after_step(optimizer)

            weakref.finalize(self, register_optimizer_step_post_hook(after_step).remove)

    def forward(self, data, records=None, global_step: int = 1, log_step: int = 1000, **kwargs: Any):
        loss, records = super().forward(data, records, global_step, log_step, **kwargs)
        if self.gate_optimizer is not None and loss.requires_grad:
            loss.register_hook(self._record_loss_gradient)
        return loss, records

    def _record_loss_gradient(self, gradient: Tensor) -> None:
        self._loss_gradient = gradient.detach()

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After s3prl's optimizer stepped: step the gates and λ with the factor its schedule applied, on gradients
        freed of the loss scale s3prl's fp16 GradScaler put on them (it unscales only its own optimizer's)."""
        if optimizer is self.gate_optimizer or not any(p is self._anchor for group in optimizer.param_groups
                                                       for p in group["params"]):
            return
        if self._loss_gradient is not None:
            gradients = [p.grad for group in self.gate_optimizer.param_groups for p in group["params"]
                         if p.grad is not None]
            torch._foreach_div_(gradients, self._loss_gradient)
        factor = schedule_factor(optimizer)
        for group, lr in zip(self.gate_optimizer.param_groups, self.gate_lrs):
            group["lr"] = lr * factor
        self.gate_optimizer.step()

    def on_before_zero_grad(self) -> None:
        # s3prl zeroes only its own optimizer's gradients, after every update (stepped or skipped).
        if self.gate_optimizer is not None:
            self.gate_optimizer.zero_grad(set_to_none=True)

    def load_model(self, init_ckpt: Mapping[str, Any]) -> None:
        super().load_model(init_ckpt)
        self.task.method.load_state_dict(init_ckpt.get("MethodState") or {})
        if self.gate_optimizer is not None and init_ckpt.get("GateOptimizer") is not None:
            self.gate_optimizer.load_state_dict(init_ckpt["GateOptimizer"])

    def add_state_to_save(self, all_states: Dict[str, Any]) -> Dict[str, Any]:
        all_states = super().add_state_to_save(all_states)
        all_states["MethodState"] = self.task.method.state_dict()
        if self.gate_optimizer is not None:
            all_states["GateOptimizer"] = self.gate_optimizer.state_dict()
        return all_states


def schedule_factor(optimizer: torch.optim.Optimizer) -> float:
    """The learning-rate factor the optimizer's schedule applied in its last step: s3prl's Lamb-based optimizers
    schedule inside (``get_lr``), a torch scheduler rescales ``lr`` from ``initial_lr``; none: 1."""
    group = optimizer.param_groups[0]
    if hasattr(optimizer, "get_lr"):
        scheduled = optimizer.get_lr()
        return float(scheduled[0]) / group["lr"] if scheduled else 1.0
    return float(group["lr"]) / group.get("initial_lr", group["lr"])
