"""Linear-like layers shared by every family: the post-hoc FactoredLinear, the seed's sigmaReparam
SNLinear and the SigmaReparam wrapper for a structured layer; the structured families themselves live in
families/, one module each.

Every Linear-like layer takes inputs shaped (..., d_in), returns (..., d_out), and offers
`dense_weight()` (the equivalent (d_out, d_in) matrix) and `bias` (the equivalent bias, or None),
so that `layer(x) == x @ layer.dense_weight().T + layer.bias` holds for all of them. Post-hoc
reduction and the tests lean on that identity.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import family_of


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
    if (fam := family_of(module)) is not None:
        return fam.kind
    for cls, name in ((SNLinear, "sn-linear"), (FactoredLinear, "factored"), (nn.Linear, "linear")):
        if isinstance(module, cls):
            return name
    raise TypeError(f"{type(module).__name__} is not a Linear-like layer")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (d_out, d_in) matrix of any Linear-like layer, plain nn.Linear included."""
    return module.dense_weight() if hasattr(module, "dense_weight") else module.weight
