"""DYAD (arXiv 2312.06881): two block-diagonal terms, one on contiguous and one on strided input chunks."""
import math

import torch
import torch.nn as nn

from ...errors import UserError
from ...vocab import DYAD_VARIANTS
from ..structured import MatmulLinear
from .registry import register_family


def dyad_params(d_in, d_out, n_dyad, bias):
    return 2 * d_in * d_out // n_dyad + (d_out if bias else 0)


def _dyad_split(a: torch.Tensor) -> int:
    """How many row chunks the block product on (nd, N, k) is cut into (1 = plain bmm); CUDA only.

    The weight gradient of an nd-batched bmm is nd products with inner size N (16,640 rows at the seed's
    shapes) and tiny (k x bo) outputs: a handful of thread blocks, most of the GPU idle. Cutting the rows
    into chunks makes it nd*chunks products summed afterwards (split-K), about 2x faster on an H200.
    On CPU it only adds copies, so it stays off there.
    """
    N = a.shape[1]
    if not a.is_cuda:
        return 1
    for chunks in (32, 16, 8, 4, 2):
        if N % chunks == 0 and N // chunks >= 256:
            return chunks
    return 1


def _block_bmm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(nd, N, k) @ (nd, k, bo) -> (nd, N, bo); identical to torch.bmm up to float summation order."""
    chunks = _dyad_split(a)
    if chunks == 1:
        return torch.bmm(a, w)
    nd, N, k = a.shape
    # w broadcast over the chunks: autograd sums its gradient over them, i.e. split-K for dW.
    return torch.matmul(a.reshape(nd, chunks, N // chunks, k), w.unsqueeze(1)).reshape(nd, N, -1)


@register_family
class DyadLinear(MatmulLinear):
    """DYAD (arXiv 2312.06881): W x = BlockDiag(W_l) x + BlockDiag(W_u) P x.

    The first ("lower") term maps contiguous input chunks x.reshape(n_dyad, d_in/n_dyad); the second
    ("upper") term the strided chunks x.reshape(d_in/n_dyad, n_dyad).T. Variants: "it" permutes the
    input of the upper term (the official default), "ot" permutes its output instead (block j's
    outputs land on the strided positions j, j+n_dyad, ...), "dt" does both. 2*d_in*d_out/n_dyad
    weights plus d_out bias.
    """
    kind = "dyad"
    description = "DYAD: block-diagonal terms on contiguous and strided input chunks"
    flags = ("n_dyad", "dyad_variant")

    def __init__(self, d_in: int, d_out: int, n_dyad: int = 8, bias: bool = True, variant: str = "it"):
        super().__init__()
        if variant not in DYAD_VARIANTS:
            raise UserError(f"unknown DYAD variant {variant!r}; choose one of {', '.join(DYAD_VARIANTS)}")
        if n_dyad < 1 or d_in % n_dyad or d_out % n_dyad:
            raise UserError(
                f"DYAD layer {d_in}->{d_out} needs d_in and d_out divisible by n_dyad={n_dyad}; "
                f"pick an n_dyad that divides both")
        self.in_features, self.out_features, self.n_dyad, self.variant = d_in, d_out, n_dyad, variant
        bi, bo = d_in // n_dyad, d_out // n_dyad
        # As the official layer (asappresearch/dyad, sparse_opt/dyad.py, Dyad.__init__): weights and bias
        # uniform in +-1/sqrt(d_in), the bound of an nn.Linear of the full input width. (Each output sees
        # only 2*bi inputs, so at n_dyad > 2 this starts the layer's outputs smaller than a dense layer's.)
        bound = 1.0 / math.sqrt(d_in)
        self.w_lower = nn.Parameter(torch.empty(n_dyad, bi, bo).uniform_(-bound, bound))
        self.w_upper = nn.Parameter(torch.empty(n_dyad, bi, bo).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound)) if bias else None

    def _matmul(self, x2d):
        """x2d (N, d_in) -> (N, d_out) without the bias."""
        N, nd = x2d.shape[0], self.n_dyad
        contiguous = x2d.reshape(N, nd, -1).transpose(0, 1)          # (nd, N, bi), chunk j = x[j*bi:(j+1)*bi]
        strided = x2d.reshape(N, -1, nd).permute(2, 0, 1)            # (nd, N, bi), chunk j = x[j::nd]
        if self.variant == "it":
            # Both terms write contiguous outputs, so one bmm over the concatenated inputs does both.
            w = torch.cat([self.w_lower, self.w_upper], dim=1)       # (nd, 2bi, bo)
            y = _block_bmm(torch.cat([contiguous, strided], dim=2), w)  # (nd, N, bo)
            return y.transpose(0, 1).reshape(N, -1)
        upper_in = strided if self.variant == "dt" else contiguous
        lower = _block_bmm(contiguous, self.w_lower).transpose(0, 1).reshape(N, -1)
        upper = _block_bmm(upper_in, self.w_upper).permute(1, 2, 0).reshape(N, -1)  # output j::nd
        return lower + upper

    @classmethod
    def build(cls, d_in, d_out, bias, n_dyad=8, dyad_variant="it", **_):
        return cls(d_in, d_out, n_dyad=n_dyad, bias=bias, variant=dyad_variant)

    @staticmethod
    def settings(d_in, d_out, bias):
        g = math.gcd(d_in, d_out)
        return [({"n_dyad": n}, dyad_params(d_in, d_out, n, bias)) for n in range(g, 0, -1) if g % n == 0]

    def setting(self):
        return {"n_dyad": self.n_dyad}

    def factor_fans(self):
        # The two terms are summed, not chained: each is one factor (parametrize.py).
        bi, bo = self.in_features // self.n_dyad, self.out_features // self.n_dyad
        return {"w_lower": (bi, bo), "w_upper": (bi, bo)}

    @staticmethod
    def run_tag(spec):
        return f"n{spec.n_dyad}"

    @staticmethod
    def label(spec):
        return f"n={spec.n_dyad}"

    @staticmethod
    def label_options(spec):
        """Words a row carries with or without --keep: the permutation side when not the default."""
        return f" {spec.dyad_variant}" if spec.dyad_variant != "it" else ""
