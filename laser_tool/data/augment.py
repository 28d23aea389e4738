"""Batched augmentation on the images' own device: random crop (with padding), random resized crop
and horizontal flip, with the random numbers drawn on the CPU so every device sees the same ones."""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from .files import canonical_name
from .folder import is_folder

@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # random crop after padding by this much on each side (torchvision RandomCrop)
    pad_mode: str = "zeros"  # "zeros" (torchvision's default) or "reflect" (airbench's)
    rrc: bool = False  # random-resized-crop back to the same size
    rrc_scale: tuple = (0.25, 1.0)  # crop area as a fraction of the image
    rrc_ratio: tuple = (0.9, 1.1)  # crop width / height
    flip_p: float = 0.0  # horizontal flip probability

    def __post_init__(self):
        lo, hi = self.rrc_scale
        rlo, rhi = self.rrc_ratio
        if self.crop_padding < 0 or self.pad_mode not in ("zeros", "reflect") or not 0 <= self.flip_p <= 1 \
                or not 0 < lo <= hi <= 1 or not 0 < rlo <= rhi:
            raise UserError(f"bad augmentation {self}; need crop_padding >= 0, pad_mode zeros|reflect, "
                            f"0 <= flip_p <= 1, 0 < scale lo <= hi <= 1, 0 < ratio lo <= hi")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.rrc or self.flip_p > 0


# CIFAR: the seed's random-resized-crop + flip 0.3. MNIST: a 2-pixel shift only (a mirrored digit is
# a different glyph). Fashion-MNIST: the shift plus flip 0.5, since garments are mirror-symmetric.
DEFAULT_AUGMENT = {
    "cifar10": Augment(rrc=True, flip_p=0.3),
    "cifar100": Augment(rrc=True, flip_p=0.3),
    "fashion-mnist": Augment(crop_padding=2, flip_p=0.5),
    "mnist": Augment(crop_padding=2),
}


# Folder datasets (folder.py) are usually photographs: CIFAR's natural-image recipe; --no-augment turns it off.
FOLDER_AUGMENT = Augment(rrc=True, flip_p=0.3)


def default_augment(name: str) -> Augment:
    return FOLDER_AUGMENT if is_folder(name) else DEFAULT_AUGMENT[canonical_name(name)]


def sample_augment(spec: Augment, n: int, generator: torch.Generator) -> dict:
    """The random numbers for n images, drawn on the CPU so they are the same on every device."""
    params = {}
    if spec.crop_padding:
        params["crop"] = torch.randint(0, 2 * spec.crop_padding + 1, (n, 2), generator=generator)
    if spec.rrc:
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        area = spec.rrc_scale[0] + (spec.rrc_scale[1] - spec.rrc_scale[0]) * u[:, 0]
        log_lo, log_hi = math.log(spec.rrc_ratio[0]), math.log(spec.rrc_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        # Crop width/height as fractions of the image. torchvision resamples a crop that would not
        # fit; clamping to the full side instead is simpler and only matters near area 1.
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 1, 1] = w, h
        theta[:, 0, 2] = (1 - w) * (2 * u[:, 2] - 1)  # centre anywhere that keeps the crop inside
        theta[:, 1, 2] = (1 - h) * (2 * u[:, 3] - 1)
        params["theta"] = theta.float()
    if spec.flip_p:
        params["flip"] = torch.rand(n, generator=generator) < spec.flip_p
    return params


def apply_augment(x: torch.Tensor, spec: Augment, params: dict) -> torch.Tensor:
    """Augment a float batch (B, C, H, W) on its own device with params from sample_augment."""
    B, C, H, W = x.shape
    if "crop" in params:
        p = spec.crop_padding
        if spec.pad_mode == "reflect" and p >= min(H, W):
            raise UserError(f"crop_padding {p} is too big to reflect-pad {H}x{W} images; "
                            f"use pad_mode zeros or less padding")
        xp = F.pad(x, (p, p, p, p), mode="reflect" if spec.pad_mode == "reflect" else "constant")
        off = params["crop"].to(x.device)
        rows = off[:, 0, None] + torch.arange(H, device=x.device)  # (B, H) rows each image keeps
        cols = off[:, 1, None] + torch.arange(W, device=x.device)
        xp = xp.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * p))
        x = xp.gather(3, cols[:, None, None, :].expand(B, C, H, W))
    if "theta" in params:
        grid = F.affine_grid(params["theta"].to(x.device, x.dtype), [B, C, H, W], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if "flip" in params:
        x = torch.where(params["flip"].to(x.device)[:, None, None, None], x.flip(3), x)
    return x


def augment(x: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    return apply_augment(x, spec, sample_augment(spec, len(x), generator))
