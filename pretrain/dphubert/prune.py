"""``s3prl-distill prune``: a gated DPHuBERT / SKILL training checkpoint -> a compact dense student.

Writes ``pruned.ckpt`` (our format; the ``dphubert`` / ``skill`` upstream loads it; with ``--format safetensors``
``pruned.safetensors`` instead, with no pickle) and, when the checkpoint holds its run config,
``final_distill.yaml``: the same run on the pruned student without gates, starting from that file (DPHuBERT's final
distillation stage). Attention / FFN blocks left with no head / unit are removed
entirely (no parameters), as DPHuBERT's prune does. ``s3prl-distill export CKPT --to dphubert OUT`` then writes
either checkpoint in the official DPHuBERT layout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import yaml

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s3prl_distill.formats.native import describe_checkpoint, export_student, is_native_student
from s3prl_distill.formats.safetensors_format import save_safetensors_student
from s3prl_distill.model import StudentConfig, StudentModel
from s3prl_distill.model.pruning import final_num_parameters, prune
from s3prl_distill.options import SAVE_FORMATS

from ..methods import METHODS
from ..runner import find_latest_checkpoint
from .recipe import DPHuBERT

logger = logging.getLogger(__name__)

def prunable_families() -> tuple:
    """The families of the registered methods that train gated students (dphubert, skill, and any method registered
    later on DPHuBERT's recipe)."""
    return tuple(spec.family for spec in METHODS.values() if issubclass(spec.recipe, DPHuBERT))


def prune_checkpoint(path: Path, output: Path, final_steps: Optional[int] = None,
                     student_format: str = "pickle") -> dict:
    """Prune the student of ``path`` (a states-<step>.ckpt or a run directory) into ``output``; returns a summary
    (parameter counts, target, files). ``student_format`` (:data:`~s3prl_distill.options.SAVE_FORMATS`): the pruned
    student as ``pruned.ckpt`` (pickle) or ``pruned.safetensors`` (no pickle; the summary is then in
    ``pruning.yaml`` only); ``final_distill.yaml`` starts from whichever was written."""
    if student_format not in SAVE_FORMATS:
        raise ValueError(f"student_format {student_format!r}: expected one of {', '.join(SAVE_FORMATS)}")
    path = find_latest_checkpoint(Path(path))
    checkpoint = load_checkpoint(path, what="checkpoint to prune")
    families = prunable_families()
    if not is_native_student(checkpoint) or checkpoint.get("Family") not in families:
        raise CheckpointError(f"{path} is {describe_checkpoint(checkpoint)}; prune expects a checkpoint of the "
                              f"{' or '.join(families)} method (s3prl-distill pretrain)")
    config = StudentConfig.from_dict(checkpoint["StudentConfig"], f"{path} (StudentConfig)")
    if config.pruning is None:
        raise CheckpointError(f"{path} holds a student without pruning gates (already pruned?)")
    model = StudentModel(config)
    try:
        model.load_state_dict(checkpoint["Student"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match its StudentConfig: {error}") from None
    model.eval()
    full = model.num_parameters()
    expected = final_num_parameters(model)
    pruned = prune(model)
    summary = {"source": str(path), "step": checkpoint.get("Step"), "params_unpruned": full,
               "params_pruned": pruned.num_parameters()}
    if summary["params_pruned"] != expected:
        raise RuntimeError(f"pruning bookkeeping says {expected} parameters but the pruned model has "
                           f"{summary['params_pruned']}")
    method = (checkpoint.get("RunConfig") or {}).get("method") or {}
    if "target_sparsity" in method:
        target = round((1.0 - method["target_sparsity"]) * full)
        summary.update(target_sparsity=method["target_sparsity"], params_target=target,
                       relative_error=summary["params_pruned"] / target - 1.0)
    output.mkdir(parents=True, exist_ok=True)
    if student_format == "safetensors":
        pruned_path = output / "pruned.safetensors"
        save_safetensors_student(checkpoint["Family"], pruned.config, pruned.state_dict(), pruned_path)
    else:
        pruned_path = output / "pruned.ckpt"
        saved = export_student(checkpoint["Family"], pruned.config, pruned.state_dict())
        saved["Pruning"] = dict(summary)
        save_checkpoint(saved, pruned_path)
    summary["pruned_ckpt"] = str(pruned_path)
    run_config = checkpoint.get("RunConfig")
    if run_config is not None:
        run_config = dict(run_config)
        run_config["student"] = pruned.config.to_dict()
        run_config["student_init"] = {"checkpoint": str(pruned_path.resolve())}
        if final_steps is not None:
            run_config["runner"] = {**run_config["runner"], "total_steps": final_steps}
        final_path = output / "final_distill.yaml"
        final_path.write_text(yaml.safe_dump(run_config, sort_keys=False))
        summary["final_distill_config"] = str(final_path)
    summary["removed_attention_blocks"] = [i for i, h in enumerate(pruned.config.encoder.layer_num_heads()) if h == 0]
    summary["removed_feed_forward_blocks"] = [i for i, u in enumerate(pruned.config.encoder.layer_ffn_dims())
                                              if u == 0]
    summary["export"] = (f"s3prl-distill export {pruned_path} --to dphubert {output / 'pruned_dphubert.pth'} "
                         "(or export the final distillation's checkpoint the same way)")
    (output / "pruning.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    logger.info("pruned %s: %d -> %d parameters; official DPHuBERT layout: %s", path, full, summary["params_pruned"],
                summary["export"])
    return summary
