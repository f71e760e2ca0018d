"""Each compat patch: s3prl fails without it, works with it, and it is a no-op where the API already works."""

import argparse
import textwrap
import types

import numpy as np
import pytest
import soundfile
import torch

from s3prl_distill import compat

from helpers import run_python

# Run in a fresh process with the automatic hook off: install the torchaudio guard, apply every patch except
# SKIP, then run SCENARIO. Prints "OK" or "FAIL <exception>".
PROBE = textwrap.dedent(
    """
    import sys, json
    skip, scenario = sys.argv[1], sys.argv[2]
    from s3prl_distill import _autoload, compat
    if skip != "torchaudio_native_libs":
        _autoload.install_torchaudio_guard()
    import torch, torchaudio, huggingface_hub
    patches = {
        "set_audio_backend": lambda: compat.patch_set_audio_backend(torchaudio),
        "sox_effects": lambda: compat.patch_sox_effects(torchaudio),
        "audio_io": lambda: compat.patch_audio_io(torchaudio),
        "huggingface_hub": lambda: compat.patch_huggingface_hub(huggingface_hub),
        "torch_load_namespace": lambda: compat.patch_torch_load_namespace(torch),
        "s3prl_schedules": lambda: compat.allow_s3prl_schedules(__import__("s3prl.optimizers").optimizers),
    }
    for name, patch in patches.items():
        if name != skip:
            patch()
    try:
        exec(scenario)
        print("OK")
    except BaseException as error:
        print("FAIL", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    """
)

SCENARIOS = {
    "set_audio_backend": "import s3prl.hub",
    "sox_effects": "import s3prl.hub",
    "huggingface_hub": "import s3prl.downstream.runner",
    "audio_io": "import torchaudio; torchaudio.load(sys.argv[3])",
    "torch_load_namespace": "torch.load(sys.argv[3])",
    "s3prl_schedules": "torch.load(sys.argv[3])",
}


def probe(skip: str, scenario: str, argument: str = "") -> str:
    result = run_python(["-c", PROBE, skip, scenario, argument], autoload=False, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("OK", "FAIL"))]
    assert lines, result.stdout + result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    soundfile.write(folder / "tone.wav", np.zeros(1600, dtype=np.float32), 16000)
    torch.save({"Args": argparse.Namespace(mode="train")}, folder / "args.ckpt")
    from s3prl.optimizers import get_optimizer

    # What s3prl's pretrain runner saves: AdamW_with_schedule keeps a schedule object in each param group.
    optimizer = get_optimizer([torch.nn.Linear(2, 2)], 100, {"name": "AdamW_with_schedule", "lr": 1e-3})
    torch.save({"Optimizer": optimizer.state_dict()}, folder / "optimizer.ckpt")
    return {
        "audio_io": str(folder / "tone.wav"),
        "torch_load_namespace": str(folder / "args.ckpt"),
        "s3prl_schedules": str(folder / "optimizer.ckpt"),
    }


@pytest.mark.parametrize("patch", sorted(SCENARIOS))
def test_each_patch_is_needed_and_sufficient(patch, probe_files):
    argument = probe_files.get(patch, "")
    assert probe("nothing", SCENARIOS[patch], argument) == "OK"
    assert probe(patch, SCENARIOS[patch], argument).startswith("FAIL")


def torchaudio_native_libraries_load() -> bool:
    """Whether this torchaudio's native libraries load on this torch (False: CUDA build on a CPU torch)."""
    result = run_python(
        ["-c", "import torchaudio._extension.utils as u, sys; [u._load_lib(n) for n in ('_torchaudio',)]"],
        autoload=False,
    )
    return result.returncode == 0


def test_torchaudio_imports_with_the_guard_whatever_its_native_libraries():
    with_guard = run_python(["-c", "import torchaudio, torchaudio.functional; print('OK')"], autoload=True)
    assert with_guard.returncode == 0 and "OK" in with_guard.stdout, with_guard.stderr
    without_guard = run_python(["-c", "import torchaudio"], autoload=False)
    if torchaudio_native_libraries_load():
        assert without_guard.returncode == 0  # the guard has nothing to do here
    else:
        assert without_guard.returncode != 0 and "OSError" in without_guard.stderr


def test_native_library_guard_treats_unloadable_libraries_as_absent():
    calls = []

    def broken(lib):
        calls.append(lib)
        raise OSError("libc10_cuda.so: cannot open shared object file")

    utils = types.SimpleNamespace(_load_lib=broken)
    assert compat.guard_native_library_loader(utils) is True
    assert utils._load_lib("_torchaudio") is False and calls == ["_torchaudio"]
    assert compat.guard_native_library_loader(utils) is False  # already guarded
    working = types.SimpleNamespace(_load_lib=lambda lib: True)
    compat.guard_native_library_loader(working)
    assert working._load_lib("_torchaudio") is True


