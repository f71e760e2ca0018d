"""``s3prl-distill link-pretrain CHECKOUT``: our recipes under s3prl's own ``run_pretrain.py``.

s3prl's ``run_pretrain.py`` (run in ``CHECKOUT/s3prl``) offers ``-u`` the folders of ``pretrain/``, imports
``pretrain.<u>.pretrain_expert``, and reads by default ``pretrain/<u>/config_runner.yaml`` (``-c``: its runner,
optimizer, scheduler and ``pretrain_expert.datarc``) and ``pretrain/<u>/config_model.yaml`` (``-g``: handed to the
expert). Each of our method folders becomes a real folder there holding links to its ``__init__.py``,
``pretrain_expert.py`` and ``config*.yaml`` (so ``-g pretrain/<u>/config_<variant>.yaml`` works), plus those two
files generated from its ``config.yaml``: the one source of every value, translated key by key below. Nothing is
written into the installed package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import yaml

from s3prl_distill.errors import ConfigError, UserError

from .config import ModelSections, PretrainConfig, validate_config
from .config_files import read_config
from .methods import METHODS

MARKER = ".made-by-s3prl-distill-link-pretrain"  # lists what the command made in a folder, so a re-run refreshes it
GENERATED = ("config_model.yaml", "config_runner.yaml")
LINKED = ("__init__.py", "pretrain_expert.py")
# s3prl's runner always clips; "no clipping" (our null) is a bound no gradient norm reaches.
NO_CLIPPING = 1.0e9
# s3prl's AdamW_with_schedule puts every parameter but biases and LayerNorms in a group of weight decay 0.01.
S3PRL_GROUPED_WEIGHT_DECAY = 0.01


def s3prl_runner_config(config: PretrainConfig, source: str) -> Dict[str, Any]:
    """``config``'s runner, optimizer, scheduler and data sections as s3prl's ``config_runner.yaml``. A value s3prl's
    runner cannot express is a :class:`ConfigError` naming ``source`` and the key, never a silent change."""
    runner, optimizer, scheduler = config.runner, config.optimizer, config.scheduler

    def refuse(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key} has no s3prl run_pretrain.py equivalent ({why}); train it with "
                           f"s3prl-distill pretrain")

    if runner.precision == "bf16":
        raise refuse("runner.precision=bf16", "its runner has fp16 or fp32 only")
    if runner.compile:
        raise refuse("runner.compile=true", "its runner does not compile")
    translated: Dict[str, Any] = {"runner": {
        "n_epochs": -1, "total_steps": runner.total_steps,
        "gradient_clipping": NO_CLIPPING if runner.gradient_clipping is None else runner.gradient_clipping,
        "gradient_accumulate_steps": runner.gradient_accumulate_steps, "log_step": runner.log_step,
        "save_step": runner.save_step, "max_keep": runner.keep_last, "fp16": runner.precision == "fp16",
    }}
    if optimizer.name == "AdamW_with_schedule":  # s3prl's own optimizer, scheduling itself
        if optimizer.weight_decay != S3PRL_GROUPED_WEIGHT_DECAY:
            raise refuse(f"optimizer.weight_decay={optimizer.weight_decay}",
                         f"its AdamW_with_schedule always decays by {S3PRL_GROUPED_WEIGHT_DECAY}")
        translated["optimizer"] = {"name": "AdamW_with_schedule", "lr": optimizer.lr,
                                   "warmup_proportion": scheduler.warmup_proportion, "betas": list(optimizer.betas),
                                   "eps": optimizer.eps}
        if scheduler.name == "constant":
            translated["optimizer"]["schedule"] = "none"  # s3prl's Lamb: ConstantLR
    else:  # torch's AdamW through s3prl's TorchOptim, with a LambdaLR scheduler section
        if optimizer.weight_decay != 0.0:
            raise refuse(f"optimizer.weight_decay={optimizer.weight_decay} with optimizer.name=AdamW",
                         "its TorchOptim would decay the biases too")
        translated["optimizer"] = {"name": "TorchOptim", "torch_optim_name": "AdamW", "lr": optimizer.lr,
                                   "betas": list(optimizer.betas), "eps": optimizer.eps,
                                   "weight_decay": optimizer.weight_decay}
        if scheduler.name == "linear_warmup_decay":
            warmup = runner.total_steps * scheduler.warmup_proportion
            translated["scheduler"] = {"name": "linear_schedule_with_warmup",
                                       "num_warmup_steps": int(round(warmup)) if abs(warmup - round(warmup)) < 1e-6
                                       else warmup}
    translated["pretrain_expert"] = {"datarc": _datarc(config)}
    return translated


def _datarc(config: PretrainConfig) -> Dict[str, Any]:
    """The data section; an unset optional (null by default, e.g. ``teacher_cache``) is left out, as we write it."""
    fields = type(config.data).model_fields
    return {key: value for key, value in config.data.model_dump().items()
            if not (value is None and fields[key].default is None)}


def s3prl_model_config(data: Dict[str, Any]) -> Dict[str, Any]:
    """The model sections of a (read, validated) config mapping, as written: s3prl's ``config_model.yaml``."""
    return {key: data[key] for key in ModelSections.model_fields if key in data}


