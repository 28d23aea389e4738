"""Drop-in replacements for nn.Linear(d_in, d_out) with fewer parameters.

Every layer here takes inputs shaped (..., d_in), returns (..., d_out), and offers
`dense_weight()` (the equivalent (d_out, d_in) matrix) and `bias` (the equivalent bias, or None),
so that `layer(x) == x @ layer.dense_weight().T + layer.bias` holds for all of them. Post-hoc
reduction and the tests lean on that identity.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..vocab import DYAD_VARIANTS
from .budget import lowrank_rank, round_up_sqrt, skl_rank
from .structured import BTTLinear, MatmulLinear, MonarchLinear


class LowRankLinear(nn.Module):
    """The seed's RankReductionLayer: up(down(x)), two nn.Linear with bias."""

    def __init__(self, d_in: int, d_out: int, r: float = 0.5, rank: int = None):
        super().__init__()
        rank = lowrank_rank(d_in, d_out, r) if rank is None else rank  # an explicit rank comes from --keep
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


class SKLinear(nn.Module):
    """Stacked Kronecker-product layer (Shapeshifter, NeurIPS 2021), as the seed wrote it.

    The n x m weight is padded to n' x m' (squares) and written as a sum of r Kronecker products of
    sn x sm factors: S = (A @ B) reshaped (sn, sm, sn, sm) -> (sn, sn, sm, sm)... -> (n', m').
    2*r*k parameters, k = sn*sm. No bias (the seed's layer has none). The seed's class forgot
    super().__init__(); this one calls it.
    """

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


class DyadLinear(MatmulLinear):
    """DYAD (arXiv 2312.06881): W x = BlockDiag(W_l) x + BlockDiag(W_u) P x.

    The first ("lower") term maps contiguous input chunks x.reshape(n_dyad, d_in/n_dyad); the second
    ("upper") term the strided chunks x.reshape(d_in/n_dyad, n_dyad).T. Variants: "it" permutes the
    input of the upper term (the official default), "ot" permutes its output instead (block j's
    outputs land on the strided positions j, j+n_dyad, ...), "dt" does both. 2*d_in*d_out/n_dyad
    weights plus d_out bias.
    """

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


class FactoredLinear(nn.Module):
    """x @ V.T @ U.T + b: the rank-r container that post-hoc truncation produces.

    U is (d_out, r), V is (r, d_in). r*(d_in + d_out) weights instead of d_in*d_out.
    """

    def __init__(self, U: torch.Tensor, V: torch.Tensor, bias: torch.Tensor = None):
        super().__init__()
        if U.shape[1] != V.shape[0]:
            raise ValueError(f"U {tuple(U.shape)} and V {tuple(V.shape)} do not share a rank")
        self.in_features, self.out_features, self.rank = V.shape[1], U.shape[0], V.shape[0]
        # Row-major copies, whatever the factors' layout (an SVD's U is column-major): a layer rebuilt from
        # a checkpoint is row-major, and on some CPUs (AMD) a GEMM rounds differently for the two layouts,
        # so a resumed or reloaded model would not compute what the cut one did.
        self.U = nn.Parameter(U.detach().clone(memory_format=torch.contiguous_format))
        self.V = nn.Parameter(V.detach().clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(memory_format=torch.contiguous_format))

    @classmethod
    def empty(cls, d_in: int, d_out: int, rank: int, bias: bool):
        """A correctly shaped, uninitialised layer for loading a checkpoint into."""
        return cls(torch.zeros(d_out, rank), torch.zeros(rank, d_in), torch.zeros(d_out) if bias else None)

    def forward(self, x):
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def dense_weight(self):
        return self.U @ self.V


