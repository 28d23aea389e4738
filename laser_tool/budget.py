"""One budget knob, `--keep F`: each variant's structure setting from the fraction of a dense layer it keeps.

The fraction is of the dense layer's own parameters, d_in*d_out (+ d_out with a bias), against the
structured layer's actual parameter count (every weight and bias it holds). Each variant has its own
granularity: low-rank, SKL and BTT step by one rank, DYAD by the divisors of both widths, Monarch by its
block count. The setting whose fraction is nearest the request wins (never one above 1: a "slimmer"
layer larger than the dense one is not offered). A request more than KEEP_SLACK (relative) below the
smallest or above the largest fraction a variant can make on a layer is refused, naming the layer and
the nearest fraction it can reach, instead of being moved silently.
"""
import math

import torch.nn as nn

from .errors import UserError
from .layers import DyadLinear, LowRankLinear, SKLinear, round_up_sqrt
from .structured import BTTLinear, MonarchLinear, btt_params, btt_shape, monarch_params

KEEP_SLACK = 0.1


def dense_params(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def lowrank_params(d_in, d_out, rank):
    return rank * (d_in + d_out) + rank + d_out       # the seed's layer: two nn.Linear with bias


def skl_params(d_in, d_out, rank):
    return 2 * rank * round_up_sqrt(d_in) * round_up_sqrt(d_out)   # no bias (the seed's layer has none)


def dyad_params(d_in, d_out, n_dyad, bias):
    return 2 * d_in * d_out // n_dyad + (d_out if bias else 0)


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


# ---------------------------------------------------------------------------------------------
# what a run reached


def layer_setting(module: nn.Module) -> dict:
    """The structure parameter a layer was built with, by kind."""
    if isinstance(module, (LowRankLinear, SKLinear, BTTLinear)):
        return {"rank": module.rank}
    if isinstance(module, DyadLinear):
        return {"n_dyad": module.n_dyad}
    if isinstance(module, MonarchLinear):
        return {"blocks": module.blocks}
    return {}


def structure_record(model: nn.Module, spec) -> dict:
    """What config.json records under "structure": the request (keep, param, init) and, per replaced
    layer, the setting, its parameters, the dense layer's, the fraction reached and the lr multipliers."""
    from .layers import layer_kind
    from .surgery import slots
    layers = {}
    for s in slots(model):
        m = s.module
        dense = getattr(m, "replaced_dense_params", None)
        if dense is None:
            continue  # not replaced by the train-time variant
        params = sum(p.numel() for p in m.parameters())
        layers[s.name] = {"kind": layer_kind(m), **layer_setting(m), "params": params, "dense_params": dense,
                          "fraction": round(params / dense, 6),
                          "lr_multipliers": {k: round(v, 6) for k, v in getattr(m, "lr_mult", {}).items()}}
    total, dense = sum(v["params"] for v in layers.values()), sum(v["dense_params"] for v in layers.values())
    return {"keep": spec.keep, "param": spec.param, "init": spec.init,
            "fraction": round(total / dense, 6) if dense else None, "layers": layers}
