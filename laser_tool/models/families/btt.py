"""BTT (Qiu et al., ICML 2024, "Compute Better Spent"): a two-core Block Tensor-Train layer. With
d_in = m0*m1 and d_out = n0*n1, the input viewed as an (m1, m0) grid; core 1 maps each row's m0 values to
n0*r (one matrix per row index), core 2 maps, for each of the n0 output groups, the m1*r values to n1
outputs. r is the rank; at r >= min(m0, n1) it can express any dense matrix."""
import math

import torch
import torch.nn as nn

from ...errors import UserError
from ..structured import MatmulLinear
from .registry import register_family


def even_split(n: int):
    """(a, b) with a*b == n and a <= b as close as possible (a = 1 for a prime n). Not the authors' rule
    (prime_split is); kept for comparison in tests and docs/structured.md."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def prime_factors(n: int) -> list:
    """The prime factors of n with multiplicity, ascending (12 -> [2, 2, 3])."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def prime_split(n: int):
    """(a, b) with a*b == n, a <= b, by Qiu et al.'s rule (compute-better-spent, nn/cola_nn.py, `factorize(x,
    2)`): the prime factors, smallest first, each multiplied into the currently smaller of two numbers (the
    first on a tie), then sorted. Greedy, so not always the most even pair: 1152 -> (24, 48), not (32, 36)."""
    nums = [1, 1]
    for p in prime_factors(n):
        nums[nums.index(min(nums))] *= p
    return tuple(sorted(nums))


def btt_shape(d_in: int, d_out: int):
    """(m0, m1, n0, n1): d_in = m0*m1 (m0 the fast index), d_out = n0*n1 (n1 the fast index), each split as
    Qiu et al.'s build_btt does (ms = factorize(d_in, 2), ns = factorize(d_out, 2), ascending)."""
    m0, m1 = prime_split(d_in)
    n0, n1 = prime_split(d_out)
    return m0, m1, n0, n1


def btt_params(d_in: int, d_out: int, rank: int, bias: bool) -> int:
    m0, m1, n0, n1 = btt_shape(d_in, d_out)
    return rank * (d_in * n0 + d_out * m1) + (d_out if bias else 0)


@register_family
class BTTLinear(MatmulLinear):
    """Two-core Block Tensor-Train layer of rank r (Qiu et al. 2024).

    x (.., m1, m0) -> core1 (m1, m0, n0*r): for each i1 an m0 -> n0*r matrix -> regroup by j0 ->
    core2 (n0, m1*r, n1): for each j0 an m1*r -> n1 matrix -> y index j0*n1 + j1.
    r*(d_in*n0 + d_out*m1) weights.
    """
    kind = "btt"
    description = "Block Tensor-Train of rank r, two cores (Qiu et al. 2024)"
    flags = ("btt_rank",)

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

    @classmethod
    def build(cls, d_in, d_out, bias, btt_rank=1, rank=None, **_):
        return cls(d_in, d_out, rank=btt_rank if rank is None else rank, bias=bias)

    @staticmethod
    def settings(d_in, d_out, bias):
        m0, m1, n0, n1 = btt_shape(d_in, d_out)
        return [({"rank": r}, btt_params(d_in, d_out, r, bias)) for r in range(1, min(m0, n1) + 1)]

    def setting(self):
        return {"rank": self.rank}

    @staticmethod
    def run_tag(spec):
        return f"r{spec.btt_rank}"

    @staticmethod
    def label(spec):
        return f"rank={spec.btt_rank}"
