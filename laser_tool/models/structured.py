"""Monarch and Block Tensor-Train (BTT) layers: drop-in replacements for nn.Linear(d_in, d_out).

Like every layer in layers.py they take (..., d_in), return (..., d_out), and offer `dense_weight()` and
`bias`, so that `layer(x) == x @ layer.dense_weight().T + layer.bias`.

- Monarch (Dao et al., ICML 2022): two block-diagonal matrices with a fixed "transpose" permutation
  between them (and its mirror on the output). The input is zero-padded to blocks*in_block and the
  output cropped to d_out, so any shape works (as in Qiu et al.'s build_monarch).
- BTT (Qiu et al., ICML 2024, "Compute Better Spent"): with d_in = m0*m1 and d_out = n0*n1, the input
  viewed as an (m1, m0) grid; core 1 maps each row's m0 values to n0*r (one matrix per row index),
  core 2 maps, for each of the n0 output groups, the m1*r values to n1 outputs. r is the rank; at
  r >= min(m0, n1) it can express any dense matrix.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .budget import btt_shape, monarch_shape


class MatmulLinear(nn.Module):
    """A Linear-like layer defined by `_matmul(x2d)`, its product on (N, d_in) inputs without the bias:
    forward for any leading shape, plus the bias, and `dense_weight()` as the product of the identity."""

    def forward(self, x):
        y = self._matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dense_weight(self):
        p = next(self.parameters())
        return self._matmul(torch.eye(self.in_features, dtype=p.dtype, device=p.device)).T


class MonarchLinear(MatmulLinear):
    """y = crop(P_out BlockDiag(w2) P BlockDiag(w1) pad(x)) + b.

    w1: (blocks, in_block, mid) maps contiguous input chunks; P regroups the (blocks, mid) grid as
    (mid, blocks) so block j of w2 reads elements j, j+blocks, ...; w2: (blocks, mid, out_block); block j
    writes outputs j, j+blocks, ... (the output-side permutation of Dao et al.'s P^T L P R).
    """

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


class BTTLinear(MatmulLinear):
    """Two-core Block Tensor-Train layer of rank r (Qiu et al. 2024).

    x (.., m1, m0) -> core1 (m1, m0, n0*r): for each i1 an m0 -> n0*r matrix -> regroup by j0 ->
    core2 (n0, m1*r, n1): for each j0 an m1*r -> n1 matrix -> y index j0*n1 + j1.
    r*(d_in*n0 + d_out*m1) weights.
    """

    def __init__(self, d_in: int, d_out: int, rank: int = 1, bias: bool = True):
        super().__init__()
        if rank < 1:
            raise UserError(f"BTT layer {d_in}->{d_out} has rank {rank}; use a rank of at least 1")
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        m0, m1, n0, n1 = btt_shape(d_in, d_out)
        self.dims = (m0, m1, n0, n1)
        b1, b2 = 1 / math.sqrt(m0), 1 / math.sqrt(m1 * rank)
        self.core1 = nn.Parameter(torch.empty(m1, m0, n0 * rank).uniform_(-b1, b1))
        self.core2 = nn.Parameter(torch.empty(n0, m1 * rank, n1).uniform_(-b2, b2))
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-1 / math.sqrt(d_in), 1 / math.sqrt(d_in))) \
            if bias else None

    def factor_fans(self) -> dict:
        return {"core1": tuple(self.core1.shape[1:]), "core2": tuple(self.core2.shape[1:])}

    def _matmul(self, x2d):
        # Feature-major (x.T), as in MonarchLinear: 1.4-1.8x faster on CPU than batching over N.
        N, (m0, m1, n0, n1), r = x2d.shape[0], self.dims, self.rank
        xt = x2d.t().contiguous().reshape(m1, m0, N)
        h = torch.bmm(self.core1.transpose(1, 2), xt)                   # (m1, n0*r, N)
        h = h.reshape(m1, n0, r, N).transpose(0, 1).reshape(n0, m1 * r, N)
        y = torch.bmm(self.core2.transpose(1, 2), h)                    # (n0, n1, N)
        return y.reshape(n0 * n1, N).t()
