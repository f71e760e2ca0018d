"""The five SUPERB tasks we run (PR, ASR, KS, SID, ER): what s3prl calls them, their data layout under one data
root, their config (``configs/<task>.yaml`` with ``${...}`` placeholders), their metric and prediction files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from s3prl_distill.errors import ConfigError, UserError

CONFIG_DIR = Path(__file__).parent / "configs"
# Vocabularies used when the data root has none: s3prl's 71 phones (SIL, SPN, 69 stressed ARPAbet) and its 28
# ASR characters in s3prl's order (neither file ships with PyPI s3prl).
SHIPPED_PHONEME_VOCAB = Path(__file__).resolve().parents[1] / "minisuperb" / "phoneme.txt"
SHIPPED_CHAR_DICT = CONFIG_DIR / "char.dict"


@dataclass(frozen=True)
class Task:
    key: str
    downstream: str  # s3prl's -d
    title: str
    metric: str
    higher_is_better: bool
    best_checkpoint: str  # written by s3prl's runner when the dev metric improves
    evaluate_split: str  # s3prl's -t
    folds: Tuple[str, ...] = ()  # ER: one run per fold, score = mean


TASKS: Dict[str, Task] = {
    "pr": Task("pr", "ctc", "PR", "PER", False, "dev-best.ckpt", "test"),
    "asr": Task("asr", "asr", "ASR", "WER", False, "dev-clean-best.ckpt", "test-clean"),
    "ks": Task("ks", "speech_commands", "KS", "accuracy", True, "dev-best.ckpt", "test"),
    "sid": Task("sid", "voxceleb1", "SID", "accuracy", True, "dev-best.ckpt", "test"),
    "er": Task("er", "emotion", "ER", "accuracy", True, "dev-best.ckpt", "test",
               folds=tuple(f"fold{i}" for i in range(1, 6))),
}

LAYOUT = """Expected under the data root (real corpora or `s3prl-distill mini-superb` output):
  LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chap>/*.flac + <spk>-<chap>.trans.txt   (PR, ASR)
  len_for_bucket/<split>.csv                    (ASR; `s3prl-distill prepare-data DATA_ROOT/LibriSpeech`)
  pr/lexicon*.txt [+ pr/phoneme.txt]            (PR: WORD PH PH ... in ARPAbet with stress; s3prl's phones by default)
  [asr/char.dict]                               (ASR: s3prl's 28 characters by default)
  speech_commands/{train,test}/                 (KS: Speech Commands v1 layout)
  VoxCeleb1/{dev,test}/wav/idXXXXX/... + VoxCeleb1/veri_test_class.txt   (SID)
  IEMOCAP/Session1..5/ + IEMOCAP/meta_data/Session<N>/{train,test}_meta_data.json   (ER)"""


def parse_tasks(text: str) -> List[str]:
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; choose from {','.join(TASKS)}")
    return tasks


class LayoutError(UserError, FileNotFoundError):
    """A corpus is not laid out as the task reads it; the message names the path and the expectation."""


def data_values(data_root: Path, tasks: List[str], num_workers: int) -> Dict[str, Any]:
    """Placeholder values for ``tasks``' configs; every required path is checked, and the first missing one is
    named together with the expected layout."""
    root = Path(data_root).expanduser().resolve()
    values: Dict[str, Any] = {"num_workers": num_workers}

    def need(relative: str, what: str) -> Path:
        path = root / relative
        if not path.exists():
            raise LayoutError(f"{what}: {path} does not exist.\n{LAYOUT}")
        return path

    if "pr" in tasks or "asr" in tasks:
        values["libri_root"] = str(need("LibriSpeech", "LibriSpeech (PR, ASR)"))
        for split in ("train-clean-100", "dev-clean", "test-clean"):
            need(f"LibriSpeech/{split}", f"LibriSpeech split {split}")
    if "pr" in tasks:
        lexicons = sorted(str(p) for p in need("pr", "PR lexicon folder").glob("lexicon*.txt"))
        if not lexicons:
            raise LayoutError(f"PR lexicon: no lexicon*.txt in {root / 'pr'}.\n{LAYOUT}")
        values["lexicon"] = lexicons
        values["phoneme_vocab"] = str(_local_or(root / "pr" / "phoneme.txt", SHIPPED_PHONEME_VOCAB))
    if "asr" in tasks:
        bucket = need("len_for_bucket", "ASR length CSVs")
        for split in ("train-clean-100", "dev-clean", "test-clean"):
            if not (bucket / f"{split}.csv").is_file():
                raise LayoutError(f"ASR length CSV {bucket / split}.csv does not exist "
                                        f"(s3prl-distill prepare-data {root / 'LibriSpeech'} -o {bucket}).\n{LAYOUT}")
        values["bucket_file"] = str(bucket)
        values["char_dict"] = str(_local_or(root / "asr" / "char.dict", SHIPPED_CHAR_DICT))
    if "ks" in tasks:
        values["speech_commands_train"] = str(need("speech_commands/train", "Speech Commands training set"))
        values["speech_commands_test"] = str(need("speech_commands/test", "Speech Commands test set"))
    if "sid" in tasks:
        values["voxceleb1_root"] = str(need("VoxCeleb1", "VoxCeleb1"))
        values["voxceleb1_meta"] = str(need("VoxCeleb1/veri_test_class.txt", "VoxCeleb1 split file"))
    if "er" in tasks:
        values["iemocap_root"] = str(need("IEMOCAP", "IEMOCAP"))
        for session in range(1, 6):
            need(f"IEMOCAP/meta_data/Session{session}/test_meta_data.json", f"IEMOCAP fold {session} meta data")
        values["iemocap_meta"] = str(root / "IEMOCAP" / "meta_data")
    return values


def _local_or(local: Path, shipped: Path) -> Path:
    """A vocabulary file from the data root if it has one, else the one we ship."""
    return local if local.is_file() else shipped


_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        return {key: _fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(value, values) for value in node]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:  # the whole value: keep the value's type (a list of lexicons, an int)
            return _value(values, whole.group(1))
        return _PLACEHOLDER.sub(lambda m: str(_value(values, m.group(1))), node)
    return node


def _value(values: Mapping[str, Any], name: str) -> Any:
    if name not in values:
        raise KeyError(f"config placeholder ${{{name}}} has no value")
    return values[name]


def experiment_name(task: Task, fold: Optional[str] = None) -> str:
    """One experiment's directory in a sweep (and its name in the progress line): ``pr``, ``er_fold1``."""
    return task.key if fold is None else f"{task.key}_{fold}"


def parse_settings(items: Optional[List[str]]) -> Dict[str, List[Tuple[List[str], Any]]]:
    """``TASK:dotted.key=VALUE`` (VALUE parsed as YAML) -> {task: [(path, value), ...]}; a malformed item is a
    :class:`ConfigError` naming it."""
    settings: Dict[str, List[Tuple[List[str], Any]]] = {}
    for item in items or []:
        target, _, assignment = item.partition(":")
        key, separator, value = assignment.partition("=")
        if target not in TASKS or not separator or not key:
            raise ConfigError(f"--set {item!r}: expected TASK:dotted.key=VALUE with TASK in {','.join(TASKS)}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item!r}: the value is not YAML ({error})") from None
        settings.setdefault(target, []).append((key.split("."), parsed))
    return settings


def render_config(
    task: Task, values: Mapping[str, Any], fold: Optional[str] = None, steps: Optional[int] = None,
    learning_rate: Optional[float] = None, settings: Optional[List[Tuple[List[str], Any]]] = None,
) -> Dict[str, Any]:
    """The task's config with paths filled in; ``steps`` shortens the run (evaluating and saving at the end);
    ``settings`` replace single values (e.g. a smaller ASR head for CPU smoke runs)."""
    template = yaml.safe_load((CONFIG_DIR / f"{task.key}.yaml").read_text())
    config = _fill(template, {**values, "fold": fold or "fold1"})
    if steps is not None:
        runner = config["runner"]
        runner.update(total_steps=steps, eval_step=steps, save_step=steps, log_step=max(1, min(100, steps // 2)))
    if learning_rate is not None:
        config["optimizer"]["lr"] = learning_rate
    for path, value in settings or []:
        node = config
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {task.key}:{'.'.join(path)}: {part!r} is not a section of the {task.key} "
                                  "config")
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"--set {task.key}:{'.'.join(path)}: no such key in the {task.key} config")
        node[path[-1]] = value
    return config


def write_config(
    path: Path, task: Task, values: Mapping[str, Any], fold: Optional[str] = None, steps: Optional[int] = None,
    learning_rate: Optional[float] = None, settings: Optional[List[Tuple[List[str], Any]]] = None,
) -> Dict[str, Any]:
    """:func:`render_config` written as YAML to ``path``, in the template's key order: the file s3prl's ``-c``
    reads, both in a sweep (one per experiment) and from ``superb-config`` (for a user's own s3prl run)."""
    config = render_config(task, values, fold, steps, learning_rate, settings)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return config