def _header(source: Path, what: str) -> str:
    return (f"# Generated by `s3prl-distill link-pretrain` from {source}: {what}.\n"
            f"# Do not edit: change {source.name} there and run link-pretrain again.\n")


def generate_configs(source: Path) -> Dict[str, str]:
    """The text of ``config_model.yaml`` and ``config_runner.yaml`` generated from the config file ``source``."""
    data = read_config(source)
    config = validate_config(data, str(source))
    runner_note = "s3prl run_pretrain.py's runner config (-c)"
    if config.runner.seed != 1337:
        runner_note += f"; pass run_pretrain.py --seed {config.runner.seed} (its default is 1337)"
    dump = lambda value: yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=120)  # noqa: E731
    return {
        "config_model.yaml": _header(source, "its model sections, s3prl run_pretrain.py's model config (-g)")
        + dump(s3prl_model_config(data)),
        "config_runner.yaml": _header(source, runner_note) + dump(s3prl_runner_config(config, str(source))),
    }


def find_pretrain_folder(checkout: Path) -> Path:
    """The ``pretrain/`` folder beside ``run_pretrain.py`` in an s3prl checkout (its root or its ``s3prl/``)."""
    root = checkout.expanduser().resolve()
    candidates = [root / "s3prl" / "pretrain", root / "pretrain"]
    target = next((c for c in candidates if c.is_dir() and (c.parent / "run_pretrain.py").is_file()), None)
    if target is None:
        raise UserError(f"{root} is not an s3prl checkout (no s3prl/run_pretrain.py beside pretrain/)")
    return target


def _clear(folder: Path) -> None:
    """Make room for ``folder``: remove what an earlier run of this command made there; refuse anything else."""
    if folder.is_symlink():  # how this command linked a recipe before it generated configs
        folder.unlink()
    elif (folder / MARKER).is_file():
        for name in (folder / MARKER).read_text().split():
            entry = folder / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
    elif folder.exists():
        raise UserError(f"{folder} exists and is not a folder made by this command; not replacing it")


def link_recipe(source: Path, folder: Path) -> List[str]:
    """``folder`` (in a checkout's ``pretrain/``) for the recipe folder ``source``; returns the entries made."""
    config = source / "config.yaml"
    if not config.is_file():
        raise UserError(f"{source} has a pretrain_expert.py but no config.yaml to generate s3prl's configs from")
    generated = generate_configs(config)  # before touching the checkout: a bad config leaves it as it was
    _clear(folder)
    folder.mkdir(exist_ok=True)
    made = []
    linked = [source / name for name in LINKED if (source / name).is_file()]
    linked += sorted(path for path in source.glob("config*.yaml") if path.name not in GENERATED)
    for path in linked:
        (folder / path.name).symlink_to(path)
        made.append(path.name)
    for name, text in generated.items():
        (folder / name).write_text(text)
        made.append(name)
    (folder / MARKER).write_text("\n".join([MARKER, *made]) + "\n")
    return made


def link_pretrain(checkout: Path) -> List[Path]:
    """Every registered method's recipe folder with an s3prl ``pretrain_expert.py`` (a folder shared by several
    methods once), made under the checkout's ``pretrain/``; returns the folders made."""
    target = find_pretrain_folder(checkout)
    sources = sorted({spec.folder for spec in METHODS.values() if (spec.folder / "pretrain_expert.py").is_file()})
    made = []
    for source in sources:
        folder = target / source.name
        link_recipe(source, folder)
        made.append(folder)
    return made
