"""Make s3prl 0.4.18 import and run on today's stack (torch >= 2.6, torchaudio >= 2.9, huggingface_hub >= 1.0).

Each patch fills in an API that is *missing* or *broken*; where the API exists and works (an older stack), the patch
does nothing, so no working behaviour ever changes. :func:`apply` is idempotent and returns the names of the
patches that took effect. The automatic start-up hook (:mod:`s3prl_distill._autoload`) calls it right before s3prl
is first imported; call it yourself when the hook is disabled.

| patch | what breaks without it |
|---|---|
| ``torchaudio_native_libs`` | ``import torchaudio`` on a CPU-only torch: torchaudio 2.11's wheel ships CUDA-linked native libraries |
| ``set_audio_backend`` | ``import s3prl.hub`` (byol_s calls it at import) and ``run_downstream.main()`` |
| ``sox_effects`` | ``import s3prl.hub`` (mos_prediction) and the KS task's dataset |
| ``audio_io`` | ``torchaudio.load``/``save`` without torchcodec (PR, ASR, SID, ER datasets); ``torchaudio.info`` |
| ``huggingface_hub`` | ``run_downstream.py`` and ``downstream/runner.py`` import ``HfFolder``/``Repository`` |
| ``torch_load_namespace`` | ``run_downstream.py -e``: torch's ``weights_only`` default rejects the saved ``Args`` Namespace |
| ``s3prl_schedules`` | ``run_pretrain.py -e``: the same default rejects the LR-schedule objects in s3prl's optimizer state |
| ``s3prl_safe_load`` | (security, not breakage) s3prl's distiller, mockingjay and roberta loaders unpickle fully: every
  ``torch.load`` from s3prl's code goes through :func:`s3prl_distill.checkpoint.load_checkpoint`'s safe reader |
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import types
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .quiet import showing_third_party_warnings

logger = logging.getLogger(__name__)


# --- torchaudio's native libraries ----------------------------------------------------------------------------------

skipped_native_libraries: List[str] = []  # libraries the guard treated as absent in this process


def guard_native_library_loader(utils_module: types.ModuleType) -> bool:
    """Wrap ``torchaudio._extension.utils._load_lib`` so that a native library that cannot load (CUDA-linked on a
    CPU-only torch) counts as absent, as if it had been deleted, instead of failing ``import torchaudio``.

    Must run after that module executes and before ``torchaudio._extension`` imports the function; the start-up
    hook does this. A library that loads is unaffected.
    """
    original = getattr(utils_module, "_load_lib", None)
    if original is None or getattr(original, "_s3prl_distill_guard", False):
        return False

    def load_lib(lib: str) -> bool:
        try:
            return original(lib)
        except OSError as error:
            skipped_native_libraries.append(lib)
            # Said at every start of every command otherwise; the flag that shows third-party warnings shows it.
            logger.log(
                logging.INFO if showing_third_party_warnings() else logging.DEBUG,
                "torchaudio native library %r cannot be loaded (%s); continuing without it: the pure-Python "
                "parts of torchaudio work, forced_align / rnnt_loss / CTC decoders do not",
                lib,
                str(error).splitlines()[0],
            )
            return False

    load_lib._s3prl_distill_guard = True  # type: ignore[attr-defined]
    utils_module._load_lib = load_lib
    return True


# --- torchaudio backend and sox_effects -----------------------------------------------------------------------------

def patch_set_audio_backend(torchaudio: types.ModuleType) -> bool:
    """Removed in torchaudio 2.9; s3prl only calls it to pick a backend that no longer exists, so a no-op is exact."""
    if hasattr(torchaudio, "set_audio_backend"):
        return False

    def set_audio_backend(backend: Optional[str] = None) -> None:
        logger.debug("torchaudio.set_audio_backend(%r) ignored: backends were removed in torchaudio 2.9", backend)

    torchaudio.set_audio_backend = set_audio_backend
    return True


def apply_effects_tensor(
    tensor: Any, sample_rate: int, effects: Sequence[Sequence[str]], channels_first: bool = True
) -> Tuple[Any, int]:
    """The subset of sox effects s3prl uses: ``channels N``, ``rate N``, ``gain DB``. Others raise ``ValueError``."""
    import torch
    import torchaudio.functional as AF

    waveform = tensor if channels_first else tensor.transpose(0, 1)
    if waveform.dim() != 2:
        raise ValueError(f"apply_effects_tensor expects a 2-D (channels, time) tensor, got shape {tuple(tensor.shape)}")
    waveform = waveform.to(torch.float32)
    for effect in effects:
        name, *arguments = [str(part) for part in effect]
        if name == "channels" and len(arguments) == 1:
            channels = int(arguments[0])
            if channels == 1:
                waveform = waveform.mean(dim=0, keepdim=True)
            elif channels != waveform.shape[0]:
                raise ValueError(f"sox effect 'channels {channels}' on {waveform.shape[0]}-channel audio is unsupported")
        elif name == "rate" and len(arguments) == 1:
            target = int(float(arguments[0]))
            if target != sample_rate:
                waveform = AF.resample(waveform, sample_rate, target)
                sample_rate = target
        elif name == "gain" and len(arguments) == 1:
            waveform = waveform * (10.0 ** (float(arguments[0]) / 20.0))
        else:
            raise ValueError(
                f"sox effect {list(effect)!r} is not supported without torchaudio.sox_effects "
                "(supported: channels 1, rate N, gain DB)"
            )
    return (waveform if channels_first else waveform.transpose(0, 1)), sample_rate


def apply_effects_file(
    path: Any, effects: Sequence[Sequence[str]], normalize: bool = True, channels_first: bool = True, format=None
) -> Tuple[Any, int]:
    """Read ``path`` with soundfile, then :func:`apply_effects_tensor`."""
    if not normalize:
        raise ValueError("apply_effects_file(normalize=False) is not supported without torchaudio.sox_effects")
    waveform, sample_rate = soundfile_load(path)
    waveform, sample_rate = apply_effects_tensor(waveform, sample_rate, effects, channels_first=True)
    return (waveform if channels_first else waveform.transpose(0, 1)), sample_rate


def patch_sox_effects(torchaudio: types.ModuleType) -> bool:
    """Removed in torchaudio 2.9; s3prl imports it at module level (mos_prediction, speech_commands)."""
    if "sox_effects" in vars(torchaudio) or _module_exists(f"{torchaudio.__name__}.sox_effects"):
        return False
    module = types.ModuleType(f"{torchaudio.__name__}.sox_effects")
    module.__doc__ = "Stand-in for torchaudio.sox_effects installed by s3prl_distill.compat (a subset of effects)."
    module.apply_effects_tensor = apply_effects_tensor
    module.apply_effects_file = apply_effects_file
    module.effect_names = lambda: ["channels", "rate", "gain"]
    sys.modules[module.__name__] = module
    torchaudio.sox_effects = module
    return True


# --- audio I/O ------------------------------------------------------------------------------------------------------

def soundfile_load(
    uri: Any,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: Optional[str] = None,
    buffer_size: int = 4096,
    backend: Optional[str] = None,
) -> Tuple[Any, int]:
    """``torchaudio.load`` through soundfile: float32 in [-1, 1], shape (channels, frames), and the sample rate."""
    import soundfile
    import torch

    if not normalize:
        raise ValueError("torchaudio.load(normalize=False) is not supported by the soundfile fallback")
    data, sample_rate = soundfile.read(
        uri, start=frame_offset, frames=num_frames, dtype="float32", always_2d=True, format=format
    )
    waveform = torch.from_numpy(data.T.copy() if channels_first else data.copy())
    return waveform, sample_rate


def soundfile_save(
    uri: Any,
    src: Any,
    sample_rate: int,
    channels_first: bool = True,
    format: Optional[str] = None,
    encoding: Optional[str] = None,
    bits_per_sample: Optional[int] = None,
    **_: Any,
) -> None:
    """``torchaudio.save`` through soundfile (16-bit PCM unless ``bits_per_sample`` says otherwise)."""
    import soundfile

    data = src.detach().cpu()
    data = (data.t() if channels_first else data).numpy()
    subtype = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}.get(bits_per_sample or 16)
    if encoding and "FLOAT" in encoding.upper():
        subtype = "FLOAT"
    soundfile.write(uri, data, sample_rate, subtype=subtype, format=format)


class AudioMetaData(types.SimpleNamespace):
    """What ``torchaudio.info`` used to return."""


def soundfile_info(uri: Any, format: Optional[str] = None, **_: Any) -> AudioMetaData:
    import soundfile

    info = soundfile.info(uri)
    bits = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64}
    return AudioMetaData(
        sample_rate=info.samplerate,
        num_frames=info.frames,
        num_channels=info.channels,
        bits_per_sample=bits.get(info.subtype, 0),
        encoding=info.subtype,
    )


def patch_audio_io(torchaudio: types.ModuleType) -> List[str]:
    """torchaudio >= 2.9 routes ``load``/``save`` through torchcodec; without it they raise ``ImportError``.
    Replace them by soundfile only in that case, and add ``info`` where it was removed."""
    replaced = []
    needs_torchcodec = _version_at_least(getattr(torchaudio, "__version__", "0"), (2, 9))
    broken = needs_torchcodec and not _module_exists("torchcodec")
    for name, replacement in (("load", soundfile_load), ("save", soundfile_save)):
        if broken or not hasattr(torchaudio, name):
            setattr(torchaudio, name, replacement)
            replaced.append(name)
    if not hasattr(torchaudio, "info"):
        torchaudio.info = soundfile_info
        replaced.append("info")
    return replaced


# --- huggingface_hub ------------------------------------------------------------------------------------------------

def _removed_hf_api(name: str) -> type:
    def fail(*_: Any, **__: Any) -> None:
        raise RuntimeError(
            f"huggingface_hub.{name} was removed in huggingface_hub 1.0; s3prl's --push_to_hf_hub and "
            "--hub huggingface options need huggingface_hub<1.0"
        )

    return type(name, (), {"__init__": fail, "save_token": staticmethod(fail), "get_token": staticmethod(fail)})


def patch_huggingface_hub(hub_module: types.ModuleType) -> List[str]:
    """s3prl's runner imports ``HfFolder`` and ``Repository`` at module level but uses them only for Hub uploads."""
    added = []
    for name in ("HfFolder", "Repository"):
        try:
            getattr(hub_module, name)  # huggingface_hub resolves names lazily: a missing one raises
        except (AttributeError, ImportError):
            setattr(hub_module, name, _removed_hf_api(name))
            added.append(name)
    return added


