"""Models from outside the tool: timm's (`timm:NAME`) and the user's (`python:MODULE:FUNCTION`).

Their sizes are not the spec's to set (timm's registry or the user's code decides them), so a probe
builds the model once on the meta device (no memory, milliseconds) and reads them off its layers: the
embedding width, depth, heads, head width and FFN width, which the rest of the tool (budgets, study
rows, compare's sections) reads from the spec as it does for the seed's models. A spec that asks for
another FFN or head width (a narrower row, half-ffn) gets it through timm's own arguments.
"""
import json
from functools import lru_cache
from types import SimpleNamespace

import torch
import torch.nn as nn

from ..errors import UserError
from ..vocab import EXTERNAL_ARCHS
from .factory import build_factory
from .surgery import slots
from .timm_vit import build_timm

SIZE_FIELDS = ("dim", "depth", "heads", "dim_head", "mlp_dim")


def is_external(arch) -> bool:
    return isinstance(arch, str) and arch.startswith(EXTERNAL_ARCHS)


def _build(s, **widths) -> nn.Module:
    return build_timm(s, **widths) if s.arch.startswith("timm:") else build_factory(s)


@lru_cache(maxsize=64)
def _probe(key: str) -> dict:
    s = SimpleNamespace(**json.loads(key))  # the spec's fields the builders read
    try:
        with torch.device("meta"):
            model = _build(s)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - some code cannot run on the meta device: build it for real once
        model = _build(s)
    found = slots(model)
    qkv = [x.module for x in found if x.role in ("attn-qkv", "attn-q")]
    ffn_in = [x.module for x in found if x.role == "ffn-in"]
    attn = [x.parent for x in found if x.role == "attn-out"]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return dict(dim=qkv[0].in_features if qkv else None, depth=len(attn) or None,
                heads=getattr(attn[0], "num_heads", None) if attn else None,
                dim_head=getattr(attn[0], "head_dim", None) if attn else None,
                mlp_dim=ffn_in[0].out_features if ffn_in else None,
                patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch)


def natural_sizes(s) -> dict:
    """The sizes the architecture itself gives (no narrower widths), by building it on the meta device."""
    key = json.dumps(dict(arch=s.arch, arch_args=s.arch_args, image_size=s.image_size, channels=s.channels,
                          num_classes=s.num_classes), sort_keys=True)
    return dict(_probe(key))


def build_external(s) -> nn.Module:
    """The model of a resolved spec: the architecture, at the spec's FFN and head widths."""
    natural = natural_sizes(s)
    widths = {}
    if s.mlp_dim != natural["mlp_dim"]:
        ratio = s.mlp_dim / natural["dim"]
        widths["mlp_ratio"] = ratio if int(natural["dim"] * ratio) == s.mlp_dim else (s.mlp_dim + 0.5) / natural["dim"]
    if s.dim_head != natural["dim_head"]:
        widths["attn_head_dim"] = s.dim_head
    if widths and not s.arch.startswith("timm:"):
        raise UserError(f"--arch {s.arch}: your factory decides its own widths; give other FFN / head widths "
                        f"through --arch-arg (a narrower row or half-ffn needs a timm model)")
    model = _build(s, **widths)
    got = next((x.module.out_features for x in slots(model) if x.role == "ffn-in"), None)
    if got != s.mlp_dim:
        raise UserError(f"{s.arch} cannot make an FFN of width {s.mlp_dim} from dim {natural['dim']}; "
                        f"pick another --mlp-dim")
    return model
