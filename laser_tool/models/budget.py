"""Parameter counts of every layer kind, and the one budget knob `--keep F`: each variant's structure
setting from the fraction of a dense layer it keeps.

The fraction is of the dense layer's own parameters, d_in*d_out (+ d_out with a bias), against the
structured layer's actual parameter count (every weight and bias it holds). Each variant has its own
granularity: low-rank, SKL and BTT step by one rank, DYAD by the divisors of both widths, Monarch by its
block count. The setting whose fraction is nearest the request wins (never one above 1: a "slimmer"
layer larger than the dense one is not offered). A request more than KEEP_SLACK (relative) below the
smallest or above the largest fraction a variant can make on a layer is refused, naming the layer and
the nearest fraction it can reach, instead of being moved silently.

Every parameter-count formula of the project lives here: the layers, the budget, post-hoc truncation,
progressive cuts and the study all count with these.
"""
import math

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


def lowrank_rank(d_in: int, d_out: int, r: float) -> int:
    """The seed's RankReductionLayer rank: keeps about a fraction r of d_in*d_out parameters."""
    return int(r * d_in * d_out / (d_in + d_out))


def lowrank_params(d_in, d_out, rank):
    return rank * (d_in + d_out) + rank + d_out       # the seed's layer: two nn.Linear with bias


def round_up_sqrt(n: int) -> int:
    """Smallest integer s with s*s >= n."""
    s = math.isqrt(n)
    return s if s * s == n else s + 1


def skl_rank(n: int, m: int, scale: float) -> int:
    k = round_up_sqrt(n) * round_up_sqrt(m)
    return int(scale * (n * m) / 2.0 / k + 0.5)


def skl_params(d_in, d_out, rank):
    return 2 * rank * round_up_sqrt(d_in) * round_up_sqrt(d_out)   # no bias (the seed's layer has none)


def dyad_params(d_in, d_out, n_dyad, bias):
    return 2 * d_in * d_out // n_dyad + (d_out if bias else 0)


def monarch_shape(d_in: int, d_out: int, blocks: int):
    """(in_block, mid_block, out_block): blocks of ceil(d/blocks); the middle is the smaller of the two."""
    ib, ob = math.ceil(d_in / blocks), math.ceil(d_out / blocks)
    return ib, min(ib, ob), ob


def monarch_params(d_in: int, d_out: int, blocks: int, bias: bool) -> int:
    ib, mid, ob = monarch_shape(d_in, d_out, blocks)
    return blocks * mid * (ib + ob) + (d_out if bias else 0)


def even_split(n: int):
    """(a, b) with a*b == n and a <= b as close as possible (a = 1 for a prime n). Not the authors' rule
    (prime_split is); kept for comparison in tests and docs/structured.md."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def prime_factors(n: int) -> list:
    """The prime factors of n with multiplicity, ascending (12 -> [2, 2, 3])."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def prime_split(n: int):
    """(a, b) with a*b == n, a <= b, by Qiu et al.'s rule (compute-better-spent, nn/cola_nn.py, `factorize(x,
    2)`): the prime factors, smallest first, each multiplied into the currently smaller of two numbers (the
    first on a tie), then sorted. Greedy, so not always the most even pair: 1152 -> (24, 48), not (32, 36)."""
    nums = [1, 1]
    for p in prime_factors(n):
        nums[nums.index(min(nums))] *= p
    return tuple(sorted(nums))


def btt_shape(d_in: int, d_out: int):
    """(m0, m1, n0, n1): d_in = m0*m1 (m0 the fast index), d_out = n0*n1 (n1 the fast index), each split as
    Qiu et al.'s build_btt does (ms = factorize(d_in, 2), ns = factorize(d_out, 2), ascending)."""
    m0, m1 = prime_split(d_in)
    n0, n1 = prime_split(d_out)
    return m0, m1, n0, n1


def btt_params(d_in: int, d_out: int, rank: int, bias: bool) -> int:
    m0, m1, n0, n1 = btt_shape(d_in, d_out)
    return rank * (d_in * n0 + d_out * m1) + (d_out if bias else 0)


def settings(kind: str, d_in: int, d_out: int, bias: bool) -> list:
    """[(setting, params)] for every setting of `kind` on a d_in -> d_out layer, in increasing size order
    roughly; settings whose layer would hold more parameters than the dense one are left out."""
    limit = dense_params(d_in, d_out, bias)
    if kind == "lowrank":
        cands = [({"rank": r}, lowrank_params(d_in, d_out, r)) for r in range(1, min(d_in, d_out) + 1)]
    elif kind == "skl":
        k = round_up_sqrt(d_in) * round_up_sqrt(d_out)
        cands = [({"rank": r}, skl_params(d_in, d_out, r)) for r in range(1, limit // (2 * k) + 2)]
    elif kind == "dyad":
        g = math.gcd(d_in, d_out)
        cands = [({"n_dyad": n}, dyad_params(d_in, d_out, n, bias)) for n in range(g, 0, -1) if g % n == 0]
    elif kind == "monarch":
        cands = [({"blocks": b}, monarch_params(d_in, d_out, b, bias)) for b in range(min(d_in, d_out), 0, -1)]
    elif kind == "btt":
        m0, m1, n0, n1 = btt_shape(d_in, d_out)
        cands = [({"rank": r}, btt_params(d_in, d_out, r, bias)) for r in range(1, min(m0, n1) + 1)]
    else:
        raise UserError(f"--keep does not apply to {kind!r}")
    return [(s, p) for s, p in cands if p <= limit]


def choose(kind: str, d_in: int, d_out: int, bias: bool, keep: float) -> dict:
    """The setting of `kind` nearest to `keep` on this layer: {setting..., "params", "fraction"}."""
    if not 0 < keep <= 1:
        raise UserError(f"--keep {keep:g} is outside (0, 1]; give the fraction of each dense layer to keep, "
                        f"e.g. --keep 0.5")
    dense = dense_params(d_in, d_out, bias)
    cands = settings(kind, d_in, d_out, bias)
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
