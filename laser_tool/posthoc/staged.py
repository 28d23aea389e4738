"""Running a model in stages, so a search re-runs only the network after the layer it changes.

prefix(images) -> state; stages[k] = (layer names it holds, fn(state) -> next state); the last stage
returns logits. The split must reproduce the model's own forward bit for bit (`staged` checks it).
"""
import torch
import torch.nn.functional as F

from ..models.surgery import slots
from ..models.vit_tiny import ViTTiny
from .reduce import warn


class Staged:
    """prefix(images) -> state; stages[k] = (layer names it holds, fn(state) -> next state); the last
    stage returns logits. Stage functions look modules up when called, so a swapped layer is used."""

    def __init__(self, prefix, stages):
        self.prefix, self.stages = prefix, stages
        self.index = {n: k for k, (names, _) in enumerate(stages) for n in names}

    def run_from(self, k, state):
        for _, fn in self.stages[k:]:
            state = fn(state)
        return state


def _lsa_core(attn, h):
    """LSA.forward up to (not including) to_out: the attention output that to_out projects."""
    return h, attn.attend(h)


def _vit_tiny_stages(model):
    """ViTTiny.forward cut before every Linear layer; the same ops in the same order."""
    def tokens(x):
        return model.add_tokens(model.embed.proj(x))

    stages = [(["embed"], tokens)]
    for i, blk in enumerate(model.blocks):
        a, f = blk["attn"], blk["ffn"]
        stages += [([f"blocks.{i}.attn.qkv"], lambda h, a=a: _lsa_core(a, h)),
                   ([f"blocks.{i}.attn.out"], lambda st, a=a: a.out_drop(a.to_out(st[1])) + st[0]),
                   ([f"blocks.{i}.ffn.in"], lambda h, f=f: (h, f.drop(F.gelu(f.fc_in(h))))),
                   ([f"blocks.{i}.ffn.out"], lambda st, f=f: f.drop(f.fc_out(st[1])) + st[0])]
    stages += [([], lambda h: model.head_norm(h[:, 0])), (["head"], lambda z: model.head(z))]
    return Staged(model.embed.patches, stages)


def staged(model, check_images=None) -> Staged:
    """Stages for `model`. x-transformers threads the previous layer's attention logits through one
    long loop (residual_attn), so an xt-vit splits only before its head. If `check_images` is given,
    the split must reproduce model(x) bit for bit, or we fall back to one stage."""
    names = [s.name for s in slots(model)]
    if isinstance(model, ViTTiny):
        st = _vit_tiny_stages(model)
    elif hasattr(model, "mlp_head"):
        st = Staged(lambda img: img, [([n for n in names if n != "head"],
                                       lambda img: model(img, return_embeddings=True).mean(dim=-2)),
                                      (["head"], lambda z: model.mlp_head(z))])
    else:
        st = Staged(lambda img: img, [(names, model)])
    if check_images is not None:
        with torch.no_grad():
            if not torch.equal(st.run_from(0, st.prefix(check_images)), model(check_images)):
                warn("the staged forward differs from the model's own; searching without activation caching")
                st = Staged(lambda img: img, [(names, model)])
    missing = [n for n in names if n not in st.index]
    if missing:
        raise RuntimeError(f"stages miss layers {missing}")
    return st
