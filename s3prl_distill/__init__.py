"""s3prl-distill: compact distilled speech SSL students for the s3prl / SUPERB ecosystem.

This module stays import-light (no torch): the start-up hook imports it in every Python process.
"""

from typing import List

__version__ = "0.1.0"


def register() -> List[str]:
    """Make s3prl usable on today's stack and add our upstreams to ``s3prl.hub``.

    Happens automatically when s3prl is imported (unless ``S3PRL_DISTILL_NO_AUTOLOAD=1``); calling it again is
    harmless. Returns the registered upstream names.
    """
    from .registry import register as _register

    return _register()


def register_transformers() -> None:
    """Register our own transformers classes (``AutoConfig`` / ``AutoModel`` for the model type
    ``s3prl_distill_student``), so ``AutoModel.from_pretrained`` reads every directory ``s3prl-distill export --to hf``
    writes. Happens automatically when transformers' Auto classes are first imported (unless
    ``S3PRL_DISTILL_NO_AUTOLOAD=1``); this imports transformers and torch. Calling it again is harmless."""
    from .hf_model import register_model

    register_model()


def upstream_names() -> List[str]:
    """The upstream names this package adds to s3prl."""
    from .registry import upstream_names as _names

    return _names()
