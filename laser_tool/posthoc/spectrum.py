"""Spectrum statistics of a layer (`laser-tool spectrum`): stable and effective rank, the
Marchenko-Pastur noise edge, energy kept at candidate ranks, and a progressive run's statistics over
training (`--over-training`). The figures are drawn by spectrum_plot.py.
"""
import math
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UserError
from ..runs.schema import config_path, read_config, read_metrics
from .decompose import energy_kept, numerical_rank, singular_values
from .ranks import candidate_rank


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
        r = candidate_rank(spec, d_out, d_in, s, name)
        if r is not None:                     # None: e.g. rho:0.05 of a 10-wide head is rank 0, no column
            energy[str(spec)] = {"rank": r, "energy": energy_kept(s, r)}
    return dict(layer=name, d_out=d_out, d_in=d_in, kind=kind, max_rank=min(d_out, d_in),
                numerical_rank=numerical_rank(s, W.shape), stable_rank=stable_rank(s),
                effective_rank=effective_rank(s), mp_threshold=thr, mp_count=int((s > thr).sum()),
                energy_at=energy, singular_values=[float(v) for v in s])


# ---------------------------------------------------------------------------------------------
# Over training (progressive runs: `laser-tool spectrum RUN --over-training`)


def training_spectra(run):
    """(rows, cuts) of a progressive run: one row per (epoch, layer) with its stable rank, effective
    rank, top singular value and structural rank (epoch 0: at initialisation), and the cut records."""
    run = Path(run)
    if not run.is_dir() or not config_path(run).is_file():
        raise UserError(f"{run} is not a run directory (no config.json); --over-training reads a run's "
                        f"config.json and metrics.jsonl")
    config, why = read_config(run)
    epochs, problem = read_metrics(run)
    if why or problem or not isinstance(config, dict):
        raise UserError(f"{run}: {why or problem or 'config.json is not an object'}; the run's files are damaged")
    prog = config.get("progressive") or {}
    per_epoch = [(0, prog.get("spectral_at_start"))] + [(r.epoch, r.extra.get("spectral")) for r in epochs]
    rows = [dict(epoch=e, layer=name, **stats) for e, layer_stats in per_epoch if layer_stats
            for name, stats in layer_stats.items()]
    if not rows:
        raise UserError(f"{run} has no per-epoch spectral statistics; `laser-tool train --reduce-at ... "
                        f"--reduce-layer ...` records them for the layers it cuts")
    return rows, prog.get("cuts") or []
