"""The post-hoc truncation methods, kept in one registry: a method is a transform of the weight before
its one SVD (decompose.py) plus one `register_method` line. Every other module asks the registry
(`METHODS`, `calibrated`, `cut_methods`) instead of naming a method.

Every method is "transform, SVD once, untransform": W' = L W R for diagonal or triangular L, R chosen
from calibration data. A method's `transform(W, calib, alpha, info)` takes the float64 (d_out, d_in)
weight and returns (W', left, right_inv): `left` the row scale L (a vector, or None), `right_inv` R as
("diag", vector) or ("tri", lower triangular S), or None. `gathers` names the calibration statistic it
needs (a Calib field, collected by calibration.py), None for none; `cut` offers it to progressive cuts
and studies.

  svd     L = R = I. Optimal for ||W - W_r||_F (Eckart-Young).
  whiten  R = S, the Cholesky factor of X^T X (SVD-LLM). ||(W - W_r) S||_F = ||X (W - W_r)^T||_F, so
          truncation becomes optimal for the layer's output error on the calibration inputs.
  asvd    R = diag(mean|x|^alpha) (ASVD): cheap activation awareness, no matrix inverse.
  fisher  L = diag(sqrt(summed squared gradients per output row)) (FWSVD): rows the loss is sensitive
          to are kept more faithfully.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import UserError


@dataclass(frozen=True)
class Method:
    name: str
    transform: Callable
    gathers: Optional[str] = None   # xtx | abs_sum | row_fisher: the Calib statistic it needs; None: none
    cut: bool = False               # offered to progressive cuts (train --reduce-method) and studies


METHODS = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


def method(name: str) -> Method:
    """The method `name`, or one line naming the choices."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def calibrated(name: str) -> bool:
    """Whether a method needs calibration data (an activation-aware one); svd does not."""
    return method(name).gathers is not None


def cut_methods() -> tuple:
    """The methods a progressive cut (train --reduce-method) and a study use."""
    return tuple(m.name for m in METHODS.values() if m.cut)


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


def plain(W64, calib, alpha, info):
    return W64, None, None


def whiten(W64, calib, alpha, info):
    if calib.xtx is None:
        raise UserError("method 'whiten' needs X^T X from calibration batches")
    S, shift = _stable_cholesky(calib.xtx.double().cpu())
    info["cholesky_shift"] = shift
    return W64 @ S, None, ("tri", S)


def activation_scaled(W64, calib, alpha, info):
    if calib.abs_sum is None or calib.tokens == 0:
        raise UserError("method 'asvd' needs mean |x| from calibration batches")
    scale = (calib.abs_sum.double().cpu() / calib.tokens) ** alpha
    scale = scale.clamp_min(1e-6 * float(scale.max().clamp_min(1e-30)))  # dead inputs: keep finite
    info["alpha"] = alpha
    return W64 * scale, None, ("diag", scale)


def fisher_weighted(W64, calib, alpha, info):
    if calib.row_fisher is None:
        raise UserError("method 'fisher' needs gradients from labelled calibration batches")
    w = calib.row_fisher.double().cpu().sqrt()
    w = w.clamp_min(1e-6 * float(w.max().clamp_min(1e-30)))
    return w[:, None] * W64, w, None


register_method(Method("svd", plain, cut=True))
register_method(Method("whiten", whiten, gathers="xtx", cut=True))
register_method(Method("asvd", activation_scaled, gathers="abs_sum"))
register_method(Method("fisher", fisher_weighted, gathers="row_fisher"))
