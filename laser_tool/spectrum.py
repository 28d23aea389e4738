"""The linear algebra of one layer: rank SPECs, the four truncation methods, spectrum statistics.

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
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from .errors import UserError
from .layers import lowrank_rank

METHODS = ("svd", "whiten", "asvd", "fisher")
SPEC_KINDS = ("rho", "params", "energy")
SPEC_HELP = ("an integer rank; rho:F = int(min(m,n)*F), LASER's kept fraction; params:F = "
             "int(F*m*n/(m+n)), the seed's low-rank rank keeping fraction F of the parameters; "
             "energy:F = the smallest rank keeping fraction F of the squared singular values")


# ---------------------------------------------------------------------------------------------
# Rank SPECs


@dataclass(frozen=True)
class RankSpec:
    kind: str        # "int" | "rho" | "params" | "energy"
    value: float
    text: str

    def __str__(self):
        return self.text


def parse_spec(text) -> RankSpec:
    """'64', 'rho:0.1', 'params:0.5', 'energy:0.9' -> RankSpec; UserError for anything else."""
    if isinstance(text, RankSpec):
        return text
    t = str(text).strip()
    if re.fullmatch(r"\d+", t):
        if int(t) < 1:
            raise UserError(f"rank {t} is below 1; a layer keeps at least one singular value")
        return RankSpec("int", int(t), t)
    m = re.fullmatch(r"([a-z]+):(.*)", t)
    if not m or m.group(1) not in SPEC_KINDS:
        hint = f" (did you mean rho:{t} or params:{t}?)" if re.fullmatch(r"0?\.\d+", t) else ""
        raise UserError(f"cannot parse rank SPEC {t!r}{hint}; use {SPEC_HELP}")
    try:
        f = float(m.group(2))
    except ValueError:
        raise UserError(f"rank SPEC {t!r}: {m.group(2)!r} is not a number; e.g. {m.group(1)}:0.5") from None
    if not 0 < f <= 1:
        raise UserError(f"rank SPEC {t!r}: the fraction must be in (0, 1]")
    return RankSpec(m.group(1), f, t)


def resolve_rank(spec, d_out: int, d_in: int, s: torch.Tensor = None, layer: str = "layer") -> int:
    """The integer rank a SPEC asks of a (d_out, d_in) matrix with singular values s; checked."""
    spec = parse_spec(spec)
    full = min(d_out, d_in)
    if spec.kind == "int":
        r = int(spec.value)
    elif spec.kind == "rho":
        r = int(full * spec.value)                     # LASER: int(min(m, n) * rho)
    elif spec.kind == "params":
        r = lowrank_rank(d_in, d_out, spec.value)      # the seed's RankReductionLayer rank
    else:
        r = energy_rank(s, spec.value)
    where = f"{spec} for {layer} ({d_out}x{d_in})"
    if r < 1:
        raise UserError(f"rank {r} from {where} is below 1; ask for a larger fraction or an integer rank")
    if r > full:
        raise UserError(f"rank {r} from {where} is above the maximum {full}; ask for at most {full}")
    return r


def energy_rank(s: torch.Tensor, f: float) -> int:
    """Smallest r with sum(s[:r]^2) >= f * sum(s^2)."""
    e = s.double() ** 2
    cum = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
    # The 1e-12 slack keeps energy:1.0 from asking for more than every value because of rounding.
    return min(int(torch.searchsorted(cum, torch.tensor(f - 1e-12, dtype=cum.dtype))) + 1, len(s))


def factored_params(d_out: int, d_in: int, r: int, bias: bool) -> int:
    return r * (d_out + d_in) + (d_out if bias else 0)


def break_even_rank(d_out: int, d_in: int) -> float:
    """A factored layer of rank r saves parameters only when r < m*n/(m+n)."""
    return d_out * d_in / (d_out + d_in)


# ---------------------------------------------------------------------------------------------
# Calibration statistics and decompositions


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


# ---------------------------------------------------------------------------------------------
# Spectrum statistics


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


def stable_rank(s: torch.Tensor) -> float:
    """||W||_F^2 / ||W||_2^2: how many directions carry the energy, robust to small values."""
    return float((s ** 2).sum() / (s[0] ** 2)) if float(s[0]) > 0 else 0.0


def effective_rank(s: torch.Tensor) -> float:
    """exp(entropy of s / sum(s)) (Roy & Vetterli 2007)."""
    p = s / s.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@lru_cache(maxsize=64)
def mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law with aspect ratio beta <= 1 (unit variance)."""
    from scipy.integrate import quad
    from scipy.optimize import brentq
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x):
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * beta * x)

    return brentq(lambda t: quad(density, lo, t)[0] - 0.5, lo, hi)


def mp_threshold(s: torch.Tensor, shape) -> float:
    """Largest singular value pure noise of the same size would reach (Marchenko-Pastur bulk edge).

    The noise level is estimated from the median singular value, assuming most of the spectrum is
    noise (Gavish & Donoho 2014): an m x n (m <= n) noise matrix of entry std sigma has median
    singular value sigma*sqrt(n*mu_beta) and largest about sigma*(sqrt(m) + sqrt(n)).
    """
    m, n = sorted(shape)
    sigma = float(s.double().median()) / math.sqrt(n * mp_median(m / n))
    return sigma * (math.sqrt(m) + math.sqrt(n))


def spectrum_row(name: str, W: torch.Tensor, kind: str, specs=()) -> dict:
    """Everything `laser-tool spectrum` reports for one layer."""
    s = singular_values(W)
    d_out, d_in = W.shape
    thr = mp_threshold(s, W.shape)
    energy = {}
    for spec in specs:
        try:
            r = resolve_rank(spec, d_out, d_in, s, name)
        except UserError:
            continue                          # e.g. rho:0.05 of a 10-wide head is rank 0: no column
        energy[str(spec)] = {"rank": r, "energy": energy_kept(s, r)}
    return dict(layer=name, d_out=d_out, d_in=d_in, kind=kind, max_rank=min(d_out, d_in),
                numerical_rank=numerical_rank(s, W.shape), stable_rank=stable_rank(s),
                effective_rank=effective_rank(s), mp_threshold=thr, mp_count=int((s > thr).sum()),
                energy_at=energy, singular_values=[float(v) for v in s])


def plot_spectra(rows, path) -> None:
    """Normalised spectra (s_i / s_1 against i / max rank), one panel per layer role across blocks."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_write_bytes
    groups = {}
    for r in rows:
        role = r["layer"].split(".", 2)[2] if r["layer"].startswith("blocks.") else r["layer"]  # attn.out, ...
        groups.setdefault(role, []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.5), squeeze=False)
    for ax, (role, rs) in zip(axes[0], groups.items()):
        for r in rs:
            s = torch.tensor(r["singular_values"])
            x = torch.arange(1, len(s) + 1) / len(s)
            ax.semilogy(x, (s / s[0]).clamp_min(1e-12), label=f"{r['layer']} ({r['mp_count']} > MP)")
        ax.set_title(role)
        ax.set_xlabel("index / max rank")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("s_i / s_1")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
