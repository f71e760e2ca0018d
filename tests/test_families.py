"""Family facts that live in more than one place, held together: every training method's family is presented by a
registered upstream of ours, the one its exports name."""

import pytest

from s3prl_distill.checkpoint import CheckpointError
from s3prl_distill.formats.huggingface import GENERIC_FAMILY, OWN_UPSTREAM_FAMILIES, upstream_of
from s3prl_distill.model import deepthin_config, distilhubert_config
from s3prl_distill.pretrain.methods import METHODS
from s3prl_distill.registry import upstream_names


def test_every_methods_family_has_its_own_registered_upstream():
    registered = set(upstream_names())
    for name, spec in METHODS.items():
        if spec.family == "asr_distill":  # named by the student's shape: deepthin(_fbank) / shallowwide(_fbank)
            continue
        assert spec.family in OWN_UPSTREAM_FAMILIES, (name, spec.family)
        assert f"{upstream_of(distilhubert_config(), spec.family)}_local" in registered, (name, spec.family)
    assert f"{upstream_of(deepthin_config(), 'asr_distill')}_local" in registered
    assert {f"{family}_local" for family in (*OWN_UPSTREAM_FAMILIES, GENERIC_FAMILY)} <= registered


def test_an_unknown_family_is_named_not_exported_as_the_generic_student():
    assert upstream_of(distilhubert_config(), GENERIC_FAMILY) == "student"
    with pytest.raises(CheckpointError, match="no upstream of ours is known to present a 'newhubert' student"):
        upstream_of(distilhubert_config(), "newhubert")