def test_patches_leave_working_apis_alone():
    def sentinel(*args, **kwargs):
        return "original"

    sox = types.ModuleType("fake_torchaudio.sox_effects")
    old_torchaudio = types.SimpleNamespace(
        __name__="fake_torchaudio", __version__="2.8.0", set_audio_backend=sentinel, sox_effects=sox, load=sentinel, save=sentinel,
        info=sentinel,
    )
    assert compat.patch_set_audio_backend(old_torchaudio) is False
    assert compat.patch_sox_effects(old_torchaudio) is False
    assert compat.patch_audio_io(old_torchaudio) == []
    assert old_torchaudio.set_audio_backend is sentinel and old_torchaudio.sox_effects is sox
    assert old_torchaudio.load is sentinel and old_torchaudio.save is sentinel and old_torchaudio.info is sentinel

    old_hub = types.SimpleNamespace(HfFolder=sentinel, Repository=sentinel)
    assert compat.patch_huggingface_hub(old_hub) == []
    assert old_hub.HfFolder is sentinel

    old_torch = types.SimpleNamespace(serialization=types.SimpleNamespace())  # torch < 2.4: no allow-list
    assert compat.patch_torch_load_namespace(old_torch) is False


def test_schedule_allow_list_covers_checkout_module_names_and_only_s3prl():
    import s3prl.optimizers

    assert "WarmupLinearSchedule" in compat.allow_s3prl_schedules(s3prl.optimizers)
    allowed = {entry[1] for entry in torch.serialization.get_safe_globals() if isinstance(entry, tuple)}
    assert {"optimizers.WarmupLinearSchedule", "s3prl.optimizers.WarmupLinearSchedule"} <= allowed
    stranger = types.ModuleType("optimizers")
    stranger.WarmupLinearSchedule = type("WarmupLinearSchedule", (), {})
    assert compat.allow_s3prl_schedules(stranger) == []  # not s3prl's: no get_optimizer


def test_apply_is_idempotent_and_reports_what_it_did():
    first = compat.apply()
    assert compat.apply() == first
    import torchaudio

    assert callable(torchaudio.set_audio_backend) and torchaudio.sox_effects.apply_effects_file


def test_sox_effects_stand_in_applies_the_effects_s3prl_uses(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, size=(2, 32000)).astype(np.float32)
    tensor = torch.from_numpy(stereo)
    mono, rate = compat.apply_effects_tensor(tensor, 32000, [["channels", "1"]])
    assert rate == 32000 and torch.allclose(mono[0], tensor.mean(0))
    louder, _ = compat.apply_effects_tensor(tensor, 32000, [["gain", "6.0"]])
    assert torch.allclose(louder, tensor * 10 ** (6 / 20))
    resampled, rate = compat.apply_effects_tensor(tensor, 32000, [["rate", "16000"]])
    assert rate == 16000 and resampled.shape == (2, 16000)
    with pytest.raises(ValueError, match="'reverb'"):
        compat.apply_effects_tensor(tensor, 32000, [["reverb", "50"]])
    # The KS dataset's exact call.
    soundfile.write(tmp_path / "s.wav", stereo.T, 32000, subtype="FLOAT")
    wav, rate = compat.apply_effects_file(
        str(tmp_path / "s.wav"), [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]]
    )
    assert rate == 16000 and wav.shape == (1, 16000)
    expected, _ = compat.apply_effects_tensor(tensor, 32000, [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
    assert torch.allclose(wav, expected, atol=1e-6)


def test_soundfile_audio_io_matches_soundfile(tmp_path):
    samples = (np.arange(-8000, 8000, dtype=np.int16) * 2).astype(np.int16)
    path = tmp_path / "a.flac"
    soundfile.write(path, samples, 16000)
    waveform, rate = compat.soundfile_load(str(path))
    assert rate == 16000 and waveform.shape == (1, 16000) and waveform.dtype == torch.float32
    assert torch.allclose(waveform[0], torch.from_numpy(samples.astype(np.float32) / 32768))
    part, _ = compat.soundfile_load(str(path), frame_offset=100, num_frames=50)
    assert torch.equal(part, waveform[:, 100:150])
    compat.soundfile_save(str(tmp_path / "b.wav"), waveform, 16000)
    again, _ = compat.soundfile_load(str(tmp_path / "b.wav"))
    assert torch.allclose(again, waveform, atol=1 / 32768)
    info = compat.soundfile_info(str(tmp_path / "b.wav"))
    assert (info.sample_rate, info.num_frames, info.num_channels, info.bits_per_sample) == (16000, 16000, 1, 16)


def test_removed_hub_apis_fail_clearly_when_used():
    hub = types.SimpleNamespace()
    assert compat.patch_huggingface_hub(hub) == ["HfFolder", "Repository"]
    with pytest.raises(RuntimeError, match="removed in huggingface_hub 1.0"):
        hub.HfFolder.save_token("x")
    with pytest.raises(RuntimeError, match="push_to_hf_hub"):
        hub.Repository("dir")
