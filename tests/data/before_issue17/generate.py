"""Run in a checkout of commit 3562145 (before issue 17): writes tiny student checkpoints of every family, the
outputs the upstreams of that commit give for them, and the RunConfig dicts its shipped configs validate to."""
import json
import sys
from pathlib import Path

import torch

from s3prl_distill.checkpoint import export_student, save_checkpoint
from s3prl_distill.importers.fairseq import teacher_copy_config
from s3prl_distill.importers.s3prl_distiller import export_distiller
from s3prl_distill.importers.s3prl_hubert import TINY_HUBERT
from s3prl_distill.model import (PruningConfig, StudentConfig, StudentModel, deepthin_config, distilhubert_config,
                                 fithubert_config, pruning_student_config, shallowwide_config, with_fbank_front_end)
from s3prl_distill.model.pruning import prune
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.registry import build_upstream

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
CNN = "[(8,10,5)] + [(8,3,2)]*4 + [(8,2,2)]*2"


def tiny(config, layers=2, embed=16, ffn=24, cnn=CNN):
    data = config.to_dict()
    if cnn is not None and "feature_extractor" in data:
        data["feature_extractor"]["conv_layers"] = cnn
    data["encoder"].update(num_layers=layers, embed_dim=embed, ffn_dim=ffn, num_heads=2, pos_conv_kernel=4,
                           pos_conv_groups=2)
    return data


def randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point and "log_alpha" not in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model


students = {}
data = tiny(distilhubert_config(teacher_dim=12))
data["prediction_head"].update(target_layers=[1, 2], inner_dim=16)
students["distilhubert"] = ("distilhubert_local", "distiller", StudentConfig.from_dict(data))
data = tiny(fithubert_config(teacher_dim=12), layers=3)
data["prediction_head"]["target_layers"] = [1, 2, 3]
students["fithubert"] = ("fithubert_local", "fithubert", StudentConfig.from_dict(data))
data = tiny(deepthin_config(teacher_dim=12), layers=3)
data["prediction_head"]["target_layers"] = [1, 2, 3]
students["deepthin"] = ("deepthin_local", "asr_distill", StudentConfig.from_dict(data))
students["deepthin_fbank"] = ("deepthin_fbank_local", "asr_distill", with_fbank_front_end(StudentConfig.from_dict(data)))
data = tiny(shallowwide_config(teacher_dim=12), layers=2)
data["prediction_head"].update(target_layers=[1, 2], inner_dim=16)
students["shallowwide"] = ("shallowwide_local", "asr_distill", StudentConfig.from_dict(data))

wave = torch.randn(2, 6000, generator=torch.Generator().manual_seed(7)) * 0.1
records = {}
for index, (name, (entry, family, config)) in enumerate(students.items()):
    model = randomise(StudentModel(config), index)
    if config.fbank_front_end is not None:
        model.fbank.set_statistics(torch.zeros(config.fbank_front_end.num_mel_bins) + 0.5,
                                   torch.ones(config.fbank_front_end.num_mel_bins) * 2.0, 1000)
    state = model.state_dict()
    checkpoint = export_distiller(config, state) if family == "distiller" else export_student(family, config, state)
    records[name] = entry

    save_checkpoint(checkpoint, out / f"{name}.ckpt")

# DPHuBERT / SKILL: a gated copy of the tiny HuBERT teacher, pruned.
for index, family in enumerate(("dphubert", "skill")):
    config = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2]],
                                    pruning=PruningConfig(attention_heads=True, ffn_units=True,
                                                          attention_layers=True, ffn_layers=True))
    model = randomise(StudentModel(config), 10 + index)
    generator = torch.Generator().manual_seed(20 + index)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "log_alpha" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 3.0)
    pruned = prune(model)
    save_checkpoint(export_student(family, pruned.config, pruned.state_dict()), out / f"{family}.ckpt")
    records[family] = f"{family}_local"

outputs = {}
for name, entry in records.items():
    upstream = build_upstream(entry, str(out / f"{name}.ckpt")).eval()
    with torch.no_grad():
        result = upstream([wave[0], wave[1, :4700]])
    outputs[name] = {"entry": entry, "hidden_states": [h.clone() for h in result["hidden_states"]],
                     "last_hidden_state": result["last_hidden_state"].clone()}
torch.save({"wave": wave, "lengths": [6000, 4700], "outputs": outputs}, out / "outputs.pt")

configs = {}
root = Path("pretrain")
for path in sorted(root.glob("*/config*.yaml")):
    if path.name in ("config_model.yaml", "config_runner.yaml"):
        continue
    configs[str(path)] = load_config(path).to_dict()
(out / "run_configs.json").write_text(json.dumps(configs, indent=1, sort_keys=True))
print(sorted(records), [p.stat().st_size for p in out.glob("*.ckpt")], (out / "outputs.pt").stat().st_size)
