"""Forward+backward time of each structured layer against a dense nn.Linear at the seed's shapes.

    .venv/bin/python bench/layers.py [--reps 9] [--device cpu|cuda|all] [--out bench/results/layers.json]

Shapes: FFN 512->256 (ViT-tiny), FFN 256->1024 (xt-vit), attn-out 384->256 (xt-vit); rows = 256 images x
65 tokens = 16,640. One step = forward on x (which requires grad, as inside a network) and backward of a
fixed upstream gradient, so dX, dW and db are all computed. The kinds are timed in interleaved rounds (the
order rotates each round) so that load from other processes on a shared machine hits all of them alike;
each kind's time is the median over rounds, and every ratio is to dense measured in the same run.

FLOP ratios are analytic (forward; backward scales all kinds alike, 2x the forward):
dense 2*N*d_in*d_out; low-rank 2*N*r*(d_in+d_out); DYAD 2*N*2*d_in*d_out/n_dyad; SKL the dense product
with S plus building S, 2*k*r*k.

The results file keeps one entry per device, so a CUDA run elsewhere can be merged into the CPU one:
running with --out on an existing file replaces only the devices measured.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.layers import DyadLinear, LowRankLinear, SKLinear  # noqa: E402

ROWS = 256 * 65
SHAPES = {"ffn-512x256": (512, 256), "ffn-256x1024": (256, 1024), "attn-out-384x256": (384, 256)}
N_DYAD, SCALE = 8, 0.5
GOALS = {"lowrank": 0.75, "skl": 1.3, "dyad-it": 0.6, "dyad-ot": 0.6, "dyad-dt": 0.6}


def make_layers(d_in, d_out):
    return {
        "dense": nn.Linear(d_in, d_out),
        "lowrank": LowRankLinear(d_in, d_out, r=SCALE),
        "skl": SKLinear(d_in, d_out, scale=SCALE),
        "dyad-it": DyadLinear(d_in, d_out, n_dyad=N_DYAD, variant="it"),
        "dyad-ot": DyadLinear(d_in, d_out, n_dyad=N_DYAD, variant="ot"),
        "dyad-dt": DyadLinear(d_in, d_out, n_dyad=N_DYAD, variant="dt"),
    }


def flops(kind, layer, n, d_in, d_out):
    if kind == "dense":
        return 2 * n * d_in * d_out
    if kind == "lowrank":
        return 2 * n * layer.rank * (d_in + d_out)
    if kind == "skl":
        k = layer.sn * layer.sm
        return 2 * n * d_in * d_out + 2 * k * layer.rank * k
    if kind.startswith("dyad"):
        return 2 * n * 2 * d_in * d_out // layer.n_dyad
    raise ValueError(kind)


def n_params(layer):
    return sum(p.numel() for p in layer.parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(layer, x, g):
    """One forward+backward; gradients are dropped (set to None) so no accumulation is timed."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    layer(x).backward(g)


def bench_shape(d_in, d_out, reps, warmup, device, dtype=torch.float32):
    layers = {k: m.to(device=device, dtype=dtype) for k, m in make_layers(d_in, d_out).items()}
    x = torch.randn(ROWS, d_in, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(ROWS, d_out, device=device, dtype=dtype)
    kinds = list(layers)
    times = {k: [] for k in kinds}
    for r in range(warmup + reps):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]   # rotate so no kind always runs first
        for k in order:
            sync(device)
            t0 = time.perf_counter()
            step(layers[k], x, g)
            sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    dense_ms = statistics.median(times["dense"]) * 1e3
    dense_flops, dense_params = flops("dense", layers["dense"], ROWS, d_in, d_out), n_params(layers["dense"])
    out = {}
    for k in kinds:
        ms = statistics.median(times[k]) * 1e3
        row = dict(ms=round(ms, 3), time_ratio=round(ms / dense_ms, 3),
                   param_ratio=round(n_params(layers[k]) / dense_params, 4),
                   flop_ratio=round(flops(k, layers[k], ROWS, d_in, d_out) / dense_flops, 4),
                   params=n_params(layers[k]),
                   ms_min=round(min(times[k]) * 1e3, 3), ms_max=round(max(times[k]) * 1e3, 3))
        if k in GOALS:
            row["goal_time_ratio"] = GOALS[k]
            row["met"] = row["time_ratio"] <= GOALS[k]
        out[k] = row
    return out


def machine_info(device):
    info = dict(device=str(device), torch=torch.__version__, python=platform.python_version(),
                platform=platform.platform(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                processor=platform.processor() or platform.machine())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def run_device(device, reps, warmup, dtype=torch.float32):
    result = dict(machine=machine_info(device), rows=ROWS, n_dyad=N_DYAD, scale=SCALE, reps=reps,
                  warmup=warmup, dtype=str(dtype).replace("torch.", ""), shapes={})
    t0 = time.time()
    for name, (d_in, d_out) in SHAPES.items():
        result["shapes"][name] = bench_shape(d_in, d_out, reps, warmup, device, dtype)
        print_table(device, name, result["shapes"][name])
    result["wall_s"] = round(time.time() - t0, 1)
    if hasattr(os, "getloadavg"):
        result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def print_table(device, name, rows):
    print(f"\n[{device}] {name}  (rows {ROWS})")
    print(f"{'kind':<9} {'ms':>9} {'time':>7} {'params':>7} {'flops':>7}  goal")
    for k, r in rows.items():
        goal = f"<= {r['goal_time_ratio']}x {'met' if r['met'] else 'MISSED'}" if "met" in r else ""
        print(f"{k:<9} {r['ms']:>9.2f} {r['time_ratio']:>6.3f}x {r['param_ratio']:>6.3f}x "
              f"{r['flop_ratio']:>6.3f}x  {goal}")
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=9, help="timed rounds per shape (median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                    help="all = cpu, plus cuda when available")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="parameter and activation dtype (results of other dtypes are keyed DEVICE-DTYPE)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "layers.json"))
    args = ap.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        sys.exit("error: --device cuda asked for but torch sees no CUDA device")
    torch.manual_seed(0)

    out = Path(args.out)
    doc = {}
    if out.exists():
        try:
            doc = json.loads(out.read_text())
        except ValueError:
            doc = {}
    doc.setdefault("description", "forward+backward time per layer kind, ratios to dense nn.Linear in the "
                                  "same run; median over interleaved rounds; see bench/layers.py")
    doc.setdefault("devices", {})
    for d in devices:
        dev = torch.device(d)
        # one key per device type (and dtype other than float32); machine.gpu names a CUDA card
        key = d if args.dtype == "float32" else f"{d}-{args.dtype}"
        doc["devices"][key] = run_device(dev, args.reps, args.warmup, getattr(torch, args.dtype))
        doc["devices"][key]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(out, doc)      # after each device, so a later failure keeps what was measured
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
