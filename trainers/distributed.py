"""Distributed set-up: the same command under `torchrun --nproc_per_node=N` runs DDP.

NCCL on CUDA, gloo on CPU. Each rank takes its shard of every global batch (see BatchLoader);
rank 0 alone evaluates and writes.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(rank, world, local)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def any_rank(d: Dist, flag: bool, device) -> bool:
    """True on every rank when any rank's flag is set (Ctrl-C reaches ranks at different steps)."""
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(d: Dist, loss_sum, correct, seen: int):
    """Epoch totals summed over ranks (loss_sum float64 and correct int64 tensors, seen an int)."""
    t = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                               device=loss_sum.device)])
    dist.all_reduce(t)
    return t[0], t[1].long(), int(t[2].item())


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