# --- torch.load ---------------------------------------------------------------------------------------------------

def patch_torch_load_namespace(torch_module: types.ModuleType) -> bool:
    """torch >= 2.6 loads with ``weights_only=True``; s3prl's runner checkpoints store ``Args`` as a Namespace."""
    serialization = torch_module.serialization
    if not hasattr(serialization, "add_safe_globals"):
        return False  # torch < 2.4: full unpickling is still the default
    if argparse.Namespace in serialization.get_safe_globals():
        return False
    serialization.add_safe_globals([argparse.Namespace])
    return True


def allow_s3prl_schedules(optimizers_module: types.ModuleType) -> List[str]:
    """s3prl's pretrain checkpoints pickle LR-schedule objects (plain data: warm-up and total steps) inside the
    optimizer state, under the module name ``optimizers`` (run from a checkout) or ``s3prl.optimizers``; torch >= 2.6
    refuses them, so ``run_pretrain.py -e`` cannot resume. Allow-list those classes, and only those."""
    import torch

    from .checkpoint import S3PRL_SCHEDULES

    serialization = torch.serialization
    if not hasattr(serialization, "add_safe_globals") or not hasattr(optimizers_module, "get_optimizer"):
        return []  # torch < 2.4 (no allow-list needed), or a module named "optimizers" that is not s3prl's
    allowed = []
    for name in S3PRL_SCHEDULES:
        cls = getattr(optimizers_module, name, None)
        if isinstance(cls, type):
            serialization.add_safe_globals([(cls, f"optimizers.{name}"), (cls, f"s3prl.optimizers.{name}")])
            allowed.append(name)
    return allowed


