"""K seeds of one small model in one process (issue 28, item 4): K separate models stepped in turn against one
stacked ensemble. Model: trainer preset quick-narrow (vit-tiny dim 48, depth 3, 4x12 heads, MLP 96, patch 7,
1x28x28), each member its own batch of 128 random images, the preset's lr, weight decay and grad clip.
  separate         K models, each with the trainer's optimizer (make_optimizer), stepped one after another
  stacked          stack_module_state + vmap over functional_call (forward, loss; one backward through it), each
                   member's gradient clipped on its own, one AdamW over the stacked tensors (make_optimizer's groups)
  stacked_sdpa     stacked with the CPU attention kernel as is: vmap has no batching rule for it and loops
  separate_matmul  separate with stacked's attention (the control: what the kernel swap alone buys)
`stacked`'s workaround: within the step F.scaled_dot_product_attention is the same attention as two matrix
products around a masked softmax, which vmap batches. First the equality check (one step from identical weights
and batches); then interleaved rounds (each configuration `--steps` steps; median of `--reps` rounds after a
warm-up one) at 1 thread for every K, then rounds of their own at 2 threads for K=1 and the best K. FLOP rate:
analysis.costs.step_flops x steps/s over the 1-thread rate of the step's Linear products (bench/train.py's
gemm_work); gemm_bmm_kK: those products batched over K members.

    nice -n 10 python bench/multiseed.py                  # writes bench/results/multiseed.json
    python bench/multiseed.py --tiny --out FILE           # smoke test: K=1,2, one round (numbers mean nothing)
"""
import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402
from train import gemm_work, linear_shapes  # noqa: E402  (bench/train.py)
from laser_tool.analysis.costs import step_flops  # noqa: E402
from laser_tool.data import fit_model  # noqa: E402
from laser_tool.device import cpu_name  # noqa: E402
from laser_tool.models import ModelSpec, build_model, count_params  # noqa: E402
from trainers.optim import make_optimizer  # noqa: E402
from trainers.presets import PRESETS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TINY = dict(ks="1,2", reps=1, steps=2)
PRESET = PRESETS["quick-narrow"]
LR, WD, CLIP, BATCH = PRESET["lr"], PRESET["weight_decay"], PRESET["grad_clip"], PRESET["batch_size"]


def members(s, k):
    """K models of seeds 0..K-1, in training mode, as the trainer builds them."""
    return [torch.manual_seed(seed) and build_model(s).train() for seed in range(k)]


def batches(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (k, BATCH), generator=g)


