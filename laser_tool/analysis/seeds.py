"""Verdicts about methods, from seeds (issue 29): pure functions of per-seed accuracies (no files, no torch).

The seed is the unit. Two rows trained with the same seeds pair by seed: one difference d_i = acc_a(i) -
acc_b(i) per seed, each on the full test set, so d_i holds the seed-to-seed variation of the methods
and the test-set noise of that pair of trained models. Over the n differences: their mean, the paired
t test (n - 1 df) of H0: d = 0 and TOST (two one-sided t tests, p = the larger) of H0: |d| >= margin,
exact for a normal seed effect plus test-set noise at any n >= 2. A percentile bootstrap over 2 or 3
seeds is not: tests/test_seed_stats.py shows it covering far less than it claims.

MIN_SEEDS = 3. Over 2 seeds a t test is exact but has 1 df: t(0.975, 1) = 12.7, 6.5 times the normal
1.96, and at a family's first level (alpha/6: t(0.9958, 1) = 76) it decides nothing a study meets; its
sd is one difference of two numbers. Fewer seeds: the verdict is "too few seeds", the comparison stays
out of the family (no p is adjusted for it), and `seeds_note` says in words what such a study judges.

One family (`step_down`). Each comparison brings two hypotheses, difference (H0: d = 0) and equivalence
(H0: |d| >= margin), into ONE step-down: Holm's with Shaffer's (1986) logical restriction. For margin >
0 the two nulls of a comparison are disjoint, so at most one of them is true. Step j tests the j-th
smallest p at alpha / t_j, t_j = the number of comparisons holding a hypothesis not yet stepped past;
the first p above its level stops it. Valid under any dependence: at the first false rejection every
earlier rejection was of a false null, so every true null is still counted and t_j >= m0 (the true
nulls, at most one per comparison); that p is <= alpha / m0, and P(any of m0 true p's <= alpha / m0)
<= alpha (Bonferroni). It is Holm over the 2K hypotheses, sharpened by that fact: adding the
equivalence claims costs nothing at the first step (alpha/K, not alpha/2K). A comparison is better or
worse when its difference is rejected (the estimate's sign says which; read as directional, as Holm's
two-sided tests usually are), equivalent when its equivalence is; both (a small difference measured
well): the difference wins and `equivalent` stays True beside it. Otherwise inconclusive.

The interval shown is the verdict's: `level` is the alpha at which the step-down tested a hypothesis,
or, past its first acceptance, the level it stopped at (every later p is above it). The difference's
interval is the (1 - level) two-sided t interval, the equivalence's the (1 - 2 level) one (TOST's), so
"interval excludes 0 <=> better/worse" and "interval inside (-margin, margin) <=> equivalent" hold exactly.

Looks (`study --until-decided --max-seeds K`): seeds come in rounds planned ahead, `looks_plan` (L seed
counts n_1 < ... < n_L), and look l decides at alpha_l, alpha_1 + ... + alpha_L = alpha (`look_alphas`:
Bonferroni spending over the planned looks, uniform alpha / L or, by default, alpha_l proportional to n_l,
which keeps more for the looks with more seeds). An undecided comparison is tested at look l on exactly
its first n_l seeds (the caller's part: seeds numbered in order, every undecided row topped up to n_l).
Then it is valid for any dependence between looks, any weights and any data-driven choice of which
rows get seeds: a false rejection at look l needs a true null's fixed-n_l p <= alpha_l / m0 (the
step-down argument above holds across looks, since rejections carried over were of false nulls), and
the union of those m0 L events has probability <= sum_l m0 alpha_l / m0 = alpha.
A comparison decided at a look keeps that look's record for good; its other hypothesis stays counted in
t_j but is not tested again (conservative). p_adjusted is the step-down's adjusted p times alpha /
alpha_l (capped at 1): p_adjusted <= alpha is the decision at every look. Sizes and power by simulation:
analysis/seedsim.py, bench/seed_power.py, docs/statistics.md.
"""
import math

import numpy as np
from scipy.stats import t as student

MIN_SEEDS = 3
SETTLED = ("better", "worse", "equivalent")
TOO_FEW = "too few seeds"
ONE_SEED = ("a one-seed study judges its trained models, not the methods: each test compares two trained "
            "networks on the same test images (test-set noise only, no seed-to-seed variation); a verdict about "
            f"methods needs at least {MIN_SEEDS} seeds per row")


def seeds_note(n: int):
    """What a study of n seeds per comparison can say, in words; None when it can decide about methods."""
    if n <= 1:
        return ONE_SEED
    if n < MIN_SEEDS:
        return (f"{n} seeds are too few for a verdict about methods: a t test over {n} seeds has {n - 1} degree(s) "
                f"of freedom (at least {MIN_SEEDS} seeds per row)")
    return None


