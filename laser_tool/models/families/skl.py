"""SKL: stacked Kronecker-product layer (Shapeshifter, NeurIPS 2021), as the seed wrote it."""
import math

import torch
import torch.nn as nn

from ...errors import UserError
from ..budget import dense_params
from .registry import register_family


def round_up_sqrt(n: int) -> int:
    """Smallest integer s with s*s >= n."""
    s = math.isqrt(n)
    return s if s * s == n else s + 1


def skl_rank(n: int, m: int, scale: float) -> int:
    k = round_up_sqrt(n) * round_up_sqrt(m)
    return int(scale * (n * m) / 2.0 / k + 0.5)


def skl_params(d_in, d_out, rank):
    return 2 * rank * round_up_sqrt(d_in) * round_up_sqrt(d_out)   # no bias (the seed's layer has none)


@register_family
class SKLinear(nn.Module):
    """Stacked Kronecker-product layer (Shapeshifter, NeurIPS 2021), as the seed wrote it.

    The n x m weight is padded to n' x m' (squares) and written as a sum of r Kronecker products of
    sn x sm factors: S = (A @ B) reshaped (sn, sm, sn, sm) -> (sn, sn, sm, sm)... -> (n', m').
    2*r*k parameters, k = sn*sm. No bias (the seed's layer has none). The seed's class forgot
    super().__init__(); this one calls it.
    """
    kind = "skl"
    description = "sum of r Kronecker products (Shapeshifter), no bias"
    flags = ("scale",)

    def __init__(self, d_in: int, d_out: int, scale: float = 0.5, rank: int = None):
        super().__init__()
        n, m = d_in, d_out
        self.in_features, self.out_features = n, m
        self.sn, self.sm = round_up_sqrt(n), round_up_sqrt(m)
        k = self.sn * self.sm
        r = skl_rank(n, m, scale) if rank is None else rank  # an explicit rank comes from --keep
        if r < 1:
            raise UserError(f"SKL layer {n}->{m} at scale={scale} has rank {r}; use a larger --scale")
        self.rank = r
        self.A = nn.Parameter(torch.empty(k, r))
        self.B = nn.Parameter(torch.empty(r, k))
        # The seed notes kaiming_uniform_ matters for fp16 training.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.B, a=math.sqrt(5))
        self.bias = None

    def kron_matrix(self):
        """S[:n, :m], the (d_in, d_out) matrix the layer multiplies by; built once per forward."""
        sn, sm = self.sn, self.sm
        S = (self.A @ self.B).reshape(sn, sm, sn, sm).transpose(1, 2).reshape(sn * sn, sm * sm)
        return S[: self.in_features, : self.out_features]

    def forward(self, x):
        return x @ self.kron_matrix()

    def dense_weight(self):
        return self.kron_matrix().T

    @classmethod
    def build(cls, d_in, d_out, bias, scale=0.5, rank=None, **_):
        return cls(d_in, d_out, scale=scale, rank=rank)

    @staticmethod
    def settings(d_in, d_out, bias):
        k = round_up_sqrt(d_in) * round_up_sqrt(d_out)
        top = dense_params(d_in, d_out, bias) // (2 * k) + 1    # the largest rank not above the dense layer
        return [({"rank": r}, skl_params(d_in, d_out, r)) for r in range(1, top + 1)]

    def setting(self):
        return {"rank": self.rank}

    def factor_fans(self):
        # A sum of r Kronecker products is a two-core tensor train of rank r: B reads sn inputs and writes
        # sm*r, A reads sn*r and writes sm.
        return {"B": (self.sn, self.sm * self.rank), "A": (self.sn * self.rank, self.sm)}

    @staticmethod
    def run_tag(spec):
        return f"s{spec.scale:g}"

    @staticmethod
    def label(spec):
        return f"r={spec.scale:g}"
