"""Stand-in for ``s3prl.downstream.ctc.corpus`` (PyPI s3prl lacks it): only the ``libriphone`` corpus (SUPERB PR)."""
