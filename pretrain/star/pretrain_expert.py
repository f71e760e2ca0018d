"""STaR for s3prl's own ``run_pretrain.py`` (after ``s3prl-distill link-pretrain S3PRL_CHECKOUT``):

    python3 run_pretrain.py -u star -g pretrain/star/config_model.yaml -n NAME

Same teacher, student and loss code as ``s3prl-distill pretrain``; only the loop is s3prl's. Its checkpoints load in
the ``starhubert_local`` upstream.
"""

from s3prl_distill.pretrain.s3prl_expert import S3prlPretrainExpert


class UpstreamPretrainExpert(S3prlPretrainExpert):
    """What s3prl's runner looks up by name."""
