#!/usr/bin/env bash
# The paper's sweep of the discriminative loss weight (0 = regression only), one run per value:
#   bash pretrain/asr_distill/sweep_discriminative.sh "config.teacher.ckpt=/path/hubert.pt,,config.data.root=/path/LibriSpeech" [config.yaml]
set -euo pipefail
overrides="${1:?usage: $0 OVERRIDES [CONFIG]}"
config="${2:-$(dirname "$0")/config.yaml}"
for weight in 0.0 0.2 0.4 0.6 0.8; do
  s3prl-distill pretrain -g "$config" -n "asr_distill_disc${weight}" \
    -o "config.method.discriminative_weight=${weight},,${overrides}"
done
