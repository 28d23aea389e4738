"""Rank SPECs: how many singular values a truncation keeps, and which layers with which rank.

    64          an integer rank
    rho:F       int(min(m, n) * F): LASER's fraction of the maximum rank
    params:F    int(F*m*n/(m+n)): the seed's low-rank rank, keeping fraction F of the parameters
    energy:F    the smallest rank keeping fraction F of the squared singular values of W
"""
import re
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..models.budget import fraction_rank
from ..models.selectors import match_selector, split_selector
from ..models.surgery import slots

SPEC_KINDS = ("rho", "params", "energy")
SPEC_HELP = ("an integer rank; rho:F = int(min(m,n)*F), LASER's kept fraction; params:F = "
             "int(F*m*n/(m+n)), the seed's low-rank rank keeping fraction F of the parameters; "
             "energy:F = the smallest rank keeping fraction F of the squared singular values")


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
        r = fraction_rank(d_in, d_out, spec.value)      # the seed's RankReductionLayer rank
    else:
        r = energy_rank(s, spec.value)
    where = f"{spec} for {layer} ({d_out}x{d_in})"
    if r < 1:
        raise UserError(f"rank {r} from {where} is below 1; ask for a larger fraction or an integer rank")
    if r > full:
        raise UserError(f"rank {r} from {where} is above the maximum {full}; ask for at most {full}")
    return r


def candidate_rank(spec, d_out: int, d_in: int, s: torch.Tensor = None, layer: str = "layer"):
    """A grid's rank for one layer (spectrum's and search's candidates): None where a fraction leaves
    this layer under one singular value (e.g. rho:0.05 of a 10-wide head: no candidate there); a rank
    above the full rank is refused as reduce refuses it, one rule for one input."""
    try:
        return resolve_rank(spec, d_out, d_in, s, layer)
    except UserError:
        if parse_spec(spec).kind == "int" and int(parse_spec(spec).value) > min(d_out, d_in):
            raise
        return None


def energy_rank(s: torch.Tensor, f: float) -> int:
    """Smallest r with sum(s[:r]^2) >= f * sum(s^2)."""
    e = s.double() ** 2
    cum = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
    # The 1e-12 slack keeps energy:1.0 from asking for more than every value because of rounding.
    return min(int(torch.searchsorted(cum, torch.tensor(f - 1e-12, dtype=cum.dtype))) + 1, len(s))


def select(model, selectors, rank=None) -> dict:
    """{slot name: (Slot, RankSpec)} for the given selectors (models/selectors.py), in model order;
    a selector's own =SPEC wins over `rank`, and later selectors over earlier ones."""
    if isinstance(selectors, str):
        selectors = [selectors]
    if not selectors:
        raise UserError("no layer selected; pass --layer (a name, a glob like '*.ffn.in', or 3:fc_in)")
    default = parse_spec(rank) if rank is not None else None
    all_slots = slots(model)
    chosen = {}
    for text in selectors:
        pattern, spec = split_selector(text)
        spec = parse_spec(spec) if spec is not None else default
        if spec is None:
            raise UserError(f"no rank for {pattern!r}; pass --rank SPEC or write {pattern}=SPEC")
        for s in match_selector(all_slots, pattern):
            chosen[s.name] = (s, spec)
    order = {s.name: i for i, s in enumerate(all_slots)}
    return dict(sorted(chosen.items(), key=lambda kv: order[kv[0]]))
