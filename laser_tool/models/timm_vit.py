"""timm's models, built offline (`pretrained=False`): `--arch timm:NAME`.

The image size, channels and classes come from the dataset (the spec); every other constructor argument
is the spec's `arch_args` (`--arch-arg KEY=VALUE`). Two spec fields reach timm's ViT through its own
arguments, so a narrower row is an ordinary timm model: `mlp_dim` becomes `mlp_ratio`, and `dim_head`
becomes the attention head width (timm's Attention takes `attn_head_dim`; its Block does not pass one,
so the attention layer is handed in with it bound).

timm is imported only when such a model is built or inspected (it costs seconds).
"""
import difflib
from functools import lru_cache

import torch.nn as nn

from ..errors import UserError

# What the spec sets (from the dataset) and must not come in as an --arch-arg.
FROM_SPEC = {"num_classes": "the dataset's classes", "img_size": "the dataset's image size",
             "in_chans": "the dataset's channels", "pretrained": "offline building (pretrained=False); "
             "bring weights with `laser-tool import`"}


def import_timm():
    import timm
    return timm


def timm_name(arch: str) -> str:
    return arch.split(":", 1)[1]


def check_timm_name(arch: str) -> None:
    """An unknown model name fails in one line, with the closest names timm knows."""
    timm = import_timm()
    name = timm_name(arch)
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f"did you mean {', '.join('timm:' + c for c in close)}?" if close else \
            "see timm.list_models() for the names timm knows"
        raise UserError(f"timm has no model named {name!r}; {hint}")


@lru_cache(maxsize=None)
def attention_with_head_dim(head_dim: int):
    """timm's Attention with its head width bound (timm checks the layer with issubclass: a class)."""
    base = import_timm().layers.Attention

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **{**kwargs, "attn_head_dim": head_dim})
    return type(f"AttentionHeadDim{head_dim}", (base,), {"__init__": __init__})


def build_timm(s, mlp_ratio=None, attn_head_dim=None) -> nn.Module:
    """timm's model for a spec (its sizes from the dataset, `s.arch_args` as constructor arguments);
    `mlp_ratio` / `attn_head_dim` override timm's widths (a narrower row)."""
    timm = import_timm()
    check_timm_name(s.arch)
    for k in s.arch_args:
        if k in FROM_SPEC:
            raise UserError(f"--arch-arg {k} is not yours to set: it comes from {FROM_SPEC[k]}")
    kwargs = dict(s.arch_args)
    if mlp_ratio is not None:
        kwargs["mlp_ratio"] = mlp_ratio
    if attn_head_dim is not None:
        kwargs["attn_layer"] = attention_with_head_dim(attn_head_dim)
    try:
        return timm.create_model(timm_name(s.arch), pretrained=False, num_classes=s.num_classes,
                                 img_size=s.image_size, in_chans=s.channels, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as e:
        args = ", ".join(f"{k}={v!r}" for k, v in s.arch_args.items()) or "no --arch-arg"
        raise UserError(f"timm cannot build {timm_name(s.arch)} ({args}): {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]}; check the --arch-arg names against timm's "
                        f"constructor") from None
