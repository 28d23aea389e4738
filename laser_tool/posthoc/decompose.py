"""The linear algebra of one layer: the four truncation methods, each one transformed SVD.

Every method is "transform, SVD once, untransform": W' = L W R for diagonal or triangular L, R chosen
from calibration data; any rank r is then read off the same SVD as
    W_r = L^-1 U'_r S'_r V'_r^T R^-1  =  U @ V  with U (d_out, r), V (r, d_in).
So a search over ranks pays for one SVD per layer (`Decomposition.factors(r)` is two slices).

  svd     L = R = I. Optimal for ||W - W_r||_F (Eckart-Young).
  whiten  R = S, the Cholesky factor of X^T X (SVD-LLM). ||(W - W_r) S||_F = ||X (W - W_r)^T||_F, so
          truncation becomes optimal for the layer's output error on the calibration inputs.
  asvd    R = diag(mean|x|^alpha) (ASVD): cheap activation awareness, no matrix inverse.
  fisher  L = diag(sqrt(summed squared gradients per output row)) (FWSVD): rows the loss is sensitive
          to are kept more faithfully.
SVDs run on the CPU in float64: the matrices here are at most a few thousand wide, where float64
costs seconds at most and makes small singular values and errors trustworthy.
"""
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..vocab import REDUCE_METHODS as METHODS
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


def _stable_cholesky(G: torch.Tensor):
    """Lower S with S S^T = G (+ shift I). X^T X is only semi-definite when the calibration tokens
    are fewer than d_in or features are dead, so on failure shift the spectrum up until it factors."""
    S, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return S, 0.0
    lam_min = float(torch.linalg.eigvalsh(G)[0])
    shift = max(-lam_min, 0.0) + 1e-6 * max(float(G.diagonal().mean()), 1e-12)
    eye = torch.eye(G.shape[0], dtype=G.dtype)
    for _ in range(30):
        S, info = torch.linalg.cholesky_ex(G + shift * eye)
        if int(info) == 0:
            return S, shift
        shift *= 10
    raise UserError("whitening failed: X^T X is not positive definite even after an eigenvalue shift; "
                    "use more --calib-batches or --method svd")


class Decomposition:
    """One transformed SVD of a (d_out, d_in) weight; `factors(r)` gives rank-r U, V for any r."""

    def __init__(self, W: torch.Tensor, method: str = "svd", calib: Calib = None, alpha: float = 0.5):
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method != "svd" and calib is None:
            raise UserError(f"method {method!r} needs calibration data from the training split")
        if isinstance(calib, torch.Tensor):
            calib = Calib.from_inputs(calib)
        self.method, self.shape, self.info = method, tuple(W.shape), {}
        W64 = W.detach().to("cpu", torch.float64)
        left, right_inv = None, None                   # row scale L^-1 (vector), R^-1 applied to V
        if method == "whiten":
            if calib.xtx is None:
                raise UserError("method 'whiten' needs X^T X from calibration batches")
            S, shift = _stable_cholesky(calib.xtx.double().cpu())
            self.info["cholesky_shift"] = shift
            Wt = W64 @ S
            right_inv = ("tri", S)
        elif method == "asvd":
            if calib.abs_sum is None or calib.tokens == 0:
                raise UserError("method 'asvd' needs mean |x| from calibration batches")
            scale = (calib.abs_sum.double().cpu() / calib.tokens) ** alpha
            scale = scale.clamp_min(1e-6 * float(scale.max().clamp_min(1e-30)))  # dead inputs: keep finite
            Wt = W64 * scale
            right_inv = ("diag", scale)
            self.info["alpha"] = alpha
        elif method == "fisher":
            if calib.row_fisher is None:
                raise UserError("method 'fisher' needs gradients from labelled calibration batches")
            w = calib.row_fisher.double().cpu().sqrt()
            w = w.clamp_min(1e-6 * float(w.max().clamp_min(1e-30)))
            Wt = w[:, None] * W64
            left = w
        else:
            Wt = W64
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
    s = d.s if method == "svd" else singular_values(W)
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
