"""The vocabularies of SKILL's layer analysis (``s3prl-distill layer-similarity --measure / --linkage``), with no
import at all: argparse reads an option's choices for ``--help`` and for an argument error, which then need neither
NumPy nor torch. :mod:`.layer_clustering` implements each name and imports them from here."""

MEASURES = ("linear_cka", "cosine")
LINKAGES = ("average", "complete", "single", "ward")
