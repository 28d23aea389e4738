"""Does a cut save time? A layer's dense matmul against its rank-r factored pair, timed on this machine.

A rank-r factor pair of a d_out x d_in layer does r (d_in + d_out) multiply-adds per row where the dense
layer does d_in d_out, so it saves FLOPs below r = d_in d_out / (d_in + d_out). It saves TIME only below a
lower rank, the break-even: two small matmuls run at a lower rate than one larger one, and below some size
the per-call overhead dominates. Both forms are timed in torch eager (2 threads) on the rows one batch of
images gives the layer (batch x tokens per image), in the shared rounds of export/latency.py, so machine
noise hits both alike. `reduce` and `search` warn with this where a cut saves parameters but no time,
`search --budget latency:F` allocates ranks by it, and bench/breakeven.py tabulates the break-even ranks.
"""
import torch
import torch.nn.functional as F

from ..export.latency import time_interleaved
from ..export.onnx import example_images
from ..models.budget import factored_params
from ..models.surgery import slots

BATCH = 64
ROUNDS = 15


def tokens_per_image(model, spec, names) -> dict:
    """{layer name: rows it sees per image} of the named layers, from one forward pass of one image."""
    by_name = {s.name: s.module for s in slots(model)}
    seen, hooks = {}, []

    def record(name):
        def hook(module, args):  # returns None: a pre-hook's return value would replace the input
            seen.setdefault(name, args[0].numel() // args[0].shape[-1])
        return hook
    for n in names:
        hooks.append(by_name[n].register_forward_pre_hook(record(n)))
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device  # reduce and search may hold the model on a GPU
            model.eval()(example_images(spec.resolved(), 1).to(device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _runner(d_out: int, d_in: int, rank, rows: int):
    """fn() running the dense layer (rank None) or its rank-`rank` factor pair on `rows` random rows (a bias
    is one addition either way, so neither has one)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=g)
    if rank is None:
        W = torch.randn(d_out, d_in, generator=g)
        return lambda _: F.linear(x, W)
    U, V = torch.randn(d_out, rank, generator=g), torch.randn(rank, d_in, generator=g)
    return lambda _: F.linear(F.linear(x, V), U)


def layer_times(cases: dict, rows: dict, threads: int = 2, rounds: int = ROUNDS) -> dict:
    """{key: median ms} of cases {key: (d_out, d_in, rank or None for dense)} on rows[key] input rows, all
    timed in shared rounds; cases of one shape, rank and row count are timed once."""
    distinct = {(*case, rows[key]) for key, case in cases.items()}
    runners = {c: _runner(*c) for c in distinct}
    with torch.inference_mode():
        timed = time_interleaved(runners, lambda b: None, batches=(0,), rounds=rounds, threads=threads)
    return {key: timed[(*case, rows[key])]["0"]["median_ms"] for key, case in cases.items()}


def cuts_at(model, ranks: dict) -> list:
    """Factored cuts of `model` at `ranks` ({layer: rank}) as no_time_saved takes them."""
    by_name = {s.name: s.module for s in slots(model)}
    out = []
    for n, r in ranks.items():
        m = by_name[n]
        out.append(dict(name=n, shape=[m.out_features, m.in_features], rank_after=r,
                        params_before=sum(p.numel() for p in m.parameters()),
                        params_after=factored_params(m.out_features, m.in_features, r, m.bias is not None)))
    return out


def no_time_saved(model, spec, cuts: list, batch: int = BATCH, threads: int = 2) -> list:
    """Warnings for the factored cuts [{name, shape: [d_out, d_in], rank_after, params_before, params_after}]
    of `model` that save parameters but run no faster than the dense layer at a batch of `batch` images."""
    cuts = [c for c in cuts if c["params_after"] < c["params_before"]]
    if not cuts:
        return []
    tokens = tokens_per_image(model, spec, [c["name"] for c in cuts])
    cases, rows = {}, {}
    for c in cuts:
        d_out, d_in = c["shape"]
        for form, rank in (("dense", None), ("factored", c["rank_after"])):
            cases[(c["name"], form)] = (d_out, d_in, rank)
            rows[(c["name"], form)] = batch * tokens[c["name"]]
    ms = layer_times(cases, rows, threads)
    out = []
    for c in cuts:
        dense, factored = ms[(c["name"], "dense")], ms[(c["name"], "factored")]
        if factored >= dense:
            out.append(f"{c['name']}: the rank-{c['rank_after']} cut saves parameters but no time: its factor pair "
                       f"takes {factored:.3f} ms against the dense layer's {dense:.3f} ms for a batch of {batch} "
                       f"images on this CPU (torch, {threads} threads); for speed, deploy the dense multiply-out "
                       f"(export --format dense) or cut deeper")
    return out


def rank_costs(model, spec, table: dict, batch: int = BATCH, threads: int = 2) -> dict:
    """{layer: {dense_ms, rank_ms: {rank: ms}}}: every layer of a search's sensitivity table (search.py) dense
    and at each of its grid ranks, on the rows a batch of `batch` images gives it, timed in shared rounds."""
    tokens = tokens_per_image(model, spec, list(table))
    shapes = {s.name: (s.module.out_features, s.module.in_features) for s in slots(model) if s.name in table}
    cases, rows = {}, {}
    for n, options in table.items():
        for rank in [None] + [c["rank"] for c in options]:
            cases[(n, rank)], rows[(n, rank)] = (*shapes[n], rank), batch * tokens[n]
    ms = layer_times(cases, rows, threads)
    return {n: dict(dense_ms=ms[(n, None)], rank_ms={c["rank"]: ms[(n, c["rank"])] for c in options})
            for n, options in table.items()}


def latency_budget(costs: dict, table: dict, fraction: float) -> tuple:
    """(table with each option's cost in ms, {layer: dense ms}, the budget in ms) for search's allocation
    under `latency:F`: the selected layers' time at most F x their dense time."""
    priced = {n: [dict(c, params=costs[n]["rank_ms"][c["rank"]]) for c in options] for n, options in table.items()}
    dense = {n: costs[n]["dense_ms"] for n in table}
    return priced, dense, fraction * sum(dense.values())


def latency_of(costs: dict, ranks: dict) -> float:
    """Estimated ms of the selected layers with `ranks` ({layer: rank}; a layer absent stays dense)."""
    return sum(c["rank_ms"][ranks[n]] if n in ranks else c["dense_ms"] for n, c in costs.items())
