"""Upstream families, one folder each with its ``hubconf.py`` entry functions (found by
:func:`s3prl_distill.registry.families`), all built on the one expert of ``expert.py``."""
