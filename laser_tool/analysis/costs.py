"""What a row costs: the fraction of the targeted layers' parameters it keeps (`keep`, the budget
axis of the frontier) and the multiply-adds of a forward pass and of its training (the FLOPs axis).

Both are computed from model specs (the architecture a run's config records), never from a
checkpoint, so they are the same for every seed of a spec and need no weights.
"""
import json
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..models import ModelSpec, build_model
from ..models.surgery import named_linears


def _key(spec) -> str:
    d = spec if isinstance(spec, dict) else spec.to_dict()
    return json.dumps(d, sort_keys=True, default=str)


@lru_cache(maxsize=256)
def _layers(key: str) -> dict:
    model = build_model(ModelSpec.from_dict(json.loads(key)))
    return {r["name"]: (r["params"], r["kind"], r["in_features"], r["out_features"]) for r in named_linears(model)}


def layer_table(spec) -> dict:
    """{layer name: (params, kind, d_in, d_out)} of the model a spec builds (cached per spec)."""
    return _layers(_key(spec))


def keep(spec, base_spec):
    """(fraction kept, names of the targeted layers): the parameters of the layers that differ from the
    baseline's layers of the same name (in count or kind) over the baseline's parameters in those layers.
    1.0 and () when nothing differs."""
    mine, base = layer_table(spec), layer_table(base_spec)
    changed = [n for n in base if n in mine and mine[n][:2] != base[n][:2]]
    if not changed:
        return 1.0, ()
    return sum(mine[n][0] for n in changed) / sum(base[n][0] for n in changed), tuple(changed)


@lru_cache(maxsize=256)
def _forward_flops(key: str):
    s = ModelSpec.from_dict(json.loads(key)).resolved()
    model = build_model(s).eval()
    counts, fused = [], F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _sdpa_math  # the fused CPU kernel is invisible to the counter
    try:
        for n in (1, 2):
            x = torch.rand(n, s.channels, s.image_size, s.image_size)
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(x)
            counts.append(fc.get_total_flops())
    finally:
        F.scaled_dot_product_attention = fused
    return counts[1] - counts[0], 2 * counts[0] - counts[1]


def _sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """Attention as two visible matmuls (same result as the fused kernel, for counting only)."""
    dots = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        n = q.shape[-2]
        attn_mask = torch.ones(n, k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        dots = dots.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else dots + attn_mask
    return dots.softmax(-1) @ v


def forward_flops(spec):
    """(FLOPs per image, FLOPs per batch independent of its size) of one forward pass, counted by
    torch's FlopCounterMode (matmuls, attention, convolutions; 2 FLOPs per multiply-add) on batches of
    one and two images. The per-batch part is work like an SKL layer building its matrix once."""
    return _forward_flops(_key(spec))


def training_flops(spec, images: int, steps: int = 0) -> float:
    """About 3x the forward FLOPs (forward + backward for activations and weights) per image seen,
    plus the per-batch part per step."""
    per_image, per_batch = forward_flops(spec)
    return 3.0 * (per_image * images + per_batch * steps)
