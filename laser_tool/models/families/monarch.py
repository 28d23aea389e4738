"""Monarch (Dao et al., ICML 2022): two block-diagonal matrices with a fixed "transpose" permutation
between them (and its mirror on the output). The input is zero-padded to blocks*in_block and the output
cropped to d_out, so any shape works (as in Qiu et al.'s build_monarch)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import UserError
from ..structured import MatmulLinear
from .registry import register_family


def monarch_shape(d_in: int, d_out: int, blocks: int):
    """(in_block, mid_block, out_block): blocks of ceil(d/blocks); the middle is the smaller of the two."""
    ib, ob = math.ceil(d_in / blocks), math.ceil(d_out / blocks)
    return ib, min(ib, ob), ob


def monarch_params(d_in: int, d_out: int, blocks: int, bias: bool) -> int:
    ib, mid, ob = monarch_shape(d_in, d_out, blocks)
    return blocks * mid * (ib + ob) + (d_out if bias else 0)


@register_family
class MonarchLinear(MatmulLinear):
    """y = crop(P_out BlockDiag(w2) P BlockDiag(w1) pad(x)) + b.

    w1: (blocks, in_block, mid) maps contiguous input chunks; P regroups the (blocks, mid) grid as
    (mid, blocks) so block j of w2 reads elements j, j+blocks, ...; w2: (blocks, mid, out_block); block j
    writes outputs j, j+blocks, ... (the output-side permutation of Dao et al.'s P^T L P R).
    """
    kind = "monarch"
    description = "Monarch: two block-diagonal factors with a transpose permutation between them"
    flags = ("monarch_blocks",)

    def __init__(self, d_in: int, d_out: int, blocks: int = 4, bias: bool = True):
        super().__init__()
        if blocks < 1 or blocks > min(d_in, d_out):
            raise UserError(f"Monarch layer {d_in}->{d_out} cannot have {blocks} blocks; "
                            f"use 1 to {min(d_in, d_out)}")
        self.in_features, self.out_features, self.blocks = d_in, d_out, blocks
        ib, mid, ob = monarch_shape(d_in, d_out, blocks)
        # nn.Linear-like default init: each factor uniform with its own fan-in.
        b1, b2 = 1 / math.sqrt(ib), 1 / math.sqrt(mid)
        self.w1 = nn.Parameter(torch.empty(blocks, ib, mid).uniform_(-b1, b1))
        self.w2 = nn.Parameter(torch.empty(blocks, mid, ob).uniform_(-b2, b2))
        # The bias as HazyResearch/fly's StructuredLinear.reset_parameters_bias: its "fan_in" is the bias's
        # own length, d_out.
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-1 / math.sqrt(d_out), 1 / math.sqrt(d_out))) \
            if bias else None

    def factor_fans(self) -> dict:
        """{parameter: (fan_in, fan_out)} of each factor, for the structured parameterisation."""
        return {"w1": tuple(self.w1.shape[1:]), "w2": tuple(self.w2.shape[1:])}

    def _matmul(self, x2d):
        # Feature-major (x.T): the long row dimension N is every block product's output width, which
        # runs about 1.3x faster on CPU than batching over N with tiny (ib x mid) products.
        N, nb = x2d.shape[0], self.blocks
        ib, mid, ob = self.w1.shape[1], self.w1.shape[2], self.w2.shape[2]
        xt = F.pad(x2d, (0, nb * ib - self.in_features)).t().contiguous().reshape(nb, ib, N)
        h = torch.bmm(self.w1.transpose(1, 2), xt)                 # (nb, mid, N): element k*mid+q
        h = h.reshape(mid, nb, N).transpose(0, 1)                  # block j reads elements q*nb+j
        y = torch.bmm(self.w2.transpose(1, 2), h)                  # (nb, ob, N): block j writes s*nb+j
        return y.transpose(0, 1).reshape(ob * nb, N)[: self.out_features].t()

    @classmethod
    def build(cls, d_in, d_out, bias, monarch_blocks=4, blocks=None, **_):
        return cls(d_in, d_out, blocks=monarch_blocks if blocks is None else blocks, bias=bias)

    @staticmethod
    def settings(d_in, d_out, bias):
        return [({"blocks": b}, monarch_params(d_in, d_out, b, bias)) for b in range(min(d_in, d_out), 0, -1)]

    def setting(self):
        return {"blocks": self.blocks}

    @staticmethod
    def run_tag(spec):
        return f"b{spec.monarch_blocks}"

    @staticmethod
    def label(spec):
        return f"blocks={spec.monarch_blocks}"
