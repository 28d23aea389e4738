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


def keep(spec, base_spec, targeted=()):
    """(fraction kept, names of the targeted layers): the parameters of the layers that differ from the
    baseline's layers of the same name (in count or kind) over the baseline's parameters in those layers.
    1.0 and () when nothing differs. `targeted` layers count even where unchanged (a rank search's budget
    covers the layers it left whole)."""
    mine, base = layer_table(spec), layer_table(base_spec)
    changed = [n for n in base if n in mine and (mine[n][:2] != base[n][:2] or n in targeted)]
    if not changed:
        return 1.0, ()
    return sum(mine[n][0] for n in changed) / sum(base[n][0] for n in changed), tuple(changed)


def _counted(key: str, backward: bool):
    """(per image, per batch) FLOPs of a forward (and backward) pass, from batches of one and two images."""
    s = ModelSpec.from_dict(json.loads(key)).resolved()
    model = build_model(s).train(backward)
    counts, fused = [], F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _sdpa_math  # the fused CPU kernel is invisible to the counter
    try:
        for n in (1, 2):
            x = torch.rand(n, s.channels, s.image_size, s.image_size)
            with torch.set_grad_enabled(backward), FlopCounterMode(display=False) as fc:
                y = model(x)
                if backward:
                    y.float().sum().backward()
            counts.append(fc.get_total_flops())
    finally:
        F.scaled_dot_product_attention = fused
    return counts[1] - counts[0], 2 * counts[0] - counts[1]


@lru_cache(maxsize=256)
def _forward_flops(key: str):
    return _counted(key, backward=False)


@lru_cache(maxsize=256)
def _step_flops(key: str):
    return _counted(key, backward=True)


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


def step_flops(spec):
    """(FLOPs per image, per batch) of a training step, forward and backward, as torch's FlopCounterMode
    counts them (about 3x the forward: the backward pass computes the gradient of every weight and of
    every activation but the input's)."""
    return _step_flops(_key(spec))


def training_flops(spec, images: int, steps: int = 0) -> float:
    """The FLOPs of training `spec` on `images` images in `steps` optimizer steps."""
    per_image, per_batch = step_flops(spec)
    return float(per_image * images + per_batch * steps)


def trained_flops(config: dict) -> float:
    """What the weights of a run cost to train, following the runs they came from: a post-hoc cut's
    baseline training (dense), a heal's (or any `--init-from` run's) source's whole training before its
    own, and a progressive run's dense phase at dense cost and each later phase at its structure's."""
    total = 0.0
    src = config.get("init_source")
    if isinstance(src, dict) and isinstance(src.get("config"), dict):
        total += trained_flops(src["config"])
    spec = config["model"]
    cut_layers = dict(spec.get("layers", {}))  # the structure after every cut (a cut's rank is its own)
    if config.get("reduction") and not src:    # a post-hoc cut: the weights were trained dense
        spec = dict(spec, layers={})
    steps, per_step = (config.get("schedule") or {}).get("total_steps"), config.get("batch_size")
    if not steps or not per_step:
        raise ValueError("the run records no schedule")
    cuts = (config.get("progressive") or {}).get("cuts") or []
    cut_names = {l["name"] for c in cuts for l in c.get("layers", [])}
    done, layers = 0, {k: v for k, v in spec.get("layers", {}).items() if k not in cut_names}
    for cut in cuts:  # the phase before each cut, at the structure it had then
        total += training_flops(dict(spec, layers=dict(layers)), (cut["step"] - done) * per_step, cut["step"] - done)
        done = cut["step"]
        layers.update({l["name"]: dict(cut_layers[l["name"]], rank=l["rank_after"]) for l in cut["layers"]
                       if l["name"] in cut_layers})
    return total + training_flops(dict(spec, layers=layers), (steps - done) * per_step, steps - done)
