"""Naming and replacing the Linear-like layers of a model.

Layers are found by the type of the module that holds them (attention, feed-forward), never by index
paths, and get the same readable names in both architectures:
  embed, blocks.{i}.attn.{q,k,v,qkv,out}, blocks.{i}.ffn.{in,out}, head
x-transformers' macaron blocks hold two feed-forwards, named ffn1 (before attention) and ffn2 (after).
These are the names `info` prints and `reduce --layer` accepts.
"""
import difflib
from dataclasses import dataclass

import torch.nn as nn

from ..errors import UserError
from ..vocab import STRUCTURED, TARGETS
from .budget import choose, dense_params
from .layers import (DyadLinear, FactoredLinear, LowRankLinear, SigmaReparam, SKLinear, SNLinear, dense_weight,
                     layer_kind, unwrapped)
from .parametrize import make_structured, spectral_init
from .structured import BTTLinear, MonarchLinear
from .vit_tiny import LSA, FeedForward, ViTTiny
from .xt_vit import import_x_transformers


@dataclass
class Slot:
    """Where a Linear-like layer lives: parent module and attribute name."""
    name: str
    parent: nn.Module
    key: str
    role: str            # embed | head | attn-q | attn-k | attn-v | attn-qkv | attn-out | ffn-in | ffn-out
    block: int = -1      # -1 for embed and head

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.key)

    def set(self, module: nn.Module) -> None:
        setattr(self.parent, self.key, module)


def _attn_slots(attn, prefix, block):
    if isinstance(attn, LSA):
        pairs = (("qkv", "to_qkv"), ("out", "to_out"))
    else:
        pairs = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("out", "to_out"))
    return [Slot(f"{prefix}.{short}", attn, key, f"attn-{short}", block) for short, key in pairs]


def _ffn_slots(ffn, prefix, block):
    if isinstance(ffn, FeedForward):
        return [Slot(f"{prefix}.in", ffn, "fc_in", "ffn-in", block),
                Slot(f"{prefix}.out", ffn, "fc_out", "ffn-out", block)]
    # x-transformers FeedForward: ff = Sequential(Sequential(Linear, act), Dropout, Linear)
    return [Slot(f"{prefix}.in", ffn.ff[0], "0", "ffn-in", block),
            Slot(f"{prefix}.out", ffn.ff, "2", "ffn-out", block)]


def slots(model: nn.Module) -> list:
    """Every Linear-like layer of a model as a Slot, in a stable order."""
    if isinstance(model, ViTTiny):  # importing x-transformers costs seconds: only when needed
        attn_types, ffn_types = (LSA,), (FeedForward,)
    else:
        xt = import_x_transformers().x_transformers
        attn_types, ffn_types = (LSA, xt.Attention), (FeedForward, xt.FeedForward)
    attns = [m for m in model.modules() if isinstance(m, attn_types)]
    ffns = [m for m in model.modules() if isinstance(m, ffn_types)]
    if not attns or len(ffns) % len(attns):
        raise TypeError(f"{type(model).__name__} does not look like a supported transformer")
    per_block = len(ffns) // len(attns)
    if isinstance(model, ViTTiny):
        out = [Slot("embed", model.embed, "proj", "embed")]
        head = Slot("head", model, "head", "head")
    else:
        out = [Slot("embed", model.patch_to_embedding, "1", "embed")]
        head = Slot("head", model, "mlp_head", "head")
    for i, attn in enumerate(attns):
        out += _attn_slots(attn, f"blocks.{i}.attn", i)
        for j in range(per_block):
            name = "ffn" if per_block == 1 else f"ffn{j + 1}"
            out += _ffn_slots(ffns[i * per_block + j], f"blocks.{i}.{name}", i)
    return out + [head]


def named_linears(model: nn.Module) -> list:
    """[{name, in_features, out_features, kind, params, role, block}] for every Linear-like layer."""
    rows = []
    for s in slots(model):
        m = s.module
        rows.append(dict(name=s.name, in_features=m.in_features, out_features=m.out_features,
                         kind=layer_kind(m), params=sum(p.numel() for p in m.parameters()),
                         role=s.role, block=s.block))
    return rows


