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


def upstream_names() -> List[str]:
    """The upstream names this package adds to s3prl."""
    from .registry import upstream_names as _names

    return _names()
