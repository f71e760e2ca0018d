"""Modules s3prl's tasks import but the PyPI s3prl 0.4.18 sdist does not ship (directories without ``__init__.py``
are dropped from it). The start-up hook serves them under s3prl's own module names *only when s3prl has none*: an
s3prl git checkout keeps using its own files.

The mapping is ``s3prl_distill._autoload.FALLBACKS``.

| s3prl module | ours | needed by |
|---|---|---|
| ``s3prl.downstream.ctc.corpus`` (+ ``.libriphone``) | :mod:`s3prl_distill.s3prl_ext.ctc_corpus` | PR (``-d ctc`` with the libriphone corpus) |
"""
