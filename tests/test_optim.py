"""S3prlAdamW against an independent reference of s3prl's AdamW_with_schedule update (written here from the formulas,
not from our code), its schedule against the official ones, AMP skips, exact resume, and the config/runner wiring."""

import copy
import io
import math
import re
from typing import Dict, Optional

import pytest
import torch

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.errors import ConfigError
from s3prl_distill.pretrain import config as config_module
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.pretrain.optim import S3prlAdamW, linear_warmup_decay_factor
from s3prl_distill.pretrain.runner import Trainer, linear_warmup_decay, run

from helpers import TINY_STUDENT, make_trainer

LR, BETAS, EPS, WD = 1.0e-2, (0.9, 0.98), 1.0e-6, 0.01


# --- the reference ------------------------------------------------------------------------------------------------

def s3prl_warmup_linear(t: int, total: int, warmup: float) -> float:
    """s3prl's warmup_linear at progress x = t / T."""
    x = t / total
    return x / warmup if x < warmup else max((x - 1.0) / (warmup - 1.0), 0.0)


def dphubert_linear_decay(t: int, warmup_updates: float, max_updates: int) -> float:
    """DPHuBERT's LinearDecayLRScheduler factor at _step_count t."""
    if t <= warmup_updates:
        return t / warmup_updates
    if t >= max_updates:
        return 0.0
    return (max_updates - t) / (max_updates - warmup_updates)


class Reference:
    """One tensor at a time, in float64: per-parameter t from 1, lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) schedule(t),
    u = m / (sqrt(v) + eps) + wd p, p -= lr_t u; parameters without a gradient are skipped."""

    def __init__(self, params: Dict[str, torch.Tensor], decay: Dict[str, float], total: int, warmup: float,
                 schedule: str = "linear_warmup_decay") -> None:
        self.params = {k: v.detach().clone().double() for k, v in params.items()}
        self.decay, self.total, self.warmup, self.schedule = decay, total, warmup, schedule
        self.t = {k: 0 for k in params}
        self.m = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in self.params.items()}

    def step(self, grads: Dict[str, Optional[torch.Tensor]]) -> None:
        b1, b2 = BETAS
        for name, p in self.params.items():
            g = grads.get(name)
            if g is None:
                continue
            g = g.double()
            self.t[name] += 1
            t = self.t[name]
            self.m[name] = b1 * self.m[name] + (1 - b1) * g
            self.v[name] = b2 * self.v[name] + (1 - b2) * g * g
            factor = 1.0 if self.schedule == "constant" else s3prl_warmup_linear(t, self.total, self.warmup)
            lr_t = LR * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * factor
            update = self.m[name] / (self.v[name].sqrt() + EPS) + self.decay[name] * p
            self.params[name] = p - lr_t * update


def make_params(dtype=torch.float64) -> Dict[str, torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    shapes = {"weight": (5, 3), "bias": (5,), "late.weight": (4, 2)}
    return {k: torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for k, s in shapes.items()}


def make_optimizer(params: Dict[str, torch.nn.Parameter], total: int, warmup: float, **kwargs) -> S3prlAdamW:
    """The runner's grouping: weight decay on everything but biases."""
    decay = [p for n, p in params.items() if not n.endswith("bias")]
    no_decay = [p for n, p in params.items() if n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}]
    return S3prlAdamW(groups, lr=LR, betas=BETAS, eps=EPS, total_steps=total, warmup_proportion=warmup, **kwargs)


def gradients(step: int, params: Dict[str, torch.Tensor], late_from: int = 0) -> Dict[str, Optional[torch.Tensor]]:
    """Per-step random gradients of mixed scale; ``late.weight`` has none before update ``late_from``."""
    generator = torch.Generator().manual_seed(100 + step)
    grads = {k: torch.randn(p.shape, generator=generator, dtype=p.dtype) * 10.0 ** (step % 3 - 2)
             for k, p in params.items()}
    if step < late_from:
        grads["late.weight"] = None
    return grads


