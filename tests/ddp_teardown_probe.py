"""``python -m s3prl_distill.pretrain`` under torchrun, reporting on stderr how many DistributedDataParallel
wrappers are still alive when the runner destroys the process group.

DDP's reducer holds the process group: a wrapper alive at ``destroy_process_group`` leaves gloo's threads to the
interpreter's teardown, where rank 1 now and then died of SIGABRT ("terminate called without an active exception")
after a finished run. Used by tests/test_pretrain_runner.py."""

import gc
import runpy
import sys

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

destroy = dist.destroy_process_group


def counting_destroy(*args, **kwargs):
    alive = sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects())
    print(f"rank {dist.get_rank()}: {alive} DDP wrapper(s) alive at destroy_process_group", file=sys.stderr, flush=True)
    return destroy(*args, **kwargs)


dist.destroy_process_group = counting_destroy
sys.argv = ["s3prl_distill.pretrain", *sys.argv[1:]]
runpy.run_module("s3prl_distill.pretrain", run_name="__main__", alter_sys=True)
