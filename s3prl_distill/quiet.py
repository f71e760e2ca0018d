"""Hide the third-party messages we know to be harmless, by exact pattern, so a command shows what matters.

Nothing else is hidden: each entry below names the category (or logger), the message's beginning and the module
that emits it, and why it is harmless here. ``s3prl-distill --show-third-party-warnings ...`` or
``S3PRL_DISTILL_SHOW_WARNINGS=1`` shows them all again.

The command line calls :func:`hide_known_noise` at start and sets ``S3PRL_DISTILL_QUIET=1`` in its environment;
every Python process it starts (s3prl's runner in a SUPERB sweep, torchrun's workers, data-loader workers) then
installs the same filters from the start-up hook (:mod:`s3prl_distill._autoload`), unless
``S3PRL_DISTILL_NO_AUTOLOAD=1``. A user's own Python process is left alone (the variable is unset there).

This module is imported by the start-up hook: standard library only.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import List, Tuple, Type

SHOW_ENV = "S3PRL_DISTILL_SHOW_WARNINGS"
QUIET_ENV = "S3PRL_DISTILL_QUIET"  # set by the command line for the processes it starts


@dataclass(frozen=True)
class KnownWarning:
    """A ``warnings.warn`` we ignore: ``category``, the message's beginning, the emitting module (regexes)."""

    category: Type[Warning]
    message: str
    module: str
    why: str


@dataclass(frozen=True)
class KnownLogLine:
    """A log record we drop: the logger's exact name and the message's beginning (plain text)."""

    logger: str
    message: str
    why: str


KNOWN_WARNINGS: Tuple[KnownWarning, ...] = (
    KnownWarning(FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated", r"torch\.nn\.utils\.weight_norm\Z",
                 "HuBERT's positional convolution (s3prl's and fairseq's code) uses the old weight_norm; "
                 "it works and checkpoints keep their weight_g/weight_v names"),
    KnownWarning(FutureWarning, r"`torch\.cuda\.amp\.(autocast|GradScaler)\(args\.\.\.\)` is deprecated",
                 r"(s3prl\.)?(downstream|pretrain)\.runner\Z",
                 "s3prl's runners use the old AMP spelling, which still works (and is off unless fp16)"),
)

KNOWN_LOG_LINES: Tuple[KnownLogLine, ...] = (
    KnownLogLine("s3prl.upstream.espnet_hubert.expert", "ESPnet is not installed",
                 "logged when s3prl's hub is imported; only the espnet_hubert upstream needs ESPnet"),
    KnownLogLine("s3prl.upstream.hubert.hubert_model", "HubertModel Config:",
                 "a full HubertConfig dump at every HuBERT build (teacher, SUPERB upstream)"),
    KnownLogLine("s3prl.upstream.multires_hubert.hubert_model", "HubertModel Config:", "the same dump"),
    KnownLogLine("s3prl.upstream.wavlm.WavLM", "WavLM Config:", "the same dump for WavLM"),
)


def showing_third_party_warnings() -> bool:
    """Whether the user asked to see everything (``S3PRL_DISTILL_SHOW_WARNINGS`` set to anything but 0/empty)."""
    return os.environ.get(SHOW_ENV, "").strip() not in ("", "0")


class DropKnownLines(logging.Filter):
    """Attached to one logger: drops that logger's records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: List[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to hide
            return True
        return not message.startswith(self.prefixes)


_installed = False


def install_filters() -> None:
    """Install the filters of :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_LINES` in this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
    prefixes: dict = {}
    for line in KNOWN_LOG_LINES:
        prefixes.setdefault(line.logger, []).append(line.message)
    for name, messages in prefixes.items():
        logging.getLogger(name).addFilter(DropKnownLines(messages))


def hide_known_noise() -> bool:
    """For the command line: unless the user asked to see them, hide the known messages here and in every process
    started from here on. Returns whether they are hidden."""
    if showing_third_party_warnings():
        os.environ.pop(QUIET_ENV, None)
        return False
    os.environ[QUIET_ENV] = "1"
    install_filters()
    return True


def install_if_asked() -> None:
    """For the start-up hook: install the filters in a process the command line started."""
    if os.environ.get(QUIET_ENV) == "1" and not showing_third_party_warnings():
        install_filters()

