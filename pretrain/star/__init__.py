"""STaR distillation recipe (our runner: config.yaml; s3prl's run_pretrain.py: pretrain_expert.py, with the
config_model.yaml / config_runner.yaml that link-pretrain generates from config.yaml)."""
