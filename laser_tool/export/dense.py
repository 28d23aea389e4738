"""Dense export: a reduced or structured model multiplied out into the architecture it came from.

Every Linear-like layer that is not the original one (a train-time structured family's layer,
a post-hoc FactoredLinear, a structured layer a reduction stored dense) is replaced by its
`dense_weight()` and bias, so the state dict loads with strict=True into the model the ORIGINAL spec
builds: the same arch and sizes with no train-time variant and no post-hoc overrides (LASER's same-size
use). That is the seed's ViT-tiny class, x-transformers' own ViTransformerWrapper, or any other arch
`build_model` knows: layers are found by `slots()`, never by arch.

vit-tiny's attention projections are sigmaReparam SNLinear layers, whose used weight is W / sigma_hat * sigma.
A layer that replaced one is written back through `SNLinear.load_dense_weight(W)`: the stored weight is W,
u its first right singular vector and sigma its spectral norm, so that sigma_hat (one power step from u,
in eval mode) is sigma and the layer computes x @ W.T exactly, up to float rounding.

A bias the original layer has no place for (a low-rank layer's: `up(down(x))` has one, where vit-tiny's
qkv and x-transformers' q, k, v, out projections are bias-free) cannot be carried by the original class:
the export is refused, naming the layers, unless `keep_bias` (`--keep-bias`) asks to store those layers
as nn.Linear with a bias, recorded in the spec's `layers` ({"kind": "linear", "bias": true}), so that
`laser_tool.load_run(FILE)` / `build_model(spec)` rebuilds it (the bare original class then does not).
"""
from dataclasses import fields, replace

import torch
import torch.nn as nn

from ..errors import UserError
from ..models import ModelSpec, build_model
from ..models.layers import dense_weight, layer_kind
from ..models.surgery import slots
from ..models.families import FAMILIES, flag_fields

# The settings that describe a train-time structured variant, besides each family's own flags
# (families/); the original spec has their defaults.
STRUCTURE_FIELDS = ("variant", "targets", "blocks", "keep", "param", "init", "layers")


def original_spec(spec: ModelSpec) -> ModelSpec:
    """The spec of the model before any structure: the same arch and sizes, no structured variant, no
    post-hoc layer overrides. A half-ffn run keeps its variant: its narrower FFN is dense already."""
    if spec.variant is not None and spec.variant not in FAMILIES:
        return replace(spec, layers={})
    structure = {*STRUCTURE_FIELDS, *flag_fields()}
    defaults = {f.name: (f.default_factory() if callable(f.default_factory) else f.default)
                for f in fields(ModelSpec) if f.name in structure}
    return replace(spec, **defaults)


def module_names(model: nn.Module) -> dict:
    """{id(module): qualified name} for every module of a model."""
    return {id(m): name for name, m in model.named_modules()}


@torch.no_grad()
def write_dense(module: nn.Module, target: nn.Module) -> None:
    """Make the original layer `target` compute what `module` computes (see the module docstring)."""
    W, bias = dense_weight(module).detach().to(target.weight.dtype), module.bias
    if hasattr(target, "load_dense_weight"):   # SNLinear: keep its parameterisation, set its effective weight
        target.load_dense_weight(W)
    else:
        target.weight.copy_(W)
    if target.bias is not None:
        target.bias.copy_(bias.detach() if bias is not None else torch.zeros_like(target.bias))


def dense_model(model: nn.Module, spec: ModelSpec, keep_bias: bool = False):
    """(original model, original spec, [{name, kind}] of the layers multiplied out): `model` (built from `spec`, weights loaded) multiplied out into
    the architecture of `original_spec(spec)`, in eval mode. Layers of the original type are copied as
    they are (an SNLinear keeps its u and sigma)."""
    orig_spec = original_spec(spec)
    orig = build_model(orig_spec).eval()
    mine, theirs = slots(model), {s.name: s for s in slots(orig)}
    if [s.name for s in mine] != list(theirs):
        raise UserError("the model's layers do not match its original architecture's; it cannot be exported dense")
    bare = [f"{s.name} ({layer_kind(s.module)})" for s in mine
            if theirs[s.name].module.bias is None and s.module.bias is not None
            and type(s.module) is not type(theirs[s.name].module) and bool(s.module.bias.detach().abs().max() > 0)]
    if bare and not keep_bias:
        raise UserError(f"{', '.join(bare[:4])}{' ...' if len(bare) > 4 else ''}: a bias the original "
                        f"{spec.arch} layer has no place for, so the original class cannot reproduce the model; "
                        f"pass --keep-bias (those layers stay nn.Linear with a bias, rebuilt by "
                        f"laser_tool.load_run) or export it with --format onnx")
    names = module_names(model)
    slot_prefixes = [names[id(s.module)] + "." for s in mine]
    rest = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in slot_prefixes)}
    missing, unexpected = orig.load_state_dict(rest, strict=False)
    orig_names = module_names(orig)
    orig_prefixes = [orig_names[id(s.module)] + "." for s in theirs.values()]
    stray = [k for k in missing if not any(k.startswith(p) for p in orig_prefixes)]
    if stray or unexpected:
        raise UserError(f"the model's other weights do not fit its original architecture "
                        f"(missing {stray[:3]}, unexpected {list(unexpected)[:3]}); it cannot be exported dense")
    converted, biased = [], {b.split(" ")[0] for b in bare}
    for s in mine:
        target = theirs[s.name].module
        if s.name in biased:  # --keep-bias: a dense layer with the bias, recorded as a layer override
            target = nn.Linear(target.in_features, target.out_features, bias=True)
            theirs[s.name].set(target)
            orig_spec.layers[s.name] = {"kind": "linear", "bias": True}
        if type(s.module) is type(target):
            target.load_state_dict(s.module.state_dict(), strict=True)
        else:
            write_dense(s.module, target)
            converted.append(dict(name=s.name, kind=layer_kind(s.module), into=layer_kind(target)))
    return orig, orig_spec, converted