def differences(a, b) -> np.ndarray:
    """The per-seed differences a - b: sequences pair by position (equal lengths), dicts {seed: accuracy}
    on their shared seeds, in seed order."""
    if isinstance(a, dict) and isinstance(b, dict):
        seeds = sorted(set(a) & set(b))
        a, b = [a[s] for s in seeds], [b[s] for s in seeds]
    if len(a) != len(b):
        raise ValueError("paired seeds: both rows need an accuracy for each seed")
    return np.asarray(a, dtype=float) - np.asarray(b, dtype=float)


def t_tests(mean, sd, n, margin):
    """(p, p_equivalence), element-wise over arrays of the differences' mean, sd and count: the two-sided
    one-sample t p of H0: d = 0 and TOST's p of H0: |d| >= margin (the larger of the one-sided p's against
    -margin, alternative greater, and +margin, alternative less). NaN where n < 2 or every difference is
    equal (sd 0 up to rounding: t is 0/0 or infinite, nothing a t test can say)."""
    mean, sd, n = np.broadcast_arrays(np.asarray(mean, float), np.asarray(sd, float), np.asarray(n, float))
    bad = (n < 2) | ~(sd > 1e-12)
    se = np.where(bad, 1.0, sd) / np.sqrt(np.maximum(n, 1))
    df = np.maximum(n - 1, 1)
    p = 2 * student.sf(np.abs(mean / se), df)
    p_eq = np.maximum(student.sf((mean + margin) / se, df), student.cdf((mean - margin) / se, df))
    return np.where(bad, np.nan, p), np.where(bad, np.nan, p_eq)


def interval(est, sd, n, tail: float):
    """The t interval est -/+ t(1 - tail, n - 1) sd / sqrt(n): tail = level / 2 gives the two-sided (1 - level)
    interval, tail = level TOST's (1 - 2 level) one. None without spread."""
    if n < 2 or not sd > 1e-12:
        return None
    half = float(student.ppf(1 - tail, n - 1)) * sd / math.sqrt(n)
    return (est - half, est + half)


def _num(x):
    return None if x is None or np.isnan(x) else float(x)


def seed_comparison(a, b, margin: float, alpha: float = 0.05) -> dict:
    """One comparison on its own: n, per_seed (the differences a - b), estimate (their mean), sd, p (paired
    t, two-sided, n - 1 df), p_equivalence (TOST against +-margin) and, unadjusted, the (1 - alpha) interval
    and TOST's (1 - 2 alpha) one (None where undefined). Equal to scipy's ttest_rel / ttest_1samp."""
    d = differences(a, b)
    n = len(d)
    est = float(d.mean()) if n else None
    sd = float(d.std(ddof=1)) if n >= 2 else None
    p, p_eq = t_tests(est if n else np.nan, np.nan if sd is None else sd, n, margin)
    return dict(n=n, per_seed=[float(x) for x in d], estimate=est, sd=sd, p=_num(p), p_equivalence=_num(p_eq),
                interval=interval(est, sd, n, alpha / 2) if n >= 2 else None,
                interval_equivalence=interval(est, sd, n, alpha) if n >= 2 else None)


def step_down(p, alpha: float):
    """Holm's step-down with Shaffer's restriction over pairs of hypotheses, vectorised over leading axes.

    p: array (..., K, 2), [difference, equivalence] p of K comparisons. NaN: not in the family (too few
    seeds; rejected at an earlier look). +inf: counted but not tested (a settled comparison's other one).
    Returns (rejected, adjusted, level), each shaped like p: rejected <=> adjusted <= alpha <=> p <= level;
    adjusted = the running max of min(1, t_j p_(j)); level = alpha / t_j where the step-down tested it, the
    level it stopped at past that; NaN outside the family."""
    p = np.asarray(p, dtype=float)
    K = p.shape[-2]
    flat = p.reshape(-1, 2 * K)
    reps = np.arange(flat.shape[0])
    remaining = ~np.isnan(flat)
    order = np.argsort(np.where(remaining, flat, np.inf), axis=1, kind="stable")
    adjusted, level = np.full_like(flat, np.nan), np.full_like(flat, np.nan)
    running, stop = np.zeros(len(reps)), np.full(len(reps), np.nan)
    for j in range(2 * K):
        h = order[:, j]
        live = remaining[reps, h]
        t_j = remaining.reshape(-1, K, 2).any(axis=2).sum(axis=1)
        here = alpha / np.maximum(t_j, 1)
        with np.errstate(invalid="ignore"):
            running = np.where(live, np.maximum(running, np.minimum(1.0, t_j * flat[reps, h])), running)
        ok = running <= alpha
        stop = np.where(live & ~ok & np.isnan(stop), here, stop)
        level[reps, h] = np.where(live, np.where(ok, here, stop), np.nan)
        adjusted[reps, h] = np.where(live, running, np.nan)
        remaining[reps, h] = False
    adjusted, level = adjusted.reshape(p.shape), level.reshape(p.shape)
    return ~np.isnan(adjusted) & (adjusted <= alpha), adjusted, level