class SNLinear(nn.Linear):
    """sigmaReparam linear layer (Zhai et al. 2023), as in the seed's ViT-tiny.

    The used weight is W / sigma_hat * sigma: sigma_hat is the spectral norm of W estimated by one
    power-iteration step per training forward (u, the right singular vector, is a buffer), sigma a
    learnable scalar initialised to the true spectral norm at init.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__(d_in, d_out, bias=bias)  # the bias keeps nn.Linear's init, as in the seed
        nn.init.trunc_normal_(self.weight, std=0.02)
        with torch.no_grad():
            _, s, vh = torch.linalg.svd(self.weight, full_matrices=False)
        self.register_buffer("u", vh[0].clone())
        self.sigma = nn.Parameter(s[:1].clone())

    def sigma_hat(self):
        with torch.no_grad():
            v = F.normalize(self.weight @ self.u, dim=0)
            u = F.normalize(self.weight.T @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        return torch.einsum("o,oi,i->", v, self.weight, u)

    def forward(self, x):
        return F.linear(x, self.weight / self.sigma_hat() * self.sigma, self.bias)

    def dense_weight(self):
        with torch.no_grad():
            v = F.normalize(self.weight @ self.u, dim=0)
            u = F.normalize(self.weight.T @ v, dim=0)
            sigma_hat = torch.einsum("o,oi,i->", v, self.weight, u)
        return self.weight / sigma_hat * self.sigma

    @torch.no_grad()
    def load_dense_weight(self, W: torch.Tensor):
        """Make dense_weight() equal W (up to the power-iteration estimate) keeping the layer type."""
        _, s, vh = torch.linalg.svd(W.float(), full_matrices=False)
        self.weight.copy_(W)
        self.u.copy_(vh[0])
        self.sigma.copy_(s[:1])


class SigmaReparam(nn.Module):
    """sigmaReparam (Zhai et al. 2023) around any Linear-like layer: the layer's matrix W is used as
    W / sigma_hat * sigma, as SNLinear does for a dense one, so that a structured layer replacing one of
    vit-tiny's SNLinear projections changes the structure and nothing else.

    sigma_hat is one power-iteration step per training forward (u, the right singular vector, is a
    buffer). The step itself runs without gradient on the layer's matrix (a d_in-column product, small
    next to a batch); the gradient reaches the factors through sigma_hat = v . W u computed with the
    layer's own forward on u, as SNLinear's einsum(v, W, u) reaches its weight. sigma is learnable and
    starts at W's spectral norm, so a new wrapper computes exactly what the wrapped layer does.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.in_features, self.out_features = layer.in_features, layer.out_features
        with torch.no_grad():
            _, s, vh = torch.linalg.svd(dense_weight(layer).float(), full_matrices=False)
        self.register_buffer("u", vh[0].clone())
        self.sigma = nn.Parameter(s[:1].clone())

    @property
    def bias(self):
        return self.layer.bias

    def _matvec(self, u):
        """W u through the layer's own forward (with gradient to its factors)."""
        y = self.layer(u[None])[0]
        bias = self.layer.bias
        return y if bias is None else y - bias

    @torch.no_grad()
    def _power_step(self, W):
        """(v, u): one power-iteration step on W from the stored u."""
        v = F.normalize(W @ self.u, dim=0)
        return v, F.normalize(W.T @ v, dim=0)

    def sigma_hat(self):
        with torch.no_grad():  # the step needs no gradient; v . W u below carries it
            v, u = self._power_step(dense_weight(self.layer))
            if self.training:
                self.u.copy_(u)
        return torch.dot(v, self._matvec(u))

    def forward(self, x):
        y, bias = self.layer(x), self.layer.bias
        scale = self.sigma / self.sigma_hat()
        return y * scale if bias is None else (y - bias) * scale + bias

    def dense_weight(self):
        W = dense_weight(self.layer)
        v, u = self._power_step(W)
        return W / (v @ W.detach() @ u) * self.sigma


def unwrapped(module: nn.Module) -> nn.Module:
    """The structured layer inside a SigmaReparam wrapper (or the module itself)."""
    return module.layer if isinstance(module, SigmaReparam) else module


def layer_kind(module: nn.Module) -> str:
    """Short name of a Linear-like layer's type, as `info` prints it (a sigmaReparam-wrapped layer by
    the kind it wraps)."""
    module = unwrapped(module)
    for cls, name in ((SNLinear, "sn-linear"), (LowRankLinear, "lowrank"), (SKLinear, "skl"),
                      (DyadLinear, "dyad"), (MonarchLinear, "monarch"), (BTTLinear, "btt"),
                      (FactoredLinear, "factored"), (nn.Linear, "linear")):
        if isinstance(module, cls):
            return name
    raise TypeError(f"{type(module).__name__} is not a Linear-like layer")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (d_out, d_in) matrix of any Linear-like layer, plain nn.Linear included."""
    return module.dense_weight() if hasattr(module, "dense_weight") else module.weight
