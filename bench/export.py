"""Do low-rank layers make inference faster? onnxruntime CPU latency of exported models against the dense
baseline, and the speed-up against the FLOP ratio.

    nice -n 10 .venv/bin/python bench/export.py [--threads 2] [--reps 30] [--out bench/results/export.json]
    .venv/bin/python bench/export.py --tiny --out FILE      # smoke test, seconds (the numbers mean nothing)

The model is the quick preset's ViT-tiny (dim 128, depth 3, 4 heads, 7x7 patches, 28x28x1 inputs), with
random weights (latency does not depend on them): the dense baseline; train-time low-rank at keep 0.25 and
0.5 on the attention and FFN layers (the quick frontier's `all`); the baseline cut post hoc to factored
layers at keep 0.25 (every attention and FFN layer at rank int(0.25*m*n/(m+n)), `reduce --store factored`);
and the other train-time structures at keep 0.25 where the budget reaches them. Each is exported exactly as
`laser-tool export --format onnx` does (laser_tool/export/onnx.py: dynamo exporter, checked against torch
under onnxruntime), then timed under onnxruntime on the CPU with `--threads` intra-op threads at batch 1
and 64: per batch size, every model's session runs once per round, round after round (interleaved, so the
load of other processes on a shared machine hits all models alike), and the median of `--reps` rounds is kept.

Where the time goes: onnxruntime's profiler gives each model's kernel time per ONNX op type at the largest
batch (`kernel_time_shares`, with the matmuls' total), since FLOPs count only the matmuls.

FLOPs per image come from the project's own counter (laser_tool/analysis/costs.py, torch's FlopCounterMode,
plus the per-batch work such as an SKL layer building its matrix, divided over the batch). For each model:
speed-up = baseline ms / its ms, flop_ratio = baseline FLOPs / its FLOPs, and `within_1.5x` says whether
the speed-up is at least flop_ratio / 1.5 (the goal for keep 0.25 at batch 64).
"""
import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from laser_tool.analysis.costs import forward_flops  # noqa: E402
from laser_tool.errors import UserError  # noqa: E402
from laser_tool.device import cpu_name  # noqa: E402
from laser_tool.export.onnx import example_images, onnx_bytes, session  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.models import ModelSpec, build_model, count_params  # noqa: E402
from laser_tool.models.budget import fraction_rank  # noqa: E402
from laser_tool.models.surgery import slots  # noqa: E402

QUICK = dict(arch="vit-tiny", image_size=28, channels=1, num_classes=10, dim=128, depth=3, heads=4, dim_head=32,
             mlp_dim=256, patch_size=7, dropout=0.0, emb_dropout=0.0)
TINY_SPEC = dict(QUICK, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64)
TARGETS = ["ffn", "attn"]
ROLES = {"attn-qkv", "attn-q", "attn-k", "attn-v", "attn-out", "ffn-in", "ffn-out"}
GOAL = 1.5
MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "MatMulNBits"}


def factored_spec(base: dict, keep: float) -> ModelSpec:
    """The baseline with every attention and FFN layer a rank-r factored layer (what `reduce --rank
    params:KEEP --store factored` records)."""
    spec = ModelSpec(**base)
    layers = {s.name: {"kind": "factored", "rank": fraction_rank(s.module.in_features, s.module.out_features, keep),
                       "bias": s.module.bias is not None}
              for s in slots(build_model(spec)) if s.role in ROLES}
    return ModelSpec(**base, layers=layers)


def models(base: dict, tiny_run: bool) -> dict:
    """{name: ModelSpec} of the models compared."""
    out = {"baseline": ModelSpec(**base),
           "lowrank keep 0.25": ModelSpec(**base, variant="lowrank", targets=TARGETS, keep=0.25),
           "post-hoc factored keep 0.25": factored_spec(base, 0.25)}
    if tiny_run:  # each export traces the model for seconds: the smoke test keeps three
        return out
    out["lowrank keep 0.5"] = ModelSpec(**base, variant="lowrank", targets=TARGETS, keep=0.5)
    for kind in ("skl", "dyad", "monarch", "btt"):
        out[f"{kind} keep 0.25"] = ModelSpec(**base, variant=kind, targets=TARGETS, keep=0.25)
    return out


def build(spec: ModelSpec) -> torch.nn.Module:
    """The model with random weights (a factored layer loads zeros until a checkpoint fills it)."""
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():
        for s in slots(model):
            if type(s.module).__name__ == "FactoredLinear":
                for p in s.module.parameters():
                    p.normal_(0, s.module.in_features ** -0.5)
    return model


