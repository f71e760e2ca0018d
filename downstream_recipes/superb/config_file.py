"""``s3prl-distill superb-config``: one SUPERB task's config with every ``${...}`` placeholder filled from a data root,
for running s3prl's own ``run_downstream.py -c FILE`` by hand, and the commands that train and evaluate with it.

The shipped ``configs/<task>.yaml`` are templates; a sweep fills them per experiment. This writes the same file a
sweep would (same layout checks, same filling: :func:`.tasks.data_values` and :func:`.tasks.write_config`), so a
hand-run and a sweep cannot drift apart.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence


from s3prl_distill.errors import ConfigError, UserError

from .tasks import TASKS, Task, data_values, parse_settings, write_config


class OutputExistsError(UserError, FileExistsError):
    """The config file to write exists already (it may hold a user's edits)."""


@dataclass(frozen=True)
class WrittenConfig:
    path: Path
    task: Task
    fold: Optional[str]
    commands: List[str]  # train, then evaluate, with s3prl's runner
    notes: List[str]  # what else the user should know for this task


def fold_name(task: Task, fold: Optional[str]) -> Optional[str]:
    """``3`` or ``fold3`` as the task's fold name; the first fold when none is given. A task without folds takes
    none (a fold given to it is an error rather than silently ignored)."""
    if not task.folds:
        if fold is not None:
            with_folds = ", ".join(key for key, other in TASKS.items() if other.folds)
            raise ConfigError(f"--fold {fold}: {task.key} has no folds (only {with_folds} has)")
        return None
    if fold is None:
        return task.folds[0]
    name = f"fold{fold}" if str(fold).isdigit() else str(fold)
    if name not in task.folds:
        raise ConfigError(f"--fold {fold}: {task.key} has folds {task.folds[0]}..{task.folds[-1]} "
                          f"(or 1..{len(task.folds)})")
    return name


def default_output(task: Task, fold: Optional[str]) -> Path:
    return Path(f"superb_{task.key}{'_' + fold if fold else ''}.yaml")


def s3prl_commands(task: Task, config: Path, expdir: Path, upstream: Optional[str], ckpt: Optional[str],
                   device: str) -> List[str]:
    """Training and evaluation with s3prl's own runner, as a user would type them (quoted for a POSIX shell)."""
    train = ["python", "-m", "s3prl.run_downstream", "-m", "train", "-u", upstream or "UPSTREAM"]
    train += ["-k", ckpt] if ckpt else []
    train += ["-d", task.downstream, "-c", str(config), "-p", str(expdir), "--device", device]
    evaluate = ["python", "-m", "s3prl.run_downstream", "-m", "evaluate", "-e", str(expdir / task.best_checkpoint),
                "-t", task.evaluate_split, "--device", device]
    return [shlex.join(train), shlex.join(evaluate)]


def write_superb_config(
    task_key: str, data_root: Path, output: Optional[Path] = None, fold: Optional[str] = None,
    num_workers: int = 4, steps: Optional[int] = None, settings: Sequence[str] = (), force: bool = False,
    upstream: Optional[str] = None, ckpt: Optional[str] = None, device: str = "cpu",
) -> WrittenConfig:
    """Check ``data_root`` for ``task_key`` (the first missing path is named, with the expected layout), write the
    task's filled config to ``output`` (default ``superb_<task>[_<fold>].yaml`` here) and return it with the
    s3prl commands that use it. ``settings`` are ``dotted.key=VALUE`` overrides of this task's config, ``upstream``
    and ``ckpt`` only complete the printed commands."""
    if task_key not in TASKS:
        raise ConfigError(f"task {task_key!r}: choose from {', '.join(TASKS)}")
    task = TASKS[task_key]
    fold = fold_name(task, fold)
    for item in settings:
        key, separator, _ = item.partition("=")
        if not key or not separator:
            raise ConfigError(f"--set {item!r}: expected dotted.key=VALUE, e.g. optimizer.lr=1e-2")
    overrides = parse_settings([f"{task.key}:{item}" for item in settings]).get(task.key)
    values = data_values(Path(data_root), [task.key], num_workers)
    path = Path(output) if output is not None else default_output(task, fold)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it, or choose another --output")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(path, task, values, fold, steps, settings=overrides)  # a --set key is checked before writing
    path = path.resolve()
    expdir = Path("result") / "downstream" / path.stem
    notes = []
    if task.folds:
        notes.append(f"{task.title} is scored as the mean of {len(task.folds)} folds ({', '.join(task.folds)}); "
                     f"this config is {fold}: write the others with --fold 1..{len(task.folds)}")
    if task.key == "sid":
        notes.append("s3prl caches VoxCeleb1 file lists inside its package (s3prl/downstream/voxceleb1/.cache) and "
                     "reuses them for any data root: delete that folder when you switch data roots")
    commands = s3prl_commands(task, path, expdir, upstream, ckpt, device)
    return WrittenConfig(path=path, task=task, fold=fold, commands=commands, notes=notes)
