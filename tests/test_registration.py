"""Our names reach s3prl with no edit to s3prl and no import in the user's code."""

import json
import sys
import types
from pathlib import Path

import s3prl_distill
from s3prl_distill import registry

from helpers import run_python

OURS = ["armhubert", "armhubert_local", "armhubert_url", "deepthin_fbank_local", "deepthin_fbank_url", "deepthin_local",
        "deepthin_url", "distilhubert_local", "distilhubert_ls960", "distilhubert_url", "dphubert_local",
        "dphubert_url", "fithubert", "fithubert_local", "fithubert_url", "maskhubert", "maskhubert_local", "maskhubert_url",
        "shallowwide_fbank_local", "shallowwide_fbank_url", "shallowwide_local", "shallowwide_url", "skill_local",
        "skill_url", "starhubert", "starhubert_local", "starhubert_url", "student_local", "student_url"]


def hub_names(autoload: bool, code: str = "") -> list:
    script = (
        "import json, s3prl_distill.compat as c; c.apply(); import s3prl.hub as hub; "
        + code
        + "print('NAMES', json.dumps(sorted(n for n in vars(hub) if not n.startswith('_'))))"
    )
    result = run_python(["-c", script], autoload=autoload)
    line = next((l for l in result.stdout.splitlines() if l.startswith("NAMES ")), None)
    assert line, result.stderr
    return json.loads(line[len("NAMES "):])


def test_our_names():
    assert s3prl_distill.upstream_names() == OURS


def test_no_name_collides_with_s3prl():
    s3prl_own = set(hub_names(autoload=False))
    assert "distilhubert" in s3prl_own and "distiller_local" in s3prl_own  # really s3prl's namespace
    assert s3prl_own.isdisjoint(OURS)


def test_automatic_registration_and_opt_out():
    assert set(OURS) <= set(hub_names(autoload=True))
    assert set(OURS).isdisjoint(hub_names(autoload=False))
    assert set(OURS) <= set(hub_names(autoload=False, code="import s3prl_distill; s3prl_distill.register(); "))


def test_hub_options_lists_ours():
    result = run_python(["-c", "from s3prl import hub; print('OPTIONS', hub.options())"], autoload=True)
    line = next(l for l in result.stdout.splitlines() if l.startswith("OPTIONS"))
    for name in OURS:
        assert repr(name) in line


def test_register_never_shadows_s3prl_names():
    theirs = object.__new__(type("S3prlEntry", (), {"__call__": lambda self: None}))
    fake_hub = types.SimpleNamespace(distilhubert_local=theirs)
    registered = registry.register(fake_hub)
    assert fake_hub.distilhubert_local is theirs
    assert "distilhubert_local" not in registered and "distilhubert_url" in registered


def test_s3prl_upstream_wrapper_finds_ours(session_distiller_ckpt):
    script = (
        "import sys, torch; from s3prl.nn import S3PRLUpstream; "
        "m = S3PRLUpstream('distilhubert_local', path_or_url=sys.argv[1]).eval(); "
        "hs, hl = m(torch.randn(2, 16000), torch.tensor([16000, 12000])); "
        "print('LAYERS', len(hs), tuple(hs[0].shape), hl[0].tolist())"
    )
    result = run_python(["-c", script, str(session_distiller_ckpt)], autoload=True)
    assert "LAYERS 6 (2, 50, 48) [50, 38]" in result.stdout, result.stderr


def test_console_command_lists_upstreams():
    command = Path(sys.executable).parent / "s3prl-distill"
    result = run_python([str(command), "upstreams"])
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == OURS
