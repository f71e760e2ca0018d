"""ARMHuBERT / MaskHuBERT masking distillation recipe (our runner: config.yaml = ARMHuBERT, config_maskhubert.yaml,
config_small.yaml = ARMHuBERT-S, config_small_100h.yaml, config_armwavlm_small.yaml; s3prl's run_pretrain.py:
pretrain_expert.py, with the config_model.yaml / config_runner.yaml that link-pretrain generates from config.yaml)."""
