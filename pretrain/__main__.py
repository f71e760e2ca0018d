"""``python -m s3prl_distill.pretrain`` (also under ``torchrun``): the distillation pretraining runner."""

from .runner import main

if __name__ == "__main__":
    main()