def looks_plan(min_seeds: int, max_seeds: int, step: int = 1) -> tuple:
    """The seed counts at which `--until-decided` decides: from max(min_seeds, MIN_SEEDS) up by `step`, then
    max_seeds."""
    first = max(min_seeds, MIN_SEEDS)
    if max_seeds < first or step < 1:
        raise ValueError(f"a plan needs max_seeds >= {first} and step >= 1 (got {max_seeds}, {step})")
    plan = list(range(first, max_seeds + 1, step))
    return tuple(plan if plan[-1] == max_seeds else plan + [max_seeds])


def look_alphas(plan, alpha: float = 0.05, spending: str = "seeds") -> tuple:
    """The alpha each look of `plan` decides at, summing to alpha: "uniform" alpha / L, "seeds" alpha n_l / sum n
    (a weighted Bonferroni split, valid as the uniform one; more power where the seeds are)."""
    if spending not in ("uniform", "seeds"):
        raise ValueError(f"spending is 'uniform' or 'seeds', not {spending!r}")
    w = np.ones(len(plan)) if spending == "uniform" else np.asarray(plan, dtype=float)
    return tuple(float(x) for x in alpha * w / w.sum())


def _verdict(c, rejected, adjusted, level, margin, scale) -> dict:
    est, sd, n = c["estimate"], c["sd"], c["n"]
    if rejected[0]:
        verdict = "better" if est > 0 else "worse"
    else:
        verdict = "equivalent" if rejected[1] else "inconclusive"
    return dict(verdict=verdict, equivalent=bool(rejected[1]), rejected=(bool(rejected[0]), bool(rejected[1])),
                p_adjusted=min(1.0, scale * float(adjusted[0])),
                p_equivalence_adjusted=min(1.0, scale * float(adjusted[1])),
                level=float(level[0]), level_equivalence=float(level[1]),
                interval=interval(est, sd, n, level[0] / 2), interval_equivalence=interval(est, sd, n, level[1]),
                margin=margin, note=None if c["p"] is not None else "every difference equal: no t test (p = 1)")


def decide(comparisons, margin: float, alpha: float = 0.05, look_alpha: float = None, previous=None) -> list:
    """Verdicts over one family of comparisons [(a accuracies, b accuracies)] at one look (module docstring).

    alpha is the family's over the whole study; this look decides at look_alpha (look_alphas' share; None:
    alpha, a study of fixed seeds, one look). previous: this function's answer at the last look, same order;
    a comparison it settled (better, worse, equivalent) keeps that record. Per comparison, seed_comparison's
    fields (its intervals replaced) and: verdict (better | worse | equivalent | inconclusive | too few
    seeds), equivalent, rejected (difference, equivalence), p_adjusted and p_equivalence_adjusted
    (decided <=> <= alpha), level and level_equivalence (the per-hypothesis alpha the step-down used),
    interval ((1 - level) t interval of the difference) and interval_equivalence ((1 - 2 level_equivalence),
    TOST's), family (comparisons in the family), alpha, look_alpha, note. Too few seeds: no adjusted p, no level,
    no interval, the note in words."""
    if not margin > 0:
        raise ValueError("the equivalence margin must be > 0")
    if not comparisons:
        return []
    at_look = alpha if look_alpha is None else look_alpha
    out, p = [], np.full((len(comparisons), 2), np.nan)
    for i, (a, b) in enumerate(comparisons):
        prev = previous[i] if previous is not None else None
        if prev is not None and prev["verdict"] in SETTLED:
            out.append(dict(prev))
            p[i] = [np.nan if r else np.inf for r in prev["rejected"]]
            continue
        c = seed_comparison(a, b, margin, at_look)
        if c["n"] >= MIN_SEEDS:
            p[i] = [1.0 if c["p"] is None else c["p"], 1.0 if c["p_equivalence"] is None else c["p_equivalence"]]
        out.append(c)
    rejected, adjusted, level = step_down(p, at_look)
    family = int(np.any(~np.isnan(p), axis=1).sum())
    for i, c in enumerate(out):
        if previous is not None and previous[i]["verdict"] in SETTLED:
            continue
        if c["n"] < MIN_SEEDS:
            c.update(verdict=TOO_FEW, equivalent=False, rejected=(False, False), p_adjusted=None,
                     p_equivalence_adjusted=None, level=None, level_equivalence=None, interval=None,
                     interval_equivalence=None, margin=margin, note=seeds_note(c["n"]))
        else:
            c.update(_verdict(c, rejected[i], adjusted[i], level[i], margin, alpha / at_look))
        c.update(family=family, alpha=alpha, look_alpha=at_look)
    return out


def shown_interval(r: dict) -> tuple:
    """(interval, its level) that decide()'s verdict used: TOST's (1 - 2 level) one for an equivalence, the
    difference's (1 - level) one otherwise; (None, None) where there is none."""
    if r["verdict"] == "equivalent":
        return r.get("interval_equivalence"), 1 - 2 * r["level_equivalence"]
    return r.get("interval"), None if r.get("level") is None else 1 - r["level"]


def undecided(results) -> list:
    """Indices of the comparisons a next round of seeds is for: not settled (inconclusive, too few seeds)."""
    return [i for i, r in enumerate(results) if r["verdict"] not in SETTLED]
