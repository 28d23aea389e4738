"""The linear algebra of one layer: a truncation method's transform (methods.py), one SVD, untransform.

Every method is "transform, SVD once, untransform": W' = L W R for diagonal or triangular L, R chosen
from calibration data; any rank r is then read off the same SVD as
    W_r = L^-1 U'_r S'_r V'_r^T R^-1  =  U @ V  with U (d_out, r), V (r, d_in).
So a search over ranks pays for one SVD per layer (`Decomposition.factors(r)` is two slices).
SVDs run on the CPU in float64: the matrices here are at most a few thousand wide, where float64
costs seconds at most and makes small singular values and errors trustworthy.
"""
from dataclasses import dataclass

import torch

from ..errors import UserError
from .methods import calibrated, method as method_named
from .ranks import resolve_rank


@dataclass
class Calib:
    """What the activation-aware methods need from one layer's calibration pass (float64)."""
    xtx: torch.Tensor = None         # (d_in, d_in) sum of x x^T over calibration tokens   (whiten)
    abs_sum: torch.Tensor = None     # (d_in,) sum of |x|                                    (asvd)
    tokens: int = 0
    row_fisher: torch.Tensor = None  # (d_out,) summed squared per-sample gradients per row (fisher)

    @classmethod
    def from_inputs(cls, X: torch.Tensor) -> "Calib":
        X = X.reshape(-1, X.shape[-1]).double()
        return cls(xtx=X.T @ X, abs_sum=X.abs().sum(0), tokens=X.shape[0])


class Decomposition:
    """One transformed SVD of a (d_out, d_in) weight; `factors(r)` gives rank-r U, V for any r."""

    def __init__(self, W: torch.Tensor, method: str = "svd", calib: Calib = None, alpha: float = 0.5):
        transform = method_named(method).transform
        if calibrated(method) and calib is None:
            raise UserError(f"method {method!r} needs calibration data from the training split")
        if isinstance(calib, torch.Tensor):
            calib = Calib.from_inputs(calib)
        self.method, self.shape, self.info = method, tuple(W.shape), {}
        W64 = W.detach().to("cpu", torch.float64)
        # row scale L (vector) and R (diagonal or triangular), undone after the SVD
        Wt, left, right_inv = transform(W64, calib, alpha, self.info)
        U, s, Vh = torch.linalg.svd(Wt, full_matrices=False)
        if left is not None:
            U = U / left[:, None]
        if right_inv is not None:
            kind, R = right_inv
            # V'^T R^-1: for the triangular S, solve S^T Z = V' instead of forming the inverse.
            Vh = Vh / R if kind == "diag" else torch.linalg.solve_triangular(R.T, Vh.T, upper=True).T
        self.U, self.s, self.Vh = U, s, Vh

    @property
    def max_rank(self) -> int:
        return len(self.s)

    def factors(self, r: int, dtype=torch.float32):
        """(U (d_out, r), V (r, d_in)) with U @ V the rank-r approximation, balanced: column i of U and
        row i of V have the same norm, sqrt(||u_i|| ||v_i||) (for plain SVD: sqrt(s_i) on each side).
        Unbalanced factors (all of s in U; whitening's V carries S^-1, so |U| ~ 10 and |V| ~ 1e-3) have
        the same product but make fine-tuning with AdamW, whose steps are the same size for every
        weight, wreck the small side."""
        if not 1 <= r <= self.max_rank:
            raise UserError(f"rank {r} is outside 1..{self.max_rank} for a {self.shape[0]}x{self.shape[1]} matrix")
        U, V = self.U[:, :r] * self.s[:r], self.Vh[:r]
        nu, nv = U.norm(dim=0), V.norm(dim=1)
        c = torch.where((nu > 0) & (nv > 0), (nv / nu.clamp_min(1e-300)).sqrt(), torch.ones_like(nu))
        return (U * c).to(dtype), (V / c[:, None]).to(dtype)


def truncate(W: torch.Tensor, rank, method: str = "svd", calib=None, alpha: float = 0.5):
    """Rank-`rank` factors (U, V) of W by `method`; rank may be an int or a SPEC string."""
    d = Decomposition(W, method, calib, alpha)
    s = singular_values(W) if calibrated(method) else d.s
    return d.factors(resolve_rank(rank, W.shape[0], W.shape[1], s))


def relative_error(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> float:
    W64 = W.detach().cpu().double()
    return float(torch.linalg.matrix_norm(W64 - U.cpu().double() @ V.cpu().double()) /
                 torch.linalg.matrix_norm(W64).clamp_min(1e-300))


def singular_values(W: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(W.detach().to("cpu", torch.float64))


def energy_kept(s: torch.Tensor, r: int) -> float:
    e = s.double() ** 2
    return float(e[:r].sum() / e.sum().clamp_min(1e-300))


def numerical_rank(s: torch.Tensor, shape) -> int:
    """Singular values above float32 round-off of the largest (numpy's matrix_rank rule)."""
    if len(s) == 0 or float(s[0]) == 0:
        return 0
    return int((s > s[0] * max(shape) * torch.finfo(torch.float32).eps).sum())
