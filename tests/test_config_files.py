"""Config files: variants are overlays (``extends`` a base, ``remove`` what the variant does not have) that read back
as the whole files they replaced; several ``-g`` files merge in order; a broken chain is an error naming the file."""

from pathlib import Path

import pytest
import yaml

from s3prl_distill.errors import ConfigError
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.pretrain.config_files import read_config, read_configs

PRETRAIN = Path(__file__).resolve().parents[1] / "pretrain"

# Each variant as the whole file it was before it became an overlay (commit fce7116), kept as data: what reading the
# overlay must give, key for key (comments aside).
BEFORE = Path(__file__).resolve().parent / "data" / "shipped_before_overlays" / "variants"
VARIANTS = sorted(str(path.relative_to(BEFORE)) for path in BEFORE.glob("*/*.yaml"))


def test_every_variant_was_recorded():
    assert VARIANTS == ["asr_distill/config_fbank.yaml", "asr_distill/config_shallowwide.yaml",
                        "dphubert/config_skill.yaml", "fithubert/config_fitw2v2.yaml"]


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_reads_as_the_whole_file_it_replaced(name):
    path = PRETRAIN / name
    raw = yaml.safe_load(path.read_text())
    assert raw["extends"] == "config.yaml" and len(raw) < 8  # an overlay: only what differs
    expected = yaml.safe_load((BEFORE / name).read_text())
    merged = read_config(path)
    follows = merged.pop("follow_teacher")  # new since (issue 18): what the variant takes from its teacher
    assert follows["depth"] is (name != "asr_distill/config_shallowwide.yaml")
    assert merged == expected
    assert list(merged) == list(expected)  # the sections in the same order, as the runner writes them back
    assert load_config(path).teacher.name == expected["teacher"]["name"]  # and it validates


def test_remove_drops_what_the_base_has_and_the_variant_does_not(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"student": {"feature_extractor": {"norm": "group_norm"},
                                                                    "feature_dropout": 0.0}, "method": {"a": 1}}))
    overlay = tmp_path / "variant.yaml"
    overlay.write_text(yaml.safe_dump({"extends": "base.yaml", "remove": ["student.feature_extractor"],
                                       "student": {"feature_dropout": 0.1, "fbank_front_end": {"num_mel_bins": 80}}}))
    assert read_config(overlay) == {"student": {"feature_dropout": 0.1, "fbank_front_end": {"num_mel_bins": 80}},
                                    "method": {"a": 1}}
    # A stale entry (the base no longer has the key) is an error, not a silent no-op.
    overlay.write_text(yaml.safe_dump({"extends": "base.yaml", "remove": ["student.pruning"]}))
    with pytest.raises(ConfigError, match=r"variant.yaml: remove names student.pruning, which its base does not have"):
        read_config(overlay)
    overlay.write_text(yaml.safe_dump({"remove": ["student.feature_extractor"]}))
    with pytest.raises(ConfigError, match=r"variant.yaml: remove needs an extends base"):
        read_config(overlay)
    overlay.write_text(yaml.safe_dump({"extends": "base.yaml", "remove": "student.feature_extractor"}))
    with pytest.raises(ConfigError, match=r"variant.yaml: remove must be a list of dotted keys"):
        read_config(overlay)


def test_a_chain_of_bases_merges_in_order_and_lists_replace(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"x": {"keep": 1, "list": [1, 2, 3], "v": "a"}}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(yaml.safe_dump({"extends": "../a.yaml", "x": {"v": "b"}}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"extends": "sub/b.yaml", "x": {"list": [9]}}))
    assert read_config(tmp_path / "c.yaml") == {"x": {"keep": 1, "list": [9], "v": "b"}}
    # Several files (-g c.yaml -g d.yaml): each resolved, then merged in order.
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"x": {"v": "d"}}))
    assert read_configs([tmp_path / "c.yaml", tmp_path / "d.yaml"]) == {"x": {"keep": 1, "list": [9], "v": "d"}}


def test_a_cycle_or_a_missing_base_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nx: 1\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ny: 2\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends forms a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        read_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(ConfigError, match="forms a cycle"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: its extends base .*gone.yaml does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "odd.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"odd.yaml: extends must be a file name"):
        read_config(tmp_path / "odd.yaml")
    with pytest.raises(ConfigError, match=r"pretrain config .*none.yaml does not exist"):
        load_config(tmp_path / "none.yaml")


def test_a_variant_takes_a_snippet_and_overrides_like_any_config(tmp_path):
    snippet = tmp_path / "skill_groups.yaml"
    snippet.write_text(yaml.safe_dump({"student": {"prediction_head": {"target_groups": [[0, 1], [2, 3, 4]]}}}))
    config = load_config([PRETRAIN / "dphubert" / "config_skill.yaml", snippet], "config.runner.total_steps=7")
    assert config.student.prediction_head.target_groups == [[0, 1], [2, 3, 4]]
    assert (config.runner.total_steps, config.teacher.name, config.method.name) == (7, "wavlm_local", "skill")


@pytest.mark.parametrize("name", VARIANTS)
def test_base_then_variant_as_two_files_reads_as_the_variant(name):
    """``-g config.yaml -g config_fbank.yaml``: what the variant removes from its base goes from the earlier file
    too, so the pair gives the variant (the fbank front end without the CNN sections) rather than a mix."""
    path = PRETRAIN / name
    assert read_configs([path.parent / "config.yaml", path]) == read_config(path)
    assert load_config([path.parent / "config.yaml", path]) == load_config(path)
