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
CHUNK = 100  # draws computed at once (memory: CHUNK x seeds x images)


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
    tensor), or None when they share no seed or their images differ in number."""
    seeds = sorted(set(a) & set(b))
    if not seeds or len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
        return None
    d = torch.stack([a[s].double() - b[s].double() for s in seeds])     # (S, N) per-image differences
    S, N = d.shape
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        which = torch.randint(S, (k, S), generator=g)                    # seeds drawn
        images = torch.randint(N, (k, S, N), generator=g)                 # images drawn within each
        out.append(d[which[..., None], images].mean(dim=(1, 2)))
    return torch.cat(out)


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
