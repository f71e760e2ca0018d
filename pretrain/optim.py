"""s3prl's ``AdamW_with_schedule`` update, for runs that claim to reproduce s3prl recipes.

s3prl's DistilHuBERT runner (and the FitHuBERT and Wang et al. forks of it) train with ``AdamW_with_schedule``:
s3prl's ``Lamb`` in Adam mode with bias correction and a ``warmup_linear`` schedule. That is not torch's AdamW:

* each parameter has its own step counter ``t`` (1 at its first update) that advances only on steps where the
  parameter has a gradient, and the learning-rate schedule is evaluated at that counter, inside the optimizer;
* the step size is ``lr * sqrt(1 - beta2^t) / (1 - beta1^t) * schedule(t / total_steps)``;
* ``eps`` is added to the *uncorrected* ``sqrt(v)``;
* weight decay is part of the update (``m / (sqrt(v) + eps) + wd * p``), so it is scaled by the full step size,
  bias correction included, instead of torch's decoupled ``p *= 1 - lr * wd``.

:class:`S3prlAdamW` implements exactly that rule with ``torch._foreach_*`` kernels, one launch per bucket of
parameters that share (step count, device, dtype) -- normally a single bucket per parameter group.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor

# The schedules the optimizer can apply per parameter (the names are our config's scheduler.name values).
SCHEDULES = ("linear_warmup_decay", "constant")

# Hyperparameters every param group must carry; load_state_dict replaces groups wholesale, so a state saved by
# another optimizer would otherwise fail later, mid-step, with a bare KeyError.
_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "total_steps", "warmup_proportion", "schedule")


def linear_warmup_decay_factor(step: int, total_steps: int, warmup_proportion: float) -> float:
    """The lr multiplier at update ``step`` (counted from 1) of ``total_steps``.

    Linear warm-up to 1 over ``W = total_steps * warmup_proportion`` updates (W need not be whole), then linear decay
    to 0 at ``total_steps``: ``t / W`` for ``t < W``, else ``max(0, (T - t) / (T - W))``. This is s3prl's
    ``warmup_linear`` (evaluated at progress ``t / T``) and DPHuBERT's ``LinearDecayLRScheduler`` (at its
    ``_step_count``); the two agree at ``t = W`` (factor 1). A zero warm-up starts the decay at once.
    """
    warmup = total_steps * warmup_proportion
    if step < warmup:
        return step / warmup
    return max(0.0, (total_steps - step) / (total_steps - warmup))


def _check_range(name: str, value: Any, low: float, high: float = math.inf, high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"S3prlAdamW: {name} must be a finite number, got {value!r}")
    if value < low or value > high or (high_open and value == high):
        bound = f"[{low}, {high})" if high_open else f">= {low}"
        raise ValueError(f"S3prlAdamW: {name} must be {bound}, got {value!r}")


class S3prlAdamW(torch.optim.Optimizer):
    """s3prl's ``AdamW_with_schedule`` update (``Lamb(adam=True, correct_bias=True)`` with ``warmup_linear``).

    Per parameter, with its own step counter ``t`` (starting at 1; a parameter whose ``.grad`` is None is skipped and
    its counter does not advance)::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t) * schedule(t)
        p = p - lr_t * (m / (sqrt(v) + eps) + weight_decay * p)

    ``schedule`` is ``"linear_warmup_decay"`` (:func:`linear_warmup_decay_factor` over ``total_steps`` with
    ``warmup_proportion``) or ``"constant"`` (1). The schedule lives here, not in an LR scheduler: a parameter that
    starts training late (e.g. after a front-end-only stage) warms up from its own first update, as in s3prl. Every
    hyperparameter, the schedule's included, may differ per param group.

    ``step()`` never reads a device value. It has no AMP hooks of its own, so ``torch.amp.GradScaler.step`` takes its
    generic path: it checks for inf/NaN gradients and skips the call (parameters, moments and step counters stay as
    they were).
    """

    def __init__(
        self,
        params: Union[Iterable[Tensor], Iterable[Dict[str, Any]]],
        lr: float = 2.0e-4,
        betas: Tuple[float, float] = (0.9, 0.98),
        eps: float = 1.0e-6,
        weight_decay: float = 0.0,
        *,
        total_steps: int,
        warmup_proportion: float = 0.07,
        schedule: str = "linear_warmup_decay",
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, total_steps=total_steps,
                        warmup_proportion=warmup_proportion, schedule=schedule)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults)

    # --- validation -----------------------------------------------------------------------------------------------

    @staticmethod
    def _check_hyperparameters(group: Dict[str, Any]) -> None:
        _check_range("lr", group["lr"], 0.0)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"S3prlAdamW: betas must be a pair (beta1, beta2), got {betas!r}")
        for index, beta in enumerate(betas):
            _check_range(f"betas[{index}]", beta, 0.0, 1.0, high_open=True)
        _check_range("eps", group["eps"], 0.0)
        _check_range("weight_decay", group["weight_decay"], 0.0)
        total = group["total_steps"]
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"S3prlAdamW: total_steps must be an int >= 1, got {total!r}")
        _check_range("warmup_proportion", group["warmup_proportion"], 0.0, 1.0, high_open=True)
        if group["schedule"] not in SCHEDULES:
            raise ValueError(f"S3prlAdamW: schedule must be one of {SCHEDULES}, got {group['schedule']!r}")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        # Checked before torch appends it: a refused group must not stay behind in param_groups.
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for param in params:
            if not param.is_floating_point():  # complex too: sqrt(v) would not be Adam's
                raise ValueError(f"S3prlAdamW: only real floating-point parameters are supported, got {param.dtype}")
        hyperparameters = {**self.defaults, **param_group}  # a group may override any default
        self._check_hyperparameters(hyperparameters)
        super().add_param_group({**param_group, "params": params, "betas": tuple(hyperparameters["betas"])})

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        for index, group in enumerate(state_dict.get("param_groups", [])):
            missing = [key for key in _GROUP_KEYS if key not in group]
            if missing:
                raise ValueError(f"S3prlAdamW.load_state_dict: param group {index} lacks {missing}: the state was not "
                                 f"saved by S3prlAdamW (another optimizer's state cannot be resumed with this one)")
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if not isinstance(state.get("step", 0), int):  # host ints only: bucketing must never read the device
                raise ValueError("S3prlAdamW.load_state_dict: step counters must be Python ints; the state was not "
                                 "saved by S3prlAdamW")

    # --- schedule -------------------------------------------------------------------------------------------------

    @staticmethod
    def schedule_factor(group: Dict[str, Any], step: int) -> float:
        """The group's lr multiplier at a parameter's update ``step`` (counted from 1)."""
        if group["schedule"] == "constant":
            return 1.0
        return linear_warmup_decay_factor(step, group["total_steps"], group["warmup_proportion"])

    def scheduled_lr(self, group_index: int = 0) -> float:
        """``lr * schedule(t)`` of a group (the first by default) at its latest update -- what s3prl's ``get_lr``
        reports; Adam's bias correction is not in it (nor in torch's reported lr). ``t`` is the largest step counter
        in the group (its parameters that train now), 0 before any update."""
        group = self.param_groups[group_index]
        # .get: self.state is a defaultdict, indexing it would add empty entries.
        step = max((self.state.get(p, {}).get("step", 0) for p in group["params"]), default=0)
        return group["lr"] * self.schedule_factor(group, step)

    # --- update ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One update of every parameter that has a gradient (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            # (step, device, dtype) -> (params, grads, exp_avgs, exp_avg_sqs): one foreach launch per bucket.
            buckets: Dict[Tuple[int, torch.device, torch.dtype], Tuple[List[Tensor], ...]] = {}
            for param in group["params"]:
                grad = param.grad
                if grad is None:  # s3prl skips it and leaves its counter alone
                    continue
                if grad.is_sparse:
                    raise RuntimeError("S3prlAdamW does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                bucket = buckets.setdefault((state["step"], param.device, param.dtype), ([], [], [], []))
                for items, value in zip(bucket, (param, grad, state["exp_avg"], state["exp_avg_sq"])):
                    items.append(value)
            for (step, _, _), (params, grads, exp_avgs, exp_avg_sqs) in buckets.items():
                # Host arithmetic on Python numbers: the step size never needs a device read.
                step_size = (group["lr"] * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
                             * self.schedule_factor(group, step))
                torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m = beta1 m + (1 - beta1) g
                torch._foreach_mul_(exp_avg_sqs, beta2)
                torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
                denominators = torch._foreach_sqrt(exp_avg_sqs)
                torch._foreach_add_(denominators, group["eps"])  # eps on the uncorrected sqrt(v), as s3prl
                # p - step_size * (m / d + wd * p)  ==  p * (1 - step_size * wd) - step_size * m / d
                if group["weight_decay"] != 0:
                    torch._foreach_mul_(params, 1.0 - step_size * group["weight_decay"])
                torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-step_size)
        return loss
