"""The shared parameter counts (dense and factored layers), and the one budget knob `--keep F`: each
family's structure setting from the fraction of a dense layer it keeps.

The fraction is of the dense layer's own parameters, d_in*d_out (+ d_out with a bias), against the
structured layer's actual parameter count (every weight and bias it holds). Each family has its own
granularity (its `settings`, families/): a rank, a block count, the divisors of both widths. The setting
whose fraction is nearest the request wins (never one above 1: a "slimmer" layer larger than the dense
one is not offered). A request more than KEEP_SLACK (relative) below the
smallest or above the largest fraction a variant can make on a layer is refused, naming the layer and
the nearest fraction it can reach, instead of being moved silently.

A structured family's own parameter-count formula lives in its module (families/); the dense and factored
counts here are what the budget, post-hoc truncation, progressive cuts and the study count with.
"""
from ..errors import UserError

KEEP_SLACK = 0.1


def dense_params(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def factored_params(d_out: int, d_in: int, r: int, bias: bool) -> int:
    """A rank-r factored layer U @ V (+ bias): what post-hoc truncation and progressive cuts make."""
    return r * (d_out + d_in) + (d_out if bias else 0)


def break_even_rank(d_out: int, d_in: int) -> float:
    """A factored layer of rank r holds fewer weights than the dense matrix only when r < m*n/(m+n)."""
    return d_out * d_in / (d_out + d_in)


def fraction_rank(d_in: int, d_out: int, r: float) -> int:
    """The rank that keeps about a fraction r of d_in*d_out parameters (the seed's RankReductionLayer rank,
    and a post-hoc rank spec's `r=`)."""
    return int(r * d_in * d_out / (d_in + d_out))


def candidates(family, d_in: int, d_out: int, bias: bool) -> list:
    """[(setting, params)] for every setting of a layer family (families/) on a d_in -> d_out layer, in
    increasing size order roughly; settings whose layer would hold more parameters than the dense one are
    left out."""
    limit = dense_params(d_in, d_out, bias)
    return [(s, p) for s, p in family.settings(d_in, d_out, bias) if p <= limit]


def choose(family, d_in: int, d_out: int, bias: bool, keep: float) -> dict:
    """The setting of a layer family nearest to `keep` on this layer: {setting..., "params", "fraction"}."""
    if not 0 < keep <= 1:
        raise UserError(f"--keep {keep:g} is outside (0, 1]; give the fraction of each dense layer to keep, "
                        f"e.g. --keep 0.5")
    kind, dense = family.kind, dense_params(d_in, d_out, bias)
    cands = candidates(family, d_in, d_out, bias)
    if not cands:
        raise UserError(f"{kind} cannot make a {d_in}->{d_out} layer smaller than the dense one; "
                        f"use another variant for it")
    fracs = [p / dense for _, p in cands]
    lo, hi = min(fracs), max(fracs)
    if keep < lo * (1 - KEEP_SLACK) or keep > hi * (1 + KEEP_SLACK):
        near = lo if keep < lo else hi
        raise UserError(f"{kind} cannot reach --keep {keep:g} on a {d_in}->{d_out} layer; the nearest "
                        f"reachable fraction is {near:.4g}")
    i = min(range(len(cands)), key=lambda j: (abs(fracs[j] - keep), cands[j][1]))
    setting, params = cands[i]
    return {**setting, "params": params, "fraction": params / dense}
