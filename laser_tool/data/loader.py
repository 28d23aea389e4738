"""The batch loader: the whole split on the device, each batch an index op, the order and the
augmentation pure functions of (seed, epoch, step), so resuming at (epoch, step) replays nothing."""
import hashlib

import torch

from ..errors import UserError
from .augment import apply_augment, sample_augment

def _seed(*parts) -> int:
    """A 63-bit seed from any tuple, so streams like (seed, "order", epoch) never collide."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class BatchLoader:
    """Batches of uint8 images held on `device`, as float [0, 1] (B, C, H, W) plus int64 labels.

    batch_size is per rank: with DDP a step covers a global batch of batch_size * world_size images
    and rank r takes the r-th contiguous piece, so the ranks' pieces concatenate to exactly what one
    process with batch_size * world_size would see (augmentation included: its random numbers are
    drawn for the whole global batch). A short last batch (drop_last=False) is split as evenly as
    torch.tensor_split would. The order is a pure function of (seed, epoch), and the augmentation of
    (seed, epoch, step), so resuming at (epoch, step) is just epoch(epoch, start_step=step).
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                 augment=None, seed: int = 0, device="cpu", rank: int = 0, world_size: int = 1):
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"BatchLoader wants uint8 (N, C, H, W) images and N labels, "
                             f"got {x.dtype} {tuple(x.shape)} and {len(y)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"bad batching: batch_size {batch_size}, rank {rank}, world_size {world_size}; "
                            f"need batch_size >= 1 and 0 <= rank < world_size")
        self.x, self.y = x.to(device), y.to(device)  # one copy on the device; batches are index ops
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment = augment if augment is not None and augment.active else None
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.global_batch = batch_size * world_size

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def order(self, epoch: int) -> torch.Tensor:
        """Indices of the images in the order epoch `epoch` visits them (same on every rank)."""
        if not self.shuffle:
            return torch.arange(len(self.x))
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(_seed(self.seed, "order", epoch)))

    def epoch(self, epoch: int, start_step: int = 0):
        if not 0 <= start_step <= len(self):
            raise UserError(f"start_step {start_step} is past the {len(self)} batches in an epoch; resume with the "
                            f"batch size, world size and dataset the checkpoint was made with")
        return self._batches(epoch, start_step)  # checked above, now, not at the first next()

    def _batches(self, epoch: int, start_step: int):
        order = self.order(epoch).to(self.x.device)
        G = self.global_batch
        for step in range(start_step, len(self)):
            idx = order[step * G:(step + 1) * G]
            q, rem = divmod(len(idx), self.world_size)  # tensor_split's piece sizes
            lo = self.rank * q + min(self.rank, rem)
            hi = lo + q + (self.rank < rem)
            mine = idx[lo:hi]
            xb = self.x[mine].float().div_(255)
            if self.augment is not None:
                g = torch.Generator().manual_seed(_seed(self.seed, "augment", epoch, step))
                params = sample_augment(self.augment, len(idx), g)
                xb = apply_augment(xb, self.augment, {k: v[lo:hi] for k, v in params.items()})
            yield xb, self.y[mine]