def interleaved(sessions: dict, spec, batch: int, reps: int, warmup: int = 3) -> dict:
    """{name: median seconds of one run at `batch`}, every session run once per round."""
    x = example_images(spec, batch).numpy()
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    for n, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[n])
    times = {n: [] for n in sessions}
    for _ in range(reps):
        for n, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[n])
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def op_shares(data: bytes, spec, batch: int, threads: int, runs: int = 10) -> dict:
    """{ONNX op type: share of the kernel time} of `runs` runs at `batch` (onnxruntime's profiler), the six
    largest and the matmuls' total: how much of the time the layers a low-rank model shrinks account for."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "profile")
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: example_images(spec, batch).numpy()}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    time_of = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            time_of[e["args"]["op_name"]] += e["dur"]
    total = sum(time_of.values()) or 1
    out = {op: round(t / total, 3) for op, t in time_of.most_common(6)}
    out["all matmuls"] = round(sum(t for op, t in time_of.items() if op in MATMUL_OPS) / total, 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (one inter-op).")
    ap.add_argument("--reps", type=int, default=30, help="timed rounds per batch size (the median is kept)")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--out", help="results file (default bench/results/export.json)")
    # --tiny: a dim-32, depth-1 model, three of the models, two rounds at batch 1 and 8
    a = tiny.parse(ap, argv, dict(reps=2, batches="1,8"), "bench/results/export.json")
    torch.set_num_threads(a.threads)
    base = TINY_SPEC if a.tiny else QUICK
    batches = [int(b) for b in a.batches.split(",")]
    specs, skipped, sessions, info = {}, {}, {}, {}
    for name, spec in models(base, a.tiny).items():
        try:
            model = build(spec)
        except UserError as e:  # a structure the budget cannot reach at this shape
            skipped[name] = str(e)
            continue
        t0 = time.time()
        data, check = onnx_bytes(model, spec.resolved())
        specs[name], sessions[name] = spec, session(data, a.threads)
        info[name] = dict(params=count_params(model), onnx_bytes=len(data), export_seconds=round(time.time() - t0, 2),
                          max_abs_diff=check["max_abs_diff"], exporter=check["exporter"],
                          kernel_time_shares={str(batches[-1]): op_shares(data, spec.resolved(), batches[-1],
                                                                          a.threads, runs=max(2, a.reps // 3))})
        print(f"exported {name}: {info[name]['params']:,} params, max abs diff {check['max_abs_diff']:.1e}",
              flush=True)
    flops = {n: forward_flops(s) for n, s in specs.items()}   # (per image, per batch)
    results = {}
    for b in batches:
        secs = interleaved(sessions, specs["baseline"].resolved(), b, a.reps)
        base_flops = flops["baseline"][0] * b + flops["baseline"][1]
        for n in specs:
            f = flops[n][0] * b + flops[n][1]
            speed_up, ratio = secs["baseline"] / secs[n], base_flops / f
            results.setdefault(n, dict(info[n], flops_per_image=flops[n][0] + flops[n][1] / b, batches={}))
            results[n]["batches"][str(b)] = dict(ms=round(1e3 * secs[n], 4), speed_up=round(speed_up, 3),
                                                 flop_ratio=round(ratio, 3),
                                                 speed_up_over_flop_ratio=round(speed_up / ratio, 3),
                                                 within_1_5x=bool(speed_up >= ratio / GOAL))
            print(f"batch {b:>3} {n:<30} {1e3 * secs[n]:9.3f} ms  speed-up {speed_up:5.2f}x  "
                  f"FLOP ratio {ratio:5.2f}x", flush=True)
    import onnxruntime
    doc = dict(about=__doc__.split("\n\n")[0].replace("\n", " "), tiny=bool(a.tiny),
               machine=dict(processor=cpu_name(), cpu_count=os.cpu_count(), platform=platform.platform(),
                            shared="yes: other processes ran meanwhile; rounds are interleaved",
                            onnxruntime=onnxruntime.__version__, torch=torch.__version__),
               settings=dict(model=base, threads=a.threads, reps=a.reps, batches=batches, goal=f"keep 0.25 at batch "
                             f"64: speed-up >= FLOP ratio / {GOAL}"),
               models=results, skipped=skipped)
    out = Path(a.out or Path(__file__).resolve().parent / "results" / "export.json")
    atomic_write_json(out, doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
