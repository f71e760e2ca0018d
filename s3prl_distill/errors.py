"""Errors in what the user gave us (a file, an argument, a config value).

Every such error derives from :class:`UserError`: its message names the file or setting and says what to do, so
the command line prints the message alone, without a Python traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Type, TypeVar

if TYPE_CHECKING:  # pydantic is imported where a config is validated: the command line's --help does without it
    from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound="BaseModel")


class UserError(Exception):
    """Bad input, with a message that names it."""


class ConfigError(UserError, ValueError):
    """A config (YAML, overrides, options) that does not validate; the message names each bad key."""


class UnknownUpstreamError(UserError, ValueError):
    """An upstream name that ``s3prl.hub`` does not have."""


class MissingFeatureError(UserError, KeyError):
    """A feature (``-s`` / ``--feature``) that the upstream's output does not have. A ``KeyError``, as a missing
    dict key is to s3prl, with its message printed as written (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def validated(model: Type[Model], data: Any, what: str) -> Model:
    """``model.model_validate(data)``, or a :class:`ConfigError` that starts with ``what`` (e.g. ``invalid pretrain
    config run.yaml``) and names every offending key (``section.key: unknown key`` / the validator's message)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{what}:{format_validation_error(error)}") from None


def format_validation_error(error: "ValidationError") -> str:
    """One problem: `` key: message``; several: one indented line each."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{location}: {'unknown key' if item['type'] == 'extra_forbidden' else item['msg']}")
    return f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  {problem}" for problem in problems)


_WORKER_TRACEBACK = re.compile(r"Original Traceback \(most recent call last\):")


def user_message(error: BaseException) -> str:
    """The text to show for ``error``. An error raised in a DataLoader worker is re-raised by torch with the worker's
    traceback folded into its message; only the original message is kept."""
    text = str(error)
    if not _WORKER_TRACEBACK.search(text):
        return text
    name = type(error).__name__
    for marker in (f"{type(error).__module__}.{name}: ", f"{name}: "):
        position = text.rfind(marker)
        if position >= 0:
            return text[position + len(marker):].strip()
    return text
