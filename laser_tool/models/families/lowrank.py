"""Low-rank: the seed's RankReductionLayer, up(down(x)), two nn.Linear with bias."""
import torch
import torch.nn as nn

from ...errors import UserError
from ..budget import fraction_rank
from .registry import register_family


def lowrank_params(d_in, d_out, rank):
    return rank * (d_in + d_out) + rank + d_out       # the seed's layer: two nn.Linear with bias


@register_family
class LowRankLinear(nn.Module):
    """The seed's RankReductionLayer: up(down(x)), two nn.Linear with bias."""
    kind = "lowrank"
    description = "low-rank up(down(x)), two nn.Linear with bias (the seed's RankReductionLayer)"
    flags = ("scale",)

    def __init__(self, d_in: int, d_out: int, r: float = 0.5, rank: int = None):
        super().__init__()
        rank = fraction_rank(d_in, d_out, r) if rank is None else rank  # an explicit rank comes from --keep
        if rank < 1:
            raise UserError(f"low-rank layer {d_in}->{d_out} at r={r} has rank {rank}; use a larger --scale")
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        self.down = nn.Linear(d_in, rank)
        self.up = nn.Linear(rank, d_out)

    def forward(self, x):
        return self.up(self.down(x))

    def dense_weight(self):
        return self.up.weight @ self.down.weight

    @property
    def bias(self):
        return self.up.weight @ self.down.bias + self.up.bias

    @classmethod
    def build(cls, d_in, d_out, bias, scale=0.5, rank=None, **_):
        return cls(d_in, d_out, r=scale, rank=rank)

    @staticmethod
    def settings(d_in, d_out, bias):
        return [({"rank": r}, lowrank_params(d_in, d_out, r)) for r in range(1, min(d_in, d_out) + 1)]

    def setting(self):
        return {"rank": self.rank}

    def factor_fans(self):
        return {"down.weight": (self.in_features, self.rank), "up.weight": (self.rank, self.out_features)}

    @torch.no_grad()
    def spectral_init(self, W: torch.Tensor, bias):
        """Factors from the SVD of the dense (d_out, d_in) matrix W: U sqrt(S), sqrt(S) V^T (Khodak et
        al. 2021), so at full rank the layer starts as exactly that dense layer."""
        U, S, Vh = torch.linalg.svd(W.detach().float(), full_matrices=False)
        r = self.rank
        if r > S.numel():
            raise UserError(f"low-rank layer rank {r} exceeds the dense matrix's rank {S.numel()}")
        root = S[:r].sqrt()
        self.up.weight.copy_(U[:, :r] * root)
        self.down.weight.copy_(root[:, None] * Vh[:r])
        self.down.bias.zero_()                        # so the layer's bias is exactly the dense one
        if bias is None:
            self.up.bias.zero_()
        else:
            self.up.bias.copy_(bias.detach())
        return self

    @staticmethod
    def run_tag(spec):
        return f"s{spec.scale:g}"

    @staticmethod
    def label(spec):
        return f"r={spec.scale:g}"
