"""Naming and replacing the Linear-like layers of a model.

Layers are found by the type of the module that holds them (attention, feed-forward), never by index
paths, and get the same readable names in every architecture:
  embed, blocks.{i}.attn.{q,k,v,qkv,out}, blocks.{i}.ffn.{in,out}, head
x-transformers' macaron blocks hold two feed-forwards, named ffn1 (before attention) and ffn2 (after).
timm's models are matched by timm's Attention and Mlp types, a user's model (and a timm model built of
other blocks) by the Linear layers its modules hold (ATTN_LAYOUTS, FFN_LAYOUTS); timm's patch embedding
is a Conv2d, not a slot. These are the names `info` prints and `reduce --layer` accepts; `slots` is the
one way any command finds them.
"""
import difflib
import sys
from dataclasses import dataclass

import torch.nn as nn

from ..errors import UserError
from ..vocab import TARGETS
from .budget import choose, dense_params
from .families import FAMILIES, family_of
from .layers import FactoredLinear, SigmaReparam, SNLinear, dense_weight, layer_kind, unwrapped
from .parametrize import make_structured, spectral_init
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
    if isinstance(model, ViTTiny):
        return _seed_slots(model, (LSA,), (FeedForward,))
    if type(model).__module__.split(".")[0] == "x_transformers":  # importing it costs seconds: only then
        xt = import_x_transformers().x_transformers
        return _seed_slots(model, (xt.Attention,), (xt.FeedForward,))
    return _found_slots(model)


def _seed_slots(model, attn_types, ffn_types) -> list:
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


