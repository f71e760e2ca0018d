"""The distillation methods, registered in one place.

A method is a folder under ``pretrain/`` (its recipe: config class + :class:`~.method.Method` subclass, its YAML
configs) and one :func:`register_method` line below. Everything else that lists methods -- the ``method`` section of
a pretrain config, the s3prl ``run_pretrain.py`` experts, the command line's choices, the family of the exported
checkpoints -- reads this registry, so a method registered at run time (a plug-in, a test's toy) is accepted too.
"""

from __future__ import annotations

import difflib
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Tuple, Type, get_args

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

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
    field = config.model_fields.get("name")
    if field is None or name not in get_args(field.annotation):
        raise ValueError(f"register_method({name!r}): {config.__qualname__} needs a field `name: Literal[...]` that "
                         f"accepts {name!r}, so that `method: {{name: {name}}}` validates with it")
    spec = MethodSpec(name, config, recipe, family)
    METHODS[name] = spec
    return spec


def unregister_method(name: str) -> MethodSpec:
    """Remove a method registered at run time (a test's toy); returns its spec."""
    if name not in METHODS:
        raise KeyError(f"no method named {name!r} is registered")
    return METHODS.pop(name)


@contextmanager
def registered_method(name: str, config: Type[StrictModel], recipe: Type[Method], family: str) -> Iterator[MethodSpec]:
    """``register_method`` for the duration of a ``with`` block."""
    spec = register_method(name, config, recipe, family)
    try:
        yield spec
    finally:
        unregister_method(name)


def _unknown(name: Any) -> str:
    close = difflib.get_close_matches(str(name), list(METHODS), n=3)
    return (f"{name!r} is not a registered method (known: {', '.join(METHODS)}"
            + (f"; did you mean {' or '.join(close)}?)" if close else ")"))


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``; a :class:`ConfigError` with close matches otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method.name {_unknown(name)}")
    return METHODS[name]


def build_method(config: StrictModel, student: StudentConfig) -> Method:
    """The recipe of ``config.name``, built for ``student``; its exported checkpoints carry the registered family."""
    spec = method_spec(config.name)
    method = spec.recipe(config, student)
    method.family = spec.family
    return method


def _error(location: Tuple[str, ...], message: str, value: Any) -> ValidationError:
    """A validation error at ``location`` under the field being validated: raised from a pydantic validator, it
    keeps that location (``method.name: ...``) instead of becoming one ``Value error`` on the whole section."""
    error = PydanticCustomError("method", "{message}", {"message": message})
    return ValidationError.from_exception_data("method", [{"type": error, "loc": location, "input": value}])


def validate_method_section(value: Any) -> StrictModel:
    """The ``method`` section of a config, validated by the config class its ``name`` is registered with (errors
    keep their keys: ``method.loss_type: ...``, ``method.xxx: unknown key``)."""
    if isinstance(value, StrictModel):  # already built, e.g. PretrainConfig(method=DistilHuBERTMethodConfig())
        spec = METHODS.get(getattr(value, "name", None))
        if spec is None or not isinstance(value, spec.config):
            raise _error((), f"{type(value).__name__} is not the config class of a registered method", value)
        return value
    if not isinstance(value, Mapping):
        raise _error((), f"must be a mapping with a name (one of: {', '.join(METHODS)})", value)
    if "name" not in value:
        raise _error(("name",), f"missing: which method to run (one of: {', '.join(METHODS)})", value)
    if value["name"] not in METHODS:
        raise _error(("name",), _unknown(value["name"]), value["name"])
    return METHODS[value["name"]].config.model_validate(value)


def check_compatible(method: StrictModel, student: StudentConfig) -> None:
    """The method's check of the student (``Method.check_student``), as an error at ``method`` of the config being
    validated: a student the method cannot train fails when the config loads, before any teacher is built."""
    try:
        method_spec(method.name).recipe.check_student(method, student)
    except ValueError as error:
        raise _error(("method",), str(error), method.name) from None


def _register_builtin() -> None:
    from .armhubert.recipe import MaskDistill, MaskDistillMethodConfig
    from .asr_distill.recipe import AsrDistill, AsrDistillMethodConfig
    from .distilhubert.recipe import DistilHuBERT, DistilHuBERTMethodConfig
    from .dphubert.recipe import DPHuBERT, DPHuBERTMethodConfig
    from .fithubert.recipe import FitHuBERT, FitHuBERTMethodConfig
    from .star.recipe import STaR, STaRMethodConfig

    register_method("distilhubert", DistilHuBERTMethodConfig, DistilHuBERT, family="distilhubert")
    register_method("fithubert", FitHuBERTMethodConfig, FitHuBERT, family="fithubert")
    register_method("maskhubert", MaskDistillMethodConfig, MaskDistill, family="maskhubert")
    register_method("armhubert", MaskDistillMethodConfig, MaskDistill, family="armhubert")
    register_method("asr_distill", AsrDistillMethodConfig, AsrDistill, family="asr_distill")
    register_method("dphubert", DPHuBERTMethodConfig, DPHuBERT, family="dphubert")
    register_method("skill", DPHuBERTMethodConfig, DPHuBERT, family="skill")
    register_method("star", STaRMethodConfig, STaR, family="starhubert")


_register_builtin()