def find_slot(model: nn.Module, name: str) -> Slot:
    all_slots = slots(model)
    for s in all_slots:
        if s.name == name:
            return s
    close = difflib.get_close_matches(name, [s.name for s in all_slots], n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `laser-tool info` to list layer names"
    raise UserError(f"no layer named {name!r}; {hint}")


def make_layer(kind: str, d_in: int, d_out: int, bias: bool, scale: float, n_dyad: int = 8,
               dyad_variant: str = "it", keep: float = None, monarch_blocks: int = 4,
               btt_rank: int = 1) -> nn.Module:
    """A `kind` layer for a d_in -> d_out slot; with `keep`, its structure setting comes from the budget."""
    if kind not in STRUCTURED:
        raise UserError(f"unknown layer kind {kind!r}; choose one of {', '.join(STRUCTURED)}")
    setting = {}
    if keep is not None:
        setting = choose(kind, d_in, d_out, bias, keep)
    if kind == "lowrank":
        return LowRankLinear(d_in, d_out, r=scale, rank=setting.get("rank"))
    if kind == "skl":
        return SKLinear(d_in, d_out, scale=scale, rank=setting.get("rank"))
    if kind == "dyad":
        return DyadLinear(d_in, d_out, n_dyad=setting.get("n_dyad", n_dyad), bias=bias, variant=dyad_variant)
    if kind == "monarch":
        return MonarchLinear(d_in, d_out, blocks=setting.get("blocks", monarch_blocks), bias=bias)
    return BTTLinear(d_in, d_out, rank=setting.get("rank", btt_rank), bias=bias)


def apply_variant(model: nn.Module, kind: str, targets, scale: float = 0.5, blocks=None,
                  n_dyad: int = 8, dyad_variant: str = "it", keep: float = None, param: str = "standard",
                  init: str = "default", monarch_blocks: int = 4, btt_rank: int = 1,
                  sigma_reparam: bool = True) -> list:
    """Replace the targeted Linear layers by `kind`; returns the names replaced.

    vit-tiny's attention has one fused spectral-norm qkv projection (512 -> 1152): `attn-qkv` replaces
    that fused layer by one structured layer of the same shape. A structured layer replacing an SNLinear
    keeps sigmaReparam around its own matrix (layers.SigmaReparam) unless `sigma_reparam` is False, so
    structure is the only difference from the baseline.
    `keep` sets each layer's structure from its budget (budget.py); `param` and `init` choose how the
    factors start and learn (parametrize.py). Each new layer remembers the dense layer's parameter count
    (`replaced_dense_params`) so a run can record the fraction it reached.
    """
    if kind not in STRUCTURED:
        raise UserError(f"unknown variant kind {kind!r}; choose one of {', '.join(STRUCTURED)}")
    targets = [targets] if isinstance(targets, str) else list(targets)
    roles = set()
    for t in targets:
        if t not in TARGETS:
            raise UserError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
        roles |= TARGETS[t]
    chosen = [s for s in slots(model) if s.role in roles and (blocks is None or s.block in blocks)]
    if not chosen:
        raise UserError(f"targets {targets} in blocks {blocks} match no layer; check --blocks against the depth")
    for s in chosen:
        old = s.module
        try:
            new = make_layer(kind, old.in_features, old.out_features, old.bias is not None, scale,
                             n_dyad, dyad_variant, keep, monarch_blocks, btt_rank)
            if param == "structured":
                make_structured(new, init=init != "spectral")
            if init == "spectral":
                spectral_init(new, dense_weight(old), old.bias)
        except UserError as e:
            raise UserError(f"{s.name}: {e}") from None  # name the layer, not only its shape
        if sigma_reparam and isinstance(old, SNLinear):
            new = SigmaReparam(new)
        new.replaced_dense_params = dense_params(old.in_features, old.out_features, old.bias is not None)
        s.set(new)
    return [s.name for s in chosen]


def apply_layer_overrides(model: nn.Module, layers: dict) -> None:
    """Rebuild post-hoc replacements recorded in a ModelSpec (shapes only; weights come from the checkpoint)."""
    for name, o in layers.items():
        s = find_slot(model, name)
        d_in, d_out = s.module.in_features, s.module.out_features
        if o["kind"] == "factored":
            s.set(FactoredLinear.empty(d_in, d_out, int(o["rank"]), bool(o["bias"])))
        elif o["kind"] == "linear":
            s.set(nn.Linear(d_in, d_out, bias=bool(o["bias"])))
        else:
            raise UserError(f"checkpoint names an unknown layer override {o['kind']!r} for {name}")


# ---------------------------------------------------------------------------------------------
# what a run reached


def layer_setting(module: nn.Module) -> dict:
    """The structure parameter a layer was built with, by kind."""
    module = unwrapped(module)
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
    layers = {}
    for s in slots(model):
        m = s.module
        dense = getattr(m, "replaced_dense_params", None)
        if dense is None:
            continue  # not replaced by the train-time variant
        params = sum(p.numel() for p in m.parameters())
        layers[s.name] = {"kind": layer_kind(m), **layer_setting(m), "sigma_reparam": isinstance(m, SigmaReparam),
                          "params": params, "dense_params": dense,
                          "fraction": round(params / dense, 6),
                          "lr_multipliers": {k: round(v, 6) for k, v in getattr(unwrapped(m), "lr_mult", {}).items()}}
    total, dense = sum(v["params"] for v in layers.values()), sum(v["dense_params"] for v in layers.values())
    return {"keep": spec.keep, "param": spec.param, "init": spec.init,
            "fraction": round(total / dense, 6) if dense else None, "layers": layers}