def _guard_s3prl_loads() -> bool:
    from .checkpoint import guard_s3prl_loads  # at call time: checkpoint imports torch

    return guard_s3prl_loads()


# --- entry point ----------------------------------------------------------------------------------------------------

def _version_at_least(version: str, minimum: Tuple[int, int]) -> bool:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= minimum


def _module_exists(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_applied: Optional[List[str]] = None


def apply() -> List[str]:
    """Apply every patch that is needed; safe to call many times. Returns the names of patches that took effect."""
    global _applied
    if _applied is not None:
        return list(_applied)
    applied: List[str] = []
    if "torchaudio" not in sys.modules:
        from . import _autoload

        _autoload.install_torchaudio_guard()
    import huggingface_hub
    import torch
    import torchaudio

    steps: List[Tuple[str, Callable[[], Any]]] = [
        ("set_audio_backend", lambda: patch_set_audio_backend(torchaudio)),
        ("sox_effects", lambda: patch_sox_effects(torchaudio)),
        ("audio_io", lambda: patch_audio_io(torchaudio)),
        ("huggingface_hub", lambda: patch_huggingface_hub(huggingface_hub)),
        ("torch_load_namespace", lambda: patch_torch_load_namespace(torch)),
        ("s3prl_safe_load", _guard_s3prl_loads),
    ]
    for name, step in steps:
        if step():
            applied.append(name)
    if skipped_native_libraries:
        applied.insert(0, "torchaudio_native_libs")
    _applied = applied
    logger.debug("s3prl_distill compat patches applied: %s", applied)
    return list(applied)