# Any other model (timm's, the user's): an attention module holds one of these sets of Linear layers
# (attribute -> short name), a feed-forward one of these pairs. timm's Attention is (qkv, proj) and its
# Mlp (fc1, fc2); the others are the common spellings (vit-pytorch, Hugging Face, the seed's).
ATTN_LAYOUTS = ((("qkv", "qkv"), ("proj", "out")), (("to_qkv", "qkv"), ("to_out", "out")),
                (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out", "out")),
                (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")),
                (("q", "q"), ("k", "k"), ("v", "v"), ("proj", "out")))
FFN_LAYOUTS = ((("fc1", "in"), ("fc2", "out")), (("fc_in", "in"), ("fc_out", "out")),
               (("linear1", "in"), ("linear2", "out")), (("w1", "in"), ("w2", "out")))
SEQUENTIAL_FFNS = ("net", "mlp", "ff")  # vit-pytorch's FeedForward.net = Sequential(LayerNorm, Linear, ..., Linear)
HEAD_NAMES = ("head", "fc", "classifier", "mlp_head")


def is_linear_like(m) -> bool:
    """nn.Linear or one of the tool's replacements for it (each has in_features and out_features)."""
    return isinstance(m, nn.Module) and all(isinstance(getattr(m, k, None), int) for k in ("in_features", "out_features"))


def _where(module, key: str):
    """(parent, attribute) of the Linear-like layer `module.key` names: the layer itself, or the one
    Linear-like layer of an nn.Sequential there (vit-pytorch's to_out = Sequential(Linear, Dropout))."""
    m = getattr(module, key, None)
    if is_linear_like(m):
        return module, key
    if isinstance(m, nn.Sequential):
        inner = [str(i) for i, c in enumerate(m) if is_linear_like(c)]
        if len(inner) == 1:
            return m, inner[0]
    return None


def _layout(module, layouts):
    """[(parent, attribute, short name)] of the first layout whose every layer `module` holds, else None;
    a feed-forward may also be one nn.Sequential of exactly two Linear-like layers (SEQUENTIAL_FFNS)."""
    for layout in layouts:
        found = [_where(module, key) for key, _ in layout]
        if all(found):
            return [(*w, short) for w, (_, short) in zip(found, layout)]
    if layouts is FFN_LAYOUTS:
        for key in SEQUENTIAL_FFNS:
            seq = getattr(module, key, None)
            inner = [str(i) for i, c in enumerate(seq) if is_linear_like(c)] if isinstance(seq, nn.Sequential) else []
            if len(inner) == 2:
                return [(seq, inner[0], "in"), (seq, inner[1], "out")]
    return None


def _timm_types(model):
    """timm's Attention and Mlp classes when `model` is timm's (timm is loaded then), else None."""
    if type(model).__module__.split(".")[0] != "timm":
        return None
    layers = sys.modules["timm.layers"]
    return (layers.Attention,), (layers.Mlp,)


def _blocks(named, types) -> tuple:
    """([(name, attention module, layout)], [(name, feed-forward module, layout)]) in module order;
    with `types` (timm's Attention and Mlp classes) only modules of those types."""
    attns, ffns = [], []
    for name, m in named:
        if types is not None and not isinstance(m, types[0] + types[1]):
            continue
        if (lay := _layout(m, ATTN_LAYOUTS)) and (types is None or isinstance(m, types[0])):
            attns.append((name, m, lay))
        elif (lay := _layout(m, FFN_LAYOUTS)) and (types is None or isinstance(m, types[1])):
            ffns.append((name, m, lay))
    return attns, ffns


def _found_slots(model) -> list:
    """Slots of a model found by module type (timm's Attention and Mlp) or, for a model of the user's,
    by the layouts above; the head is the classifier outside every block."""
    named = list(model.named_modules())
    attns, ffns = _blocks(named, _timm_types(model))
    if not attns:  # a timm model built from other block types: the layouts alone
        attns, ffns = _blocks(named, None)
    if not attns or not ffns or len(ffns) % len(attns):
        raise UserError(_not_found(model, named, attns, ffns))
    per_block, out = len(ffns) // len(attns), []
    for i, (_, attn, lay) in enumerate(attns):
        out += [Slot(f"blocks.{i}.attn.{short}", parent, key, f"attn-{short}", i) for parent, key, short in lay]
        for j in range(per_block):
            _, ffn, lay = ffns[i * per_block + j]
            part = "ffn" if per_block == 1 else f"ffn{j + 1}"
            out += [Slot(f"blocks.{i}.{part}.{short}", parent, key, f"ffn-{short}", i) for parent, key, short in lay]
    inside = [n for n, _, _ in attns + ffns]
    outside = [n for n, m in named if is_linear_like(m) and not any(n.startswith(p + ".") for p in inside)]
    outside = [n for n in outside if not any(n.startswith(o + ".") for o in outside)]  # not a factor's parts
    heads = [n for n in outside if n.rpartition(".")[2] in HEAD_NAMES] or outside[-1:]
    order = {n: i for i, (n, _) in enumerate(named)}
    embeds = [n for n in outside if n not in heads and order[n] < order[attns[0][0]]][:1]  # before the blocks
    return [_slot_at(model, n, "embed") for n in embeds] + out + [_slot_at(model, n, "head") for n in heads[-1:]]


def _slot_at(model, dotted: str, role: str) -> Slot:
    parent, _, key = dotted.rpartition(".")
    return Slot(role, model.get_submodule(parent) if parent else model, key, role)


def _not_found(model, named, attns, ffns) -> str:
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    shown = ", ".join(linears[:6]) + (f" and {len(linears) - 6} more" if len(linears) > 6 else "")
    return (f"cannot find the transformer layers of {type(model).__name__}: found {len(attns)} attention "
            f"module(s) (Linear layers named qkv+proj, to_qkv+to_out, to_q/k/v+to_out, q/k/v_proj+out_proj) "
            f"and {len(ffns)} feed-forward module(s) (fc1+fc2, fc_in+fc_out, linear1+linear2, w1+w2, or a "
            f"Sequential net/mlp/ff of two Linear layers); its "
            f"Linear layers are {shown or 'none'}: name them so, or wrap them in modules that are")


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


def _family(kind: str):
    if kind not in FAMILIES:
        raise UserError(f"unknown layer kind {kind!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def make_layer(kind: str, d_in: int, d_out: int, bias: bool, keep: float = None, **setting) -> nn.Module:
    """A `kind` layer for a d_in -> d_out slot. `setting` holds the family's own flags (scale, n_dyad,
    ...; families/); with `keep`, the structure setting the budget chooses replaces them."""
    family = _family(kind)
    if keep is not None:
        chosen = choose(family, d_in, d_out, bias, keep)
        setting = {**setting, **{k: v for k, v in chosen.items() if k not in ("params", "fraction")}}
    return family.build(d_in, d_out, bias, **setting)


def apply_variant(model: nn.Module, spec) -> list:
    """Replace the layers `spec` (a ModelSpec, taken whole) targets by its structured variant; returns the
    names replaced.

    vit-tiny's attention has one fused spectral-norm qkv projection (512 -> 1152): `attn-qkv` replaces
    that fused layer by one structured layer of the same shape. A structured layer replacing an SNLinear
    keeps sigmaReparam around its own matrix (layers.SigmaReparam) unless `spec.sigma_reparam` is False, so
    structure is the only difference from the baseline.
    The family's own flags (scale, n_dyad, ...: families/) set its structure unless `spec.keep` sets each
    layer's from its budget (budget.py); `spec.param` and `spec.init` choose how the factors start and
    learn (parametrize.py). Each new layer remembers the dense layer's parameter count
    (`replaced_dense_params`) so a run can record the fraction it reached.
    """
    family = _family(spec.variant)
    setting = {k: getattr(spec, k) for k in family.flags}
    chosen = _targeted(model, spec.targets, spec.blocks)
    for s in chosen:
        old = s.module
        try:
            new = make_layer(spec.variant, old.in_features, old.out_features, old.bias is not None, spec.keep,
                             **setting)
            if spec.param == "structured":
                make_structured(new, init=spec.init != "spectral")
            if spec.init == "spectral":
                spectral_init(new, dense_weight(old), old.bias)
        except UserError as e:
            raise UserError(f"{s.name}: {e}") from None  # name the layer, not only its shape
        if spec.sigma_reparam and isinstance(old, SNLinear):
            new = SigmaReparam(new)
        new.replaced_dense_params = dense_params(old.in_features, old.out_features, old.bias is not None)
        s.set(new)
    return [s.name for s in chosen]


def _targeted(model: nn.Module, targets, blocks) -> list:
    """The slots a variant's `--target` groups and `--blocks` select."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    roles = set()
    for t in targets:
        if t not in TARGETS:
            raise UserError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
        roles |= TARGETS[t]
    chosen = [s for s in slots(model) if s.role in roles and (blocks is None or s.block in blocks)]
    if not chosen:
        raise UserError(f"targets {targets} in blocks {blocks} match no layer; check --blocks against the depth")
    return chosen


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
    """The structure setting a layer was built with (its family's `setting()`); {} for any other layer."""
    module = unwrapped(module)
    return module.setting() if family_of(module) is not None else {}


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