def apply(optimizer: torch.optim.Optimizer, params: Dict[str, torch.nn.Parameter], grads) -> None:
    for name, p in params.items():
        p.grad = None if grads[name] is None else grads[name].clone()
    optimizer.step()


def assert_params_close(params: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(params[name].detach().double(), value, rtol=1e-6, atol=1e-12, msg=name)


# --- the update rule ----------------------------------------------------------------------------------------------

def test_one_step_equals_the_reference():
    params = make_params()
    initial = {k: p.detach().clone() for k, p in params.items()}
    optimizer = make_optimizer(params, total=10, warmup=0.3)
    reference = Reference(params, {"weight": WD, "bias": 0.0, "late.weight": WD}, total=10, warmup=0.3)
    grads = gradients(0, params)
    apply(optimizer, params, grads)
    reference.step(grads)
    assert_params_close(params, reference.params)
    assert all(not torch.equal(params[k], initial[k]) for k in params)
    # The first step's size: lr * sqrt(1 - b2) / (1 - b1) * (1 / W) with W = 3 updates.
    expected = LR * math.sqrt(1 - BETAS[1]) / (1 - BETAS[0]) / 3.0
    g = grads["bias"]
    update = (1 - BETAS[0]) * g / ((1 - BETAS[1]) ** 0.5 * g.abs() + EPS)  # no weight decay on biases
    torch.testing.assert_close(params["bias"].detach(), initial["bias"] - expected * update, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_steps_with_schedule_decay_and_a_late_parameter_equal_the_reference(dtype):
    total, warmup, late_from = 12, 0.3, 4  # W = 3.6 updates: not a whole number
    params = make_params(dtype)
    optimizer = make_optimizer(params, total, warmup)
    reference = Reference(params, {"weight": WD, "bias": 0.0, "late.weight": WD}, total, warmup)
    late_initial = params["late.weight"].detach().clone()
    for step in range(total):
        grads = gradients(step, params, late_from)
        apply(optimizer, params, grads)
        reference.step(grads)
        if step < late_from:
            assert torch.equal(params["late.weight"], late_initial) and params["late.weight"] not in optimizer.state
    if dtype == torch.float64:
        assert_params_close(params, reference.params)
    else:  # float32 parameters: the same update within float32 rounding
        for name, value in reference.params.items():
            torch.testing.assert_close(params[name].detach().double(), value, rtol=1e-5, atol=1e-7, msg=name)
    counters = {name: optimizer.state[p]["step"] for name, p in params.items()}
    assert counters == {"weight": total, "bias": total, "late.weight": total - late_from} == reference.t
    # The log's lr: the group's most advanced counter (here at T, so 0); the late parameter's own is at 8 < T.
    assert optimizer.scheduled_lr(0) == 0.0
    assert linear_warmup_decay_factor(total - late_from, total, warmup) > 0.4


def test_constant_schedule_equals_the_reference():
    params = make_params()
    optimizer = make_optimizer(params, total=5, warmup=0.0, schedule="constant")
    reference = Reference(params, {"weight": WD, "bias": 0.0, "late.weight": WD}, total=5, warmup=0.0,
                          schedule="constant")
    for step in range(7):  # past total_steps: constant stays constant
        grads = gradients(step, params)
        apply(optimizer, params, grads)
        reference.step(grads)
    assert_params_close(params, reference.params)
    assert optimizer.scheduled_lr() == LR


def test_the_update_is_not_torch_adamw():
    params = make_params()
    twins = {k: torch.nn.Parameter(p.detach().clone()) for k, p in params.items()}
    ours = make_optimizer(params, total=4, warmup=0.0, schedule="constant")
    theirs = torch.optim.AdamW([{"params": [twins["weight"], twins["late.weight"]], "weight_decay": WD},
                                {"params": [twins["bias"]], "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS)
    for step in range(3):
        grads = gradients(step, params)
        apply(ours, params, grads)
        apply(theirs, twins, grads)
    # Mostly the weight decay (scaled by the bias-corrected step here) and eps (added before the correction).
    difference = max((params[k] - twins[k]).abs().max().item() for k in params)
    assert difference > 1e-5


# --- the schedule -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total,warmup", [(200000, 0.07), (1170000, 0.05), (50000, 0.3), (12, 0.3), (10, 0.0)])
def test_schedule_factor_equals_the_official_ones(total, warmup):
    w = total * warmup
    steps = [1, total] + ([math.floor(w), math.ceil(w), math.floor(w) + 1] if w >= 1 else [2])
    lambda_lr = linear_warmup_decay(total, warmup)
    for t in steps:
        ours = linear_warmup_decay_factor(t, total, warmup)
        assert ours == pytest.approx(s3prl_warmup_linear(t, total, warmup), rel=1e-12, abs=1e-15), t
        if w > 0:  # DPHuBERT's scheduler divides by its warm-up length
            assert ours == pytest.approx(dphubert_linear_decay(t, w, total), rel=1e-12, abs=1e-15), t
        assert lambda_lr(t - 1) == ours  # LambdaLR's 0-based index s is update t = s + 1
    assert linear_warmup_decay_factor(total + 5, total, warmup) == 0.0


def test_first_update_of_distilhubert_uses_lr_over_the_warmup_length():
    # s3prl: 2e-4 / 14000 at the first update (the runner gave 2e-4 / 14001 before counting from 1).
    factor = linear_warmup_decay(200000, 0.07)
    assert 2.0e-4 * factor(0) == pytest.approx(2.0e-4 / 14000, rel=1e-12)
    assert factor(13999) == pytest.approx(1.0) and factor(199999) == 0.0
    assert linear_warmup_decay(10, 0.0)(0) == pytest.approx(0.9)  # no warm-up: no division by zero


def test_scheduled_lr_follows_the_counter():
    params = make_params()
    optimizer = make_optimizer(params, total=10, warmup=0.2)  # W = 2
    assert optimizer.scheduled_lr() == 0.0  # before any update
    expected = [0.5, 1.0, 7 / 8, 6 / 8]
    for step, factor in enumerate(expected):
        apply(optimizer, params, gradients(step, params))
        assert optimizer.scheduled_lr() == pytest.approx(LR * factor)


# --- AMP, state, arguments ----------------------------------------------------------------------------------------

def test_grad_scaler_skips_a_non_finite_step_and_unscales_the_others():
    params, plain_params = make_params(torch.float32), make_params(torch.float32)
    optimizer, plain = make_optimizer(params, 10, 0.2), make_optimizer(plain_params, 10, 0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))

    def backward(target: Dict[str, torch.nn.Parameter], poison: bool, scale: bool) -> None:
        loss = ((x @ target["weight"].T + target["bias"]) ** 2).mean() + (target["late.weight"] ** 2).sum()
        (scaler.scale(loss) if scale else loss).backward()
        if poison:
            target["weight"].grad[0, 0] = float("inf")

    backward(params, poison=False, scale=True)
    scaler.step(optimizer)
    scaler.update()
    backward(plain_params, poison=False, scale=False)
    plain.step()
    for name in params:  # the scaler's unscaled gradients gave the unscaled update
        torch.testing.assert_close(params[name], plain_params[name], rtol=1e-6, atol=1e-7)
    optimizer.zero_grad(set_to_none=True)

    before = {k: p.detach().clone() for k, p in params.items()}
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    backward(params, poison=True, scale=True)
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(params[k], before[k]) for k in params)
    state_after = optimizer.state_dict()["state"]
    for index, state in state_before.items():
        assert state_after[index]["step"] == state["step"] == 1
        assert torch.equal(state_after[index]["exp_avg"], state["exp_avg"])
        assert torch.equal(state_after[index]["exp_avg_sq"], state["exp_avg_sq"])
    assert scaler.get_scale() == 4.0  # the scaler saw the inf and backed off


def test_state_dict_round_trip_gives_identical_next_steps():
    params = make_params(torch.float32)
    optimizer = make_optimizer(params, total=8, warmup=0.25)
    for step in range(3):  # the late parameter has trained 1 update, the others 3: two step-count buckets
        apply(optimizer, params, gradients(step, params, late_from=2))
    buffer = io.BytesIO()
    torch.save({"params": {k: p.detach() for k, p in params.items()}, "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored_params = {k: torch.nn.Parameter(v.clone()) for k, v in saved["params"].items()}
    restored = make_optimizer(restored_params, total=8, warmup=0.25)
    restored.load_state_dict(saved["optimizer"])
    for step in range(3, 6):
        grads = gradients(step, params)
        apply(optimizer, params, grads)
        apply(restored, restored_params, grads)
    assert all(torch.equal(params[k], restored_params[k]) for k in params)
    assert [restored.state[p]["step"] for p in restored_params.values()] == [6, 6, 4]


def test_another_optimizers_state_is_refused():
    params = make_params()
    adamw = torch.optim.AdamW(params.values(), lr=LR)
    apply(adamw, params, gradients(0, params))
    with pytest.raises(ValueError, match="not saved by S3prlAdamW"):
        make_optimizer(params, 4, 0.0).load_state_dict(adamw.state_dict())


@pytest.mark.parametrize("kwargs,name", [
    ({"lr": -1.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"betas": (1.0, 0.9)}, "betas[0]"),
    ({"betas": (0.9, -0.1)}, "betas[1]"), ({"betas": (0.9,)}, "betas"), ({"eps": -1e-8}, "eps"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"total_steps": 0}, "total_steps"),
    ({"total_steps": 10.5}, "total_steps"), ({"warmup_proportion": 1.0}, "warmup_proportion"),
    ({"schedule": "warmup_cosine"}, "schedule"),
])
def test_bad_arguments_are_refused_by_name(kwargs, name):
    arguments = {"lr": LR, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=re.escape(name)):
        S3prlAdamW([torch.nn.Parameter(torch.zeros(2))], **arguments)


def test_a_group_override_is_validated_and_integers_are_refused():
    with pytest.raises(ValueError, match="weight_decay"):
        S3prlAdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": -1.0}], total_steps=10)
    optimizer = S3prlAdamW([torch.nn.Parameter(torch.zeros(2))], total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "total_steps": 0})
    assert len(optimizer.param_groups) == 1  # the refused group did not stay behind
    with pytest.raises(ValueError, match="floating-point"):
        S3prlAdamW([torch.zeros(2, dtype=torch.long)], total_steps=10)


# --- config and runner --------------------------------------------------------------------------------------------

def minimal_config(**sections) -> dict:
    return {"teacher": {"name": "hubert_local"}, "student": TINY_STUDENT, "method": {"name": "distilhubert"},
            "data": {"root": "audio", "bucket_dir": "len", "sets": ["train"]}, **sections}


def test_config_chooses_the_optimizer_and_rejects_inconsistent_schedules(monkeypatch):
    config = config_module.validate_config(minimal_config(optimizer={"name": "AdamW_with_schedule"}), "test")
    assert config.optimizer.name == "AdamW_with_schedule" and config.scheduler.name == "linear_warmup_decay"
    assert config_module.validate_config(minimal_config(), "test").optimizer.name == "AdamW"  # the default
    with pytest.raises(ConfigError, match="optimizer.name: Input should be 'AdamW' or 'AdamW_with_schedule'"):
        config_module.validate_config(minimal_config(optimizer={"name": "Lamb"}), "test")
    with pytest.raises(ConfigError, match="optimizer.warmup_proportion: unknown key"):  # s3prl's place for it
        config_module.validate_config(minimal_config(optimizer={"name": "AdamW_with_schedule",
                                                                "warmup_proportion": 0.07}), "test")
    # An optimizer only follows the schedules it implements: the check reads the table, and names both keys.
    monkeypatch.setitem(config_module.OPTIMIZER_SCHEDULES, "AdamW_with_schedule", ("constant",))
    with pytest.raises(ConfigError, match=r"scheduler.name='linear_warmup_decay' cannot be used with "
                                          r"optimizer.name='AdamW_with_schedule', which supports constant"):
        config_module.validate_config(minimal_config(optimizer={"name": "AdamW_with_schedule"}), "test")
    assert config_module.validate_config(minimal_config(optimizer={"name": "AdamW_with_schedule"},
                                                        scheduler={"name": "constant"}), "test")


def test_shipped_s3prl_recipes_use_s3prl_optimizer():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pretrain"
    expected = {"distilhubert/config.yaml": (2.0e-4, 0.07), "fithubert/config.yaml": (5.0e-4, 0.05),
                "fithubert/config_fitw2v2.yaml": (5.0e-4, 0.05), "asr_distill/config.yaml": (2.0e-4, 0.07),
                "asr_distill/config_fbank.yaml": (2.0e-4, 0.07), "asr_distill/config_shallowwide.yaml": (2.0e-4, 0.07)}
    for name, (lr, warmup) in expected.items():
        config = config_module.load_config(root / name)
        assert config.optimizer.name == "AdamW_with_schedule", name
        assert (config.optimizer.lr, config.scheduler.name, config.scheduler.warmup_proportion) == \
            (lr, "linear_warmup_decay", warmup), name
        assert (config.optimizer.betas, config.optimizer.eps, config.optimizer.weight_decay) == \
            ((0.9, 0.98), 1.0e-6, 0.01), name
    for name in ("dphubert/config.yaml", "dphubert/config_skill.yaml"):  # DPHuBERT: torch.optim.AdamW
        assert config_module.load_config(root / name).optimizer.name == "AdamW", name


def test_runner_trains_with_it_logs_its_lr_and_resumes_exactly(setup, tmp_path):
    overrides = ("config.optimizer.name=AdamW_with_schedule,,config.runner.total_steps=2,,config.runner.save_step=1,,"
                 "config.scheduler.warmup_proportion=0.6,,config.data.max_length=8000")
    full = make_trainer(setup, tmp_path / "full", overrides)
    assert isinstance(full.optimizer, S3prlAdamW)
    full.train()
    # lr 2e-3, W = 1.2 of T = 2 updates: t / W, then (T - t) / (T - W); the LambdaLR stays at 1.
    logged = metric_values(read_metrics(tmp_path / "full"), "lr")
    assert logged == pytest.approx([2.0e-3 / 1.2, 0.0], rel=1e-3)
    assert full.scheduler.get_last_lr() == [2.0e-3, 2.0e-3]

    checkpoint = load_checkpoint(tmp_path / "full" / "states-1.ckpt")
    (tmp_path / "resumed").mkdir()
    resumed = Trainer(full.config, tmp_path / "resumed", checkpoint)
    resumed.train()
    expected = load_checkpoint(tmp_path / "full" / "states-2.ckpt")
    actual = load_checkpoint(tmp_path / "resumed" / "states-2.ckpt")
    for key in expected["Distiller"]:
        assert torch.equal(expected["Distiller"][key], actual["Distiller"][key]), key
    states = list(zip(expected["Optimizer"]["state"].values(), actual["Optimizer"]["state"].values()))
    assert states and all(x["step"] == y["step"] == 2 for x, y in states)
    assert all(torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
               for x, y in states)
    assert expected["Optimizer"]["param_groups"][0]["schedule"] == "linear_warmup_decay"

    # Another optimizer cannot take over its state: refused, naming the key, before anything is built.
    with pytest.raises(ConfigError, match="optimizer.name='AdamW'.*trained with 'AdamW_with_schedule'"):
        run(None, None, str(tmp_path / "resumed"), overrides="config.optimizer.name=AdamW",
            resume=str(tmp_path / "full" / "states-1.ckpt"))
