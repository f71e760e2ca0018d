"""Wang et al.'s ASR students for s3prl's own ``run_pretrain.py`` (after ``s3prl-distill link-pretrain CHECKOUT``):

    python3 run_pretrain.py -u asr_distill -g pretrain/asr_distill/config_model.yaml -n NAME

Same teacher, student and loss code as ``s3prl-distill pretrain``; only the loop is s3prl's. Its checkpoints load in
the ``deepthin_local`` / ``shallowwide_local`` (``_fbank``) upstreams.
"""

from s3prl_distill.pretrain.s3prl_expert import S3prlPretrainExpert


class UpstreamPretrainExpert(S3prlPretrainExpert):
    """What s3prl's runner looks up by name."""
