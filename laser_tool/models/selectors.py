"""Layer selectors: which of a model's Linear-like layers a `--layer` / `--layers` / `--reduce-layer`
names. One grammar everywhere, matched against the names `laser-tool info` prints:

  blocks.3.ffn.in        one layer by name
  *.ffn.in, blocks.*     shell-style globs
  3:fc_in, *:mlp         LASER's (block, type): a block number or *, a type of vocab.LAYER_TYPES
  SELECTOR=SPEC          any selector may carry its own rank SPEC (posthoc/ranks.py reads it)

A selector matches anything with a `name`, a `role` and a `block`: a model's Slots (surgery.py), or
bare layer names read back from a run's records (`named_layer`).
"""
import difflib
import fnmatch
import re
from dataclasses import dataclass

from ..errors import UserError
from ..vocab import LAYER_TYPES


@dataclass(frozen=True)
class NamedLayer:
    name: str
    role: str
    block: int = -1


def named_layer(name: str) -> NamedLayer:
    """A layer known by its name only: blocks.{i}.attn.{q,k,v,qkv,out}, blocks.{i}.ffn[N].{in,out}, embed, head."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn|ffn\d*)\.(\w+)", name)
    if not m:
        return NamedLayer(name, name if name in ("embed", "head") else "other")
    part = "attn" if m[2] == "attn" else "ffn"
    return NamedLayer(name, f"{part}-{m[3]}", int(m[1]))


def split_selector(text: str):
    """'blocks.3.ffn.in=rho:0.1' -> ('blocks.3.ffn.in', 'rho:0.1'); no '=' -> (text, None)."""
    pattern, eq, spec = text.partition("=")
    if not pattern.strip():
        raise UserError(f"selector {text!r} names no layer; e.g. blocks.0.ffn.in, '*.ffn.in' or 3:fc_in")
    return pattern.strip(), (spec if eq else None)


def match_selector(layers, pattern: str) -> list:
    """The layers one selector pattern names, in their order; UserError (with hints) if none."""
    if ":" in pattern:
        block, _, typ = pattern.partition(":")
        if typ not in LAYER_TYPES:
            raise UserError(f"unknown layer type {typ!r} in {pattern!r}; choose one of {', '.join(LAYER_TYPES)}")
        depth = 1 + max(s.block for s in layers)
        if block != "*" and not (block.isdigit() and int(block) < depth):
            raise UserError(f"block {block!r} in {pattern!r} is not a block number 0..{depth - 1} or *")
        got = [s for s in layers if s.role in LAYER_TYPES[typ] and (block == "*" or s.block == int(block))]
        if not got:
            fused = " (this model fuses q, k, v into one layer: use type qkv)" if typ in ("q", "k", "v") else ""
            raise UserError(f"{pattern!r} matches no layer{fused}; run `laser-tool info` to list layers")
        return got
    got = [s for s in layers if fnmatch.fnmatchcase(s.name, pattern)]
    if not got:
        close = difflib.get_close_matches(pattern, [s.name for s in layers], n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `laser-tool info` to list layer names"
        raise UserError(f"no layer matches {pattern!r}; {hint}")
    return got


def match_all(layers, patterns) -> list:
    """The layers any of `patterns` names (each must name one), in the layers' own order."""
    chosen = set()
    for pattern in patterns:
        chosen |= {s.name for s in match_selector(layers, pattern)}
    return [s for s in layers if s.name in chosen]
