"""Upstream families, one folder each (``hubconf.py`` entry functions + ``expert.py``), as in s3prl."""
