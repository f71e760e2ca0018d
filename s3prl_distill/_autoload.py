"""Start-up hook, imported by the ``s3prl_distill_autoload.pth`` file pip puts in site-packages.

It only inserts an import hook (no torch, no s3prl import at start-up). The hook acts when, and if, these modules
are first imported:

* ``torchaudio._extension.utils``: guard the native-library loader (see :mod:`s3prl_distill.compat`);
* ``s3prl``: apply the compat patches before any s3prl code runs;
* ``s3prl.hub``: register our upstream entries in it, so ``run_downstream.py -u <ours>``, ``S3PRLUpstream`` and
  ``hub.options()`` find them with no change to s3prl and no import in the user's code;
* ``s3prl.optimizers`` (or ``optimizers`` in a checkout): allow-list its LR-schedule classes for ``torch.load``;
* in a process started by our command line (``S3PRL_DISTILL_QUIET=1``): hide the known-harmless third-party
  warnings, as the command line does (:mod:`s3prl_distill.quiet`);
* ``transformers.models.auto.configuration_auto`` / ``.modeling_auto`` (and ``transformers.modeling_utils``):
  register our own transformers config / model class (:mod:`s3prl_distill.hf_config`, :mod:`s3prl_distill.hf_model`) with ``AutoConfig`` / ``AutoModel``,
  so ``AutoModel.from_pretrained`` reads the directories ``s3prl-distill export --to hf`` writes for students a
  stock config cannot express (no remote code); torch and our model code load only when transformers' ``AutoModel``
  does;
* modules s3prl's tasks import but PyPI s3prl lacks (:data:`FALLBACKS`): served from :mod:`s3prl_distill.s3prl_ext`
  under s3prl's name, only when no s3prl file exists (an s3prl git checkout keeps its own).

Set ``S3PRL_DISTILL_NO_AUTOLOAD=1`` to turn all of this off (then call ``s3prl_distill.register()`` yourself).
A failure inside a hook is logged and never breaks the import it is attached to.
"""

import logging
import os
import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.util import find_spec, spec_from_file_location

DISABLE_ENV = "S3PRL_DISTILL_NO_AUTOLOAD"

# s3prl package -> our package standing in for it when s3prl has none (its submodules follow via __path__).
FALLBACKS = {"s3prl.downstream.ctc.corpus": "s3prl_distill.s3prl_ext.ctc_corpus"}

logger = logging.getLogger("s3prl_distill")


def _guard_torchaudio(module):
    from .compat import guard_native_library_loader

    guard_native_library_loader(module)


def _apply_compat(_module=None):
    from .compat import apply

    apply()


def _allow_schedules(module):
    from .compat import allow_s3prl_schedules, apply

    # Scripts of an s3prl checkout (run_pretrain.py) import s3prl's modules as top-level names and never import the
    # s3prl package: its optimizers module is then the first sign of s3prl, so the compat patches go in here too.
    if allow_s3prl_schedules(module):
        apply()


def _register(module):
    from .registry import register

    register(module)


def _register_hf_config(_module):
    from .hf_config import register_config

    register_config()


def _halfway(name, module):
    """Whether ``name`` is being imported right now (and is not the module whose hook is running)."""
    loaded = sys.modules.get(name)
    return loaded is not None and loaded is not module and getattr(loaded.__spec__, "_initializing", False)


def _register_hf_model(module):
    # Runs when AutoModel's module or PreTrainedModel's has loaded. Nothing to register into before AutoModel's (a
    # process that never imports it never pays for our model code); and while either is half-way through its import
    # (one may import the other), that one's own hook registers once it is done.
    if TRANSFORMERS_MODEL_MODULE not in sys.modules or any(
            _halfway(name, module) for name in (TRANSFORMERS_MODEL_MODULE, TRANSFORMERS_MODELING_UTILS)):
        return
    from .hf_model import register_model

    register_model()


class _HookedLoader(Loader):
    """Runs the real loader, with a hook before and/or after the module's code executes."""

    def __init__(self, loader, before, after):
        self._loader = loader
        self._before = before
        self._after = after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _run_hook(self._before, module)
        self._loader.exec_module(module)
        _run_hook(self._after, module)

    def __getattr__(self, name):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)


def _run_hook(hook, module):
    if hook is None:
        return
    try:
        hook(module)
    except Exception:  # a bug of ours must not break the user's import
        logger.warning("s3prl_distill import hook %s failed for %s", hook.__name__, module.__name__, exc_info=True)


def _fallback_spec(fullname):
    """A spec that loads our stand-in package under s3prl's module name."""
    ours = find_spec(FALLBACKS[fullname])
    if ours is None or ours.origin is None:
        return None
    return spec_from_file_location(
        fullname, ours.origin, submodule_search_locations=list(ours.submodule_search_locations or [])
    )


class ImportHook(MetaPathFinder):
    def __init__(self, hooks, fallbacks=()):
        self.hooks = hooks  # module name -> (before, after)
        self.fallbacks = set(fallbacks)
        self._resolving = set()

    def find_spec(self, fullname, path=None, target=None):
        hook = self.hooks.get(fullname)
        if fullname in self.fallbacks and fullname not in self._resolving:
            return self._find_or_fallback(fullname, path, target)
        if hook is None or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._resolving.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, *hook)
        return spec

    def _find_or_fallback(self, fullname, path, target):
        self._resolving.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        return spec  # s3prl has its own: use it
        finally:
            self._resolving.discard(fullname)
        return _fallback_spec(fullname)


TRANSFORMERS_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
TRANSFORMERS_MODEL_MODULE = "transformers.models.auto.modeling_auto"
TRANSFORMERS_MODELING_UTILS = "transformers.modeling_utils"

_TORCHAUDIO_HOOK = {"torchaudio._extension.utils": (None, _guard_torchaudio)}
_ALL_HOOKS = dict(
    _TORCHAUDIO_HOOK,
    **{
        "s3prl": (_apply_compat, None),
        "s3prl.hub": (None, _register),
        # s3prl's optimizers, as a package module or as the top-level module scripts in a checkout import.
        "s3prl.optimizers": (None, _allow_schedules),
        "optimizers": (None, _allow_schedules),
        # transformers' Auto classes: ours registered as they load (AutoConfig first: AutoModel's module imports it).
        TRANSFORMERS_CONFIG_MODULE: (None, _register_hf_config),
        TRANSFORMERS_MODEL_MODULE: (None, _register_hf_model),
        TRANSFORMERS_MODELING_UTILS: (None, _register_hf_model),
    },
)


def _installed():
    return next((finder for finder in sys.meta_path if isinstance(finder, ImportHook)), None)


def install():
    """Insert the full hook (called at interpreter start-up) unless disabled by the environment."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0") or _installed() is not None:
        return
    sys.meta_path.insert(0, ImportHook(dict(_ALL_HOOKS), FALLBACKS))
    try:
        from .quiet import install_if_asked

        install_if_asked()  # a process our command line started: the same known warnings hidden as there
    except Exception:  # a bug of ours must not break start-up
        logger.warning("s3prl_distill could not install its warning filters", exc_info=True)


def install_torchaudio_guard():
    """Only the torchaudio guard, for explicit ``compat.apply()`` calls when the automatic hook is off."""
    hook = _installed()
    if hook is None:
        sys.meta_path.insert(0, ImportHook(dict(_TORCHAUDIO_HOOK), FALLBACKS))
    else:
        hook.hooks.update(_TORCHAUDIO_HOOK)
        hook.fallbacks.update(FALLBACKS)


install()
