"""ARMHuBERT / MaskHuBERT masking distillation for s3prl's own ``run_pretrain.py`` (after ``s3prl-distill
link-pretrain S3PRL_CHECKOUT``):

    python3 run_pretrain.py -u armhubert -g pretrain/armhubert/config_model.yaml -n NAME

MaskHuBERT: ``-g pretrain/armhubert/config_maskhubert.yaml`` (its model sections are read from the whole config),
with a runner config (``-c``) whose optimizer lr is 5e-4 (the generated config_runner.yaml is ARMHuBERT's, 5e-3).
Same teacher, student, masks and loss code as ``s3prl-distill pretrain``; only the loop is s3prl's. Its checkpoints
load in the ``armhubert_local`` / ``maskhubert_local`` upstreams.
"""

from s3prl_distill.pretrain.s3prl_expert import S3prlPretrainExpert


class UpstreamPretrainExpert(S3prlPretrainExpert):
    """What s3prl's runner looks up by name."""
