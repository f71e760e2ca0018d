"""The distillation methods, registered in one place.

A method is a folder under ``pretrain/`` (its recipe: config class + :class:`~.method.Method` subclass, its YAML
configs) and one :func:`register_method` line below. Everything else that lists methods -- the ``method`` section of
a pretrain config, the s3prl ``run_pretrain.py`` experts, the command line's choices -- reads this registry.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Type

from s3prl_distill.errors import ConfigError
from s3prl_distill.model.config import StrictModel, StudentConfig

from .method import Method


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the config's ``method.name``
    config: Type[StrictModel]  # the ``method`` section; its ``name`` field accepts ``name``
    recipe: Type[Method]  # built as ``recipe(config, student_config)``
    # The upstream family whose ``*_local`` entries load the trained students (a native checkpoint's ``Family``).
    family: str

    @property
    def folder(self) -> Path:
        """The recipe's folder: its configs and s3prl ``pretrain_expert.py``."""
        return Path(sys.modules[self.recipe.__module__].__file__).parent


METHODS: Dict[str, MethodSpec] = {}


def register_method(name: str, config: Type[StrictModel], recipe: Type[Method], family: str) -> MethodSpec:
    """Add a method (``name`` must be new); returns its spec."""
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].recipe.__qualname__})")
    spec = MethodSpec(name, config, recipe, family)
    METHODS[name] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``; a :class:`ConfigError` with close matches otherwise."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=3)
        raise ConfigError(f"method.name {name!r} is not a registered method (known: {', '.join(METHODS)}"
                          + (f"; did you mean {' or '.join(close)}?)" if close else ")"))
    return METHODS[name]


def build_method(config: StrictModel, student: StudentConfig) -> Method:
    """The recipe of ``config.name``, built for ``student``."""
    return method_spec(config.name).recipe(config, student)


def _register_builtin() -> None:
    from .asr_distill.recipe import AsrDistill, AsrDistillMethodConfig
    from .distilhubert.recipe import DistilHuBERT, DistilHuBERTMethodConfig
    from .dphubert.recipe import DPHuBERT, DPHuBERTMethodConfig
    from .fithubert.recipe import FitHuBERT, FitHuBERTMethodConfig

    register_method("distilhubert", DistilHuBERTMethodConfig, DistilHuBERT, family="distilhubert")
    register_method("fithubert", FitHuBERTMethodConfig, FitHuBERT, family="fithubert")
    register_method("asr_distill", AsrDistillMethodConfig, AsrDistill, family="asr_distill")
    register_method("dphubert", DPHuBERTMethodConfig, DPHuBERT, family="dphubert")
    register_method("skill", DPHuBERTMethodConfig, DPHuBERT, family="skill")


_register_builtin()
