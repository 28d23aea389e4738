"""Simulated studies for checking seeds.py's procedure: sizes and power (tests/test_seed_stats.py,
bench/seed_power.py). Pure numpy, vectorised over replicates.

The model of one paired difference (row a minus row b, one seed, the full test set):
    d_i = delta + u_i + e_i,   u_i ~ N(0, tau^2)  (the seed-level random effect of the difference),
and e_i the test-set noise of two trained models scored on the same N images. Per image the difference of
correctness is +1, -1 or 0; the two disagree on a share `discordant` of the images, so over N images
var(e_i) = (discordant - mu^2) / N ~ discordant / N: 0.08 / 10,000 gives sd 0.28 pp. It is drawn exactly,
as counts: images only a gets right ~ Binomial(N, (discordant + mu)/2), then only b among the rest, with
mu = delta + u_i, so d_i is a multiple of 1/N as a real accuracy difference is.
"""
import math

import numpy as np

from .seeds import step_down, t_tests

DISCORDANT = 0.08
IMAGES = 10_000
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = 1, -1, 2, 0


def image_noise_sd(discordant: float = DISCORDANT, images: int = IMAGES) -> float:
    """sd of a paired accuracy difference on `images` test images that the two models disagree on in a
    share `discordant` (sqrt(discordant / images), the difference itself small)."""
    return math.sqrt(discordant / images)


def simulate(rng, reps: int, deltas, seeds: int, tau: float, discordant: float = DISCORDANT, images: int = IMAGES):
    """Per-seed differences, shape (reps, K, seeds), for K comparisons of true differences `deltas`."""
    deltas = np.asarray(deltas, dtype=float)
    mu = deltas[None, :, None] + tau * rng.standard_normal((reps, len(deltas), seeds))
    p_plus = np.clip((discordant + mu) / 2, 0, 1)
    p_minus = np.clip((discordant - mu) / 2 / (1 - p_plus), 0, 1)
    plus = rng.binomial(images, p_plus)
    minus = rng.binomial(images - plus, p_minus)
    return (plus - minus) / images


def run(d, margin: float, plan, alphas):
    """Decide simulated studies look by look as decide() does (the same t_tests and step_down), comparisons
    sharing no row: at look l (plan[l] seeds, level alphas[l]) an unsettled comparison has its first n
    seeds; a settled one keeps its record and its other hypothesis stays counted, untested. One look:
    plan (n,), alphas (alpha,). Returns (verdict (reps, K): BETTER, WORSE, EQUIVALENT or INCONCLUSIVE;
    rejected (reps, K, 2); seeds used (reps, K))."""
    reps, K, _ = d.shape
    verdict = np.zeros((reps, K), dtype=int)
    rejected = np.zeros((reps, K, 2), dtype=bool)
    used = np.zeros((reps, K), dtype=int)
    for n, at_look in zip(plan, alphas, strict=True):
        live = verdict == INCONCLUSIVE
        used = np.where(live, n, used)
        mean, sd = d[..., :n].mean(axis=-1), d[..., :n].std(axis=-1, ddof=1)
        p = np.nan_to_num(np.stack(t_tests(mean, sd, n, margin), axis=-1), nan=1.0)
        p = np.where(live[..., None], p, np.where(rejected, np.nan, np.inf))
        new = step_down(p, at_look)[0] & live[..., None]
        verdict = np.where(new[..., 0], np.sign(mean).astype(int), np.where(new[..., 1], EQUIVALENT, verdict))
        rejected |= new
    return verdict, rejected, used


def rate(events) -> dict:
    """{rate, se, reps} of a boolean array over replicates (the Monte Carlo standard error beside it)."""
    events = np.asarray(events, dtype=bool)
    r = float(events.mean())
    return dict(rate=r, se=math.sqrt(max(r * (1 - r), 1e-12) / len(events)), reps=len(events))


def family_errors(deltas, rejected, margin: float) -> np.ndarray:
    """Per replicate: did the family reject any true null? (a difference where delta = 0, an equivalence
    where |delta| >= margin)."""
    deltas = np.asarray(deltas, dtype=float)
    false_diff = rejected[..., 0] & (deltas == 0)[None, :]
    false_eq = rejected[..., 1] & (np.abs(deltas) >= margin - 1e-12)[None, :]
    return (false_diff | false_eq).any(axis=1)
