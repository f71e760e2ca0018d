"""DistilHuBERT distillation recipe (s3prl pretrain convention: pretrain_expert.py, config_model.yaml,
config_runner.yaml; our runner: config.yaml)."""
