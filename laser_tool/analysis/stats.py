"""The statistics `compare` uses, as pure functions of numbers (no runs, no files).

Which test when (ANCHORS.md, statistics conventions):
- one seed on a side, per-image predictions on both: the two models answered the SAME test images,
  so the evidence is the images they disagree on: exact McNemar (binomial on the discordant pairs)
  and a paired interval for the difference of accuracies. It measures test-set noise only.
- several seeds on both sides that descend from the same trained weights (a post-hoc cut and its own
  baseline, two cuts of one baseline): a paired t-test over the shared seeds.
- several seeds otherwise: Welch's t-test.
- one seed without predictions: an unpaired two-proportion z-test, which ignores the pairing and is
  conservative.
Many comparisons in one table: Holm's step-down adjustment, reported beside the raw p.
"""
import math
import warnings
from statistics import mean, stdev

import torch
from scipy.stats import binom, norm, t, ttest_ind

Z95 = 1.959963984540054  # two-sided 95% normal quantile
P_KINDS = {
    "mcnemar": "exact McNemar test on the test images the two models classify differently (one seed: "
               "test-set noise only, not seed-to-seed variation)",
    "paired-t": "paired t-test over the seeds both rows share (a post-hoc row and its own baseline's seeds)",
    "welch": "Welch's t-test over seeds (independent samples)",
    "z-unpaired": "two-proportion z-test treating the two test-set scores as independent (no per-image "
                  "predictions to pair on; conservative)",
}


def summarize(accs, test_size=None) -> dict:
    """n, mean, sample std and a 95% interval of the mean: the t-interval over seeds when n >= 2;
    with one seed only the test set's binomial sampling interval (ci_kind "test-set"), which leaves
    seed-to-seed variation out; None where neither is defined."""
    accs = [float(a) for a in accs]
    n = len(accs)
    out = dict(n=n, mean=mean(accs) if n else None, std=None, ci_low=None, ci_high=None, ci_kind=None)
    if n >= 2:
        sd = stdev(accs)
        half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        out.update(std=sd, ci_kind="seeds")
    elif n == 1 and test_size:
        half = Z95 * math.sqrt(accs[0] * (1 - accs[0]) / test_size)
        out.update(ci_kind="test-set")
    else:
        return out
    # An accuracy lies in [0, 1]: a symmetric interval (few seeds far apart, or near 0 or 1) is cut there.
    out.update(ci_low=max(0.0, out["mean"] - half), ci_high=min(1.0, out["mean"] + half))
    return out


def diff_halfwidth(a, b, test_a=None, test_b=None):
    """(half-width, kind) of the 95% interval of mean(a) - mean(b) for independent samples: Welch's
    when both sides have n >= 2, else normal with the binomial test-set variance standing in for a
    single seed's."""
    if len(a) >= 2 and len(b) >= 2:
        va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
        if va + vb == 0:
            return 0.0, "seeds"
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        return float(t.ppf(0.975, df)) * math.sqrt(va + vb), "seeds"

    def var(x, size):
        if len(x) >= 2:
            return stdev(x) ** 2 / len(x)
        return mean(x) * (1 - mean(x)) / size if size and x else None
    va, vb = var(a, test_a), var(b, test_b)
    return (None, None) if va is None or vb is None else (Z95 * math.sqrt(va + vb), "test-set")


def welch_p(a, b):
    """Two-sided Welch t-test p-value, or None when either side has n < 2 or both have no spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    if stdev(a) == 0 and stdev(b) == 0:
        return None  # t is 0/0: nothing to test
    with warnings.catch_warnings():  # scipy warns on near-identical samples; the p it gives is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return None if math.isnan(p) else p


def paired_t(a, b):
    """(two-sided p, 95% half-width of mean(a - b)) of the paired t-test on equal-length a, b
    (element i of each from the same seed). p is None for n < 2 or when every difference is equal
    (t is 0/0 or infinite: nothing a t-test can say); the half-width is then 0 or None."""
    if len(a) != len(b):
        raise ValueError("paired samples must have equal length")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return None, None
    sd = stdev(d)
    if sd <= 1e-12:  # equal differences up to float rounding (accuracies are multiples of 1/N)
        return None, 0.0
    tstat = mean(d) / (sd / math.sqrt(n))
    p = float(2 * t.sf(abs(tstat), n - 1))
    return p, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p: b images only model A got right, c only model B. Under the null the
    b + c discordant images split as Binomial(b + c, 1/2); p = 2 P(X <= min(b, c)), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), n, 0.5)))


def paired_counts(correct_a, correct_b):
    """(n, b, c): images, right only for A, right only for B, from two equal-length bool sequences."""
    a, b = torch.as_tensor(correct_a, dtype=torch.bool), torch.as_tensor(correct_b, dtype=torch.bool)
    if a.shape != b.shape:
        raise ValueError("paired predictions must cover the same images")
    return len(a), int((a & ~b).sum()), int((~a & b).sum())


def paired_diff_interval(n: int, b: int, c: int):
    """(difference of accuracies A - B, 95% half-width) for two models scored on the same n images:
    the per-image differences are +1 (b times), -1 (c times) or 0, so the variance of their mean is
    ((b + c)/n - ((b - c)/n)^2) / n (normal approximation, as the Wald interval for paired proportions)."""
    d = (b - c) / n
    var = ((b + c) / n - d * d) / n
    return d, Z95 * math.sqrt(max(var, 0.0))


def two_proportion_z(p1: float, n1: int, p2: float, n2: int):
    """Two-sided p of the unpaired two-proportion z-test (pooled variance), or None without sizes."""
    if not n1 or not n2:
        return None
    pool = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    if se == 0:
        return None if p1 == p2 else 0.0
    return float(2 * norm.sf(abs(p1 - p2) / se))


def holm(pvalues) -> list:
    """Holm's step-down adjusted p-values, in the input order; None entries stay None and do not count
    as comparisons. adjusted_(i) = max over j <= i of min(1, (m - j + 1) p_(j)) for p sorted ascending."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), [None] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