def _sdpa_matmuls(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """The attention vit-tiny asks for (boolean mask, no dropout, not causal) as matrix products vmap batches."""
    assert dropout_p == 0.0 and not is_causal and attn_mask is not None and attn_mask.dtype == torch.bool
    dots = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    return dots.masked_fill(~attn_mask, float("-inf")).softmax(-1) @ v


@contextlib.contextmanager
def attention_as_matmuls(on=True):
    fused = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _sdpa_matmuls if on else fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = fused


class Separate:
    """K models, each with the trainer's optimizer, stepped one after another."""

    def __init__(self, models, matmul_attention=False):
        self.models, self.matmul_attention = models, matmul_attention
        self.opts = [make_optimizer(m, LR, WD) for m in models]

    def backward(self, x, y):
        losses = []
        with attention_as_matmuls(self.matmul_attention):
            for m, xb, yb in zip(self.models, x, y):
                loss = F.cross_entropy(m(xb), yb)
                loss.backward()
                losses.append(loss.detach())
        return torch.stack(losses)

    def update(self):
        for m, opt in zip(self.models, self.opts):
            torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def step(self, x, y):
        self.backward(x, y)
        self.update()


class Stacked(Separate):
    """The same K models as one ensemble: stacked parameters and buffers, vmap over functional_call."""

    def __init__(self, models, matmul_attention=True):
        self.k, self.matmul_attention = len(models), matmul_attention
        params, self.buffers = stack_module_state(models)
        self.params = {n: p.detach().requires_grad_() for n, p in params.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        # make_optimizer's groups, decided on a member's shapes (a stacked tensor has one more dim)
        groups = make_optimizer(models[0], LR, WD).param_groups
        names = {id(p): n for n, p in models[0].named_parameters()}
        assert len(groups) == 2, "a model with lr multipliers: not covered here"
        self.opt = torch.optim.AdamW([{"params": [self.params[names[id(p)]] for p in g["params"]],
                                       "weight_decay": g["weight_decay"]} for g in groups],
                                     lr=LR, betas=(0.9, 0.999), eps=1e-8, fused=None)

        def loss(p, b, x, y):
            return F.cross_entropy(functional_call(self.base, (p, b), (x,)), y)
        self.loss = vmap(loss)

    def backward(self, x, y):
        with attention_as_matmuls(self.matmul_attention):
            losses = self.loss(self.params, self.buffers, x, y)
        losses.sum().backward()  # member k's loss depends on member k's parameters alone
        return losses.detach()

    def update(self):
        """Each member's gradient clipped to total norm CLIP (as clip_grad_norm_ on its own model), then AdamW."""
        grads = [p.grad for p in self.params.values()]
        norms = torch.stack([g.reshape(self.k, -1).norm(dim=1) for g in grads]).norm(dim=0)
        coef = (CLIP / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def equality(s, k, matmul_attention):
    """One step from identical weights and batches: max abs differences, stacked member vs separate model."""
    sep = Separate(members(s, k))
    st = Stacked(members(s, k), matmul_attention)
    x, y = batches(k, seed=1)
    loss_sep, loss_st = sep.backward(x, y), st.backward(x, y)
    named = [dict(m.named_parameters()) for m in sep.models]
    pairs = [(named[i][n], p, i) for n, p in st.params.items() for i in range(k)]
    grad = max((a.grad - p.grad[i]).abs().max().item() for a, p, i in pairs)
    grad_rel = max(((a.grad - p.grad[i]).abs().max() / a.grad.abs().max()).item() for a, p, i in pairs)
    g_before = [a.grad.clone() for a, p, i in pairs]
    sep.update()
    st.update()
    diffs = [(a - p[i]).abs() for a, p, i in pairs]
    worst = max(range(len(diffs)), key=lambda j: diffs[j].max())
    param = diffs[worst].max().item()
    # Adam's first step is lr * g / (|g| + eps): where |g| is near eps (1e-8) a rounding-sized difference in g
    # moves the update by a fraction of lr; that is where the largest difference sits
    at_grad = g_before[worst].flatten()[diffs[worst].argmax()].abs().item()
    bufs = [dict(m.named_buffers()) for m in sep.models]
    buf = max((bufs[i][n] - b[i]).abs().max().item() for n, b in st.buffers.items() for i in range(k))
    return {"k": k, "loss": (loss_sep - loss_st).abs().max().item(), "loss_value": loss_sep.max().item(),
            "grad": grad, "grad_over_tensor_max": grad_rel, "param_after_step": param,
            "param_after_step_where_grad_was": at_grad, "buffer_after_step": buf, "lr": LR}


def timed_rounds(loops, reps, steps):
    """Seconds per step of each (threads, fn) loop: median of `reps` interleaved rounds after a warm-up round."""
    times = {name: [] for name in loops}
    for r in range(reps + 1):
        for name, (threads, fn) in loops.items():
            torch.set_num_threads(threads)
            t = time.perf_counter()
            [fn() for _ in range(steps)]
            times[name] += [time.perf_counter() - t] if r else []
    return {name: statistics.median(v) / steps for name, v in times.items()}


def bmm_work(shapes, k):
    """gemm_work's products batched over k members."""
    mats = [(torch.randn(k, m, c), torch.randn(k, n, c), torch.randn(k, m, n)) for m, c, n in shapes]
    return lambda: [(x @ w.mT, g @ w, g.mT @ x) for x, w, g in mats]


def loops(s, ks, threads, modes):
    x, y = batches(max(ks))
    out = {}
    for k in ks:
        for mode in modes:
            cls = Stacked if mode.startswith("stacked") else Separate
            obj = cls(members(s, k), matmul_attention=mode in ("stacked", "separate_matmul"))
            out[f"{mode}_k{k}_t{threads}"] = (threads, lambda o=obj, k=k: o.step(x[:k], y[:k]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,2,4,8", help="ensemble sizes")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds (median)")
    ap.add_argument("--steps", type=int, default=4, help="steps per configuration per round")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/multiseed.json)")
    args = tiny.parse(ap, argv, TINY, "bench/results/multiseed.json")
    ks = [int(k) for k in args.ks.split(",")]
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # stacked_sdpa's fallback, said above
    torch.set_num_threads(1)
    s = fit_model(ModelSpec(**PRESET["model"]), PRESET["dataset"])
    check = {"stacked": equality(s, max(2, min(ks[-1], 4)), True), "stacked_sdpa": equality(s, 2, False)}
    print(json.dumps(check), flush=True)
    per_image, per_batch = step_flops(s)
    shapes = linear_shapes(build_model(s), batches(1)[0][0])
    work, gemm_flops = gemm_work(shapes)
    modes = ("separate", "separate_matmul", "stacked", "stacked_sdpa")
    gemm = {"gemm_k1_t1": (1, work), **{f"gemm_bmm_k{k}_t1": (1, bmm_work(shapes, k)) for k in ks if k > 1}}
    sec = timed_rounds({**gemm, **loops(s, ks, 1, modes)}, args.reps, args.steps)
    best = max(ks, key=lambda k: k / sec[f"stacked_k{k}_t1"])
    two = sorted({ks[0], best})
    sec.update(timed_rounds({"gemm_k1_t2": (2, work), **loops(s, two, 2, modes[::2])}, args.reps, args.steps))
    gemm_t1 = gemm_flops / sec["gemm_k1_t1"] / 1e9

    def row(k, t):
        r = {}
        for mode in modes:
            if f"{mode}_k{k}_t{t}" in sec:
                ips = k * BATCH / sec[f"{mode}_k{k}_t{t}"]
                r[mode] = {"images_per_s": round(ips, 1), "ms_per_step_of_all_k": round(sec[f"{mode}_k{k}_t{t}"] * 1e3, 2),
                           "flop_rate_over_gemm_t1": round(ips / BATCH * (per_image * BATCH + per_batch) / 1e9 / gemm_t1, 3)}
        for mode in modes[1:]:
            if mode in r:
                r[f"{mode}_over_separate"] = round(r[mode]["images_per_s"] / r["separate"]["images_per_s"], 3)
        return r

    out = {
        "about": "K seeds of quick-narrow stepped as K separate models vs one vmap-stacked ensemble (bench/multiseed.py)",
        "machine": {"processor": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load": "busy: another training study ran on both cores throughout (niced); compare within a run",
                    "loadavg_at_end": os.getloadavg()},
        "settings": {"model": "quick-narrow", "params": count_params(build_model(s)), "batch_per_member": BATCH,
                     "lr": LR, "weight_decay": WD, "grad_clip": CLIP, "ks": ks, "reps": args.reps,
                     "steps_per_round": args.steps, "rounds": "interleaved, median, after 1 warm-up; 2 threads in rounds of their own",
                     "optimizer": "make_optimizer's AdamW: torch's default, on the CPU the single-tensor (for-loop) one",
                     "stacked_attention": "matmuls + masked softmax within the step; stacked_sdpa: the CPU kernel, vmap's per-member fallback"},
        "equality_check": check,  # max abs differences, stacked member vs separate model, one step at lr 1.2e-2
        "equality_note": "the largest parameter difference sits where |grad| ~ Adam's eps (1e-8): the first step "
                         "lr * g / (|g| + eps) turns a rounding-sized gradient difference into a fraction of lr",
        "train_mflop_per_image": round(per_image / 1e6, 3),
        "gemm_gflop_per_s": {k[5:]: round(gemm_flops * int(k.split("_k")[1].split("_")[0]) / v / 1e9, 1)
                             for k, v in sec.items() if k.startswith("gemm")},
        "threads_1": {f"k{k}": row(k, 1) for k in ks},
        "best_k": best,
        "threads_2": {f"k{k}": row(k, 2) for k in two},
    }
    tiny.write(out, args, RESULTS / "multiseed.json")


if __name__ == "__main__":
    main()
