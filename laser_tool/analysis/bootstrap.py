"""Effect sizes a referee accepts: the difference of two rows' test accuracy with a paired bootstrap
interval over seeds and test images, and a two-one-sided-tests (TOST) equivalence check.

Two rows are paired by seed (runs with one seed share the split and the batch order, whatever their
family) and by image (both classify the same test images). One bootstrap draw resamples the shared
seeds with replacement, then the test images within each drawn seed (the same images for both rows),
and takes the mean per-image difference; the interval is the percentile one over B draws (seeded, so
a report is reproducible). TOST at level alpha is equivalent to the (1 - 2 alpha) interval lying
inside (-M, M): a 90% interval for alpha = 0.05.
"""
import torch

from .paired import predictions

B = 2000


def correct_by_seed(side, metric: str = "test") -> dict:
    """{seed: bool tensor per image} of a row's runs (those with readable predictions)."""
    out = {}
    for run, seed in zip(side["runs"], side["seeds"]):
        p, _ = predictions(run)
        c = p.correct(metric) if p is not None else None
        if c is not None and seed not in out:
            out[seed] = c
    return out


def draws(a: dict, b: dict, n: int = B, seed: int = 0):
    """`n` bootstrap draws of mean accuracy(a) - accuracy(b) over their shared seeds and images (a float64
    tensor), or None when they share no seed or their images differ in number.

    Resampling a seed's N images with replacement only matters through how many drawn images each
    model alone got right: per image the difference is +1, -1 or 0, so the draw's counts of +1 and -1
    are Multinomial(N, shares in that seed) - the same distribution as indexing images, at the cost of
    three numbers per drawn seed instead of N."""
    seeds = sorted(set(a) & set(b))
    if not seeds or len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
        return None
    N = len(a[seeds[0]])
    plus = torch.tensor([float((a[s] & ~b[s]).sum()) / N for s in seeds], dtype=torch.float64)
    minus = torch.tensor([float((~a[s] & b[s]).sum()) / N for s in seeds], dtype=torch.float64)
    minus_rest = torch.where(plus < 1, minus / (1 - plus).clamp_min(1e-300), torch.zeros_like(minus))
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(seeds), (n, len(seeds)), generator=g)       # seeds drawn
    n_plus = torch.binomial(torch.full(which.shape, float(N), dtype=torch.float64), plus[which], generator=g)
    n_minus = torch.binomial(N - n_plus, minus_rest[which].clamp(0, 1), generator=g)  # Multinomial, in two steps
    return ((n_plus - n_minus) / N).mean(dim=1)


def interval(samples: torch.Tensor, level: float):
    """The percentile interval holding `level` of the draws."""
    lo, hi = torch.quantile(samples, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype))
    return float(lo), float(hi)


def effect(a_side, b_side, margin: float, n: int = B, seed: int = 0, metric: str = "test") -> dict:
    """{ci95, ci90, equivalent} of row a against row b: the 95% bootstrap interval of the difference,
    the 90% one, and whether TOST at alpha 0.05 finds them equivalent within `margin` (a fraction:
    0.005 for 0.5 pp). Nones when the rows cannot be paired."""
    s = draws(correct_by_seed(a_side, metric), correct_by_seed(b_side, metric), n, seed)
    if s is None:
        return dict(ci95=None, ci90=None, equivalent=None, draws=0)
    ci90 = interval(s, 0.90)
    return dict(ci95=interval(s, 0.95), ci90=ci90, equivalent=-margin < ci90[0] and ci90[1] < margin, draws=n)


def verdict(diff, p_holm, equivalent, margin: float, alpha: float = 0.05) -> str:
    """better | worse (the Holm-adjusted test rejects equality) | equivalent within M pp (TOST) |
    inconclusive (neither)."""
    if p_holm is not None and diff is not None and p_holm < alpha:
        return "better" if diff > 0 else "worse"
    if equivalent:
        return f"equivalent within {100 * margin:g} pp"
    return "inconclusive"
