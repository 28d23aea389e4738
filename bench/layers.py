"""Forward+backward time of every structured layer against a dense nn.Linear at the seed's shapes.

    .venv/bin/python bench/layers.py [--reps 7] [--threads 1] [--device cpu|cuda|all] [--out FILE]
    .venv/bin/python bench/layers.py --tiny --out FILE   # smoke test: same code, 256 rows, 1 round

Shapes: FFN 512->256 (ViT-tiny), FFN 256->1024 (xt-vit), attn-out 384->256 (xt-vit); rows = 256 images x
65 tokens = 16,640. Every variant (low-rank, SKL, DYAD it/ot/dt, Monarch, BTT) is built at `--keep` 0.5 and
0.25 (laser_tool/budget.py picks its rank / n_dyad / blocks); the row name is KIND@KEEP. At these shapes
keep 0.5 gives the seed's own low-rank and SKL ranks and keep 0.25 the seed's n_dyad 8.
One step = forward on x (which requires grad, as inside a network) and backward of a
fixed upstream gradient, so dX, dW and db are all computed. The kinds are timed in interleaved rounds (the
order rotates each round) so that load from other processes on a shared machine hits all of them alike;
each kind's time is the median over rounds, and every ratio is to dense measured in the same run.

FLOP ratios are analytic (forward; backward scales all kinds alike, 2x the forward):
dense 2*N*d_in*d_out; low-rank 2*N*r*(d_in+d_out); DYAD 2*N*2*d_in*d_out/n_dyad; SKL the dense product
with S plus building S, 2*k*r*k; Monarch and BTT 2*N*(their weight count), Monarch's padding included.

Each row also gets the update-size ratio of tests/test_structured.py: RMS of the change of the layer's
output on a fixed batch (64 x d_in, N(0,1)) after one step (SGD, and Adam's first step), over the dense
layer's, under `--param standard` and `--param structured` (CPU only; it does not depend on the device).

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.models.surgery import layer_setting  # noqa: E402
from laser_tool.models.parametrize import update_ratio  # noqa: E402
from laser_tool.models.surgery import make_layer  # noqa: E402

ROWS = 256 * 65
TINY = dict(reps=1, warmup=0, rows=256)  # --tiny: the same code paths in a few seconds (numbers mean nothing)
SHAPES = {"ffn-512x256": (512, 256), "ffn-256x1024": (256, 1024), "attn-out-384x256": (384, 256)}
KEEPS = (0.5, 0.25)
VARIANTS = ("lowrank", "skl", "dyad-it", "dyad-ot", "dyad-dt", "monarch", "btt")
# Speed goals set for the seed's settings (scale 0.5, n_dyad 8), i.e. these keep levels at these shapes.
GOALS = {"lowrank@0.5": 0.75, "skl@0.5": 1.3, "dyad-it@0.25": 0.6, "dyad-ot@0.25": 0.6, "dyad-dt@0.25": 0.6}


def build(name, d_in, d_out):
    """`dense` or VARIANT@KEEP, with the seed's (standard) init."""
    if name == "dense":
        return nn.Linear(d_in, d_out)
    variant, keep = name.split("@")
    kind, _, dyad_variant = variant.partition("-")
    return make_layer(kind, d_in, d_out, True, keep=float(keep), dyad_variant=dyad_variant or "it")


def make_layers(d_in, d_out):
    return {name: build(name, d_in, d_out) for name in ["dense"] + [f"{v}@{k:g}" for k in KEEPS for v in VARIANTS]}


def flops(kind, layer, n, d_in, d_out):
    kind = kind.split("@")[0]
    if kind == "dense":
        return 2 * n * d_in * d_out
    if kind == "lowrank":
        return 2 * n * layer.rank * (d_in + d_out)
    if kind == "skl":
        k = layer.sn * layer.sm
        return 2 * n * d_in * d_out + 2 * k * layer.rank * k
    if kind.startswith("dyad"):
        return 2 * n * 2 * d_in * d_out // layer.n_dyad
    if kind in ("monarch", "btt"):
        return 2 * n * sum(p.numel() for p in layer.parameters() if p.ndim > 1)
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


def bench_shape(d_in, d_out, reps, warmup, device, dtype=torch.float32, n_rows=ROWS):
    layers = {k: m.to(device=device, dtype=dtype) for k, m in make_layers(d_in, d_out).items()}
    x = torch.randn(n_rows, d_in, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(n_rows, d_out, device=device, dtype=dtype)
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
    dense_flops, dense_params = flops("dense", layers["dense"], n_rows, d_in, d_out), n_params(layers["dense"])
    out = {}
    for k in kinds:
        ms = statistics.median(times[k]) * 1e3
        row = dict(ms=round(ms, 3), time_ratio=round(ms / dense_ms, 3),
                   param_ratio=round(n_params(layers[k]) / dense_params, 4),
                   flop_ratio=round(flops(k, layers[k], n_rows, d_in, d_out) / dense_flops, 4),
                   params=n_params(layers[k]), setting=layer_setting(layers[k]),
                   ms_min=round(min(times[k]) * 1e3, 3), ms_max=round(max(times[k]) * 1e3, 3))
        if k != "dense" and device.type == "cpu":
            make = lambda: build(k, d_in, d_out)  # noqa: E731 (called at once, inside this iteration)
            row["update_ratio"] = {f"{opt}-{param}": round(update_ratio(make, d_in, d_out, param, opt), 3)
                                   for opt in ("sgd", "adam") for param in ("standard", "structured")}
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


def run_device(device, reps, warmup, dtype=torch.float32, n_rows=ROWS):
    result = dict(machine=machine_info(device), rows=n_rows, keeps=list(KEEPS), reps=reps,
                  warmup=warmup, dtype=str(dtype).replace("torch.", ""), shapes={})
    t0 = time.time()
    for name, (d_in, d_out) in SHAPES.items():
        result["shapes"][name] = bench_shape(d_in, d_out, reps, warmup, device, dtype, n_rows)
        print_table(device, name, result["shapes"][name], n_rows)
    result["wall_s"] = round(time.time() - t0, 1)
    if hasattr(os, "getloadavg"):
        result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def print_table(device, name, rows, n_rows=ROWS):
    print(f"\n[{device}] {name}  (rows {n_rows})")
    print(f"{'kind':<13} {'setting':<12} {'ms':>8} {'time':>7} {'params':>7} {'flops':>7} "
          f"{'upd sgd std/str':>16} {'upd adam std/str':>17}  goal")
    for k, r in rows.items():
        goal = f"<= {r['goal_time_ratio']}x {'met' if r['met'] else 'MISSED'}" if "met" in r else ""
        u = r.get("update_ratio")
        upd = (f"{u['sgd-standard']:>7.2f}/{u['sgd-structured']:<7.2f} "
               f"{u['adam-standard']:>8.2f}/{u['adam-structured']:<7.2f}") if u else " " * 34
        setting = ",".join(f"{a}={b}" for a, b in r["setting"].items())
        print(f"{k:<13} {setting:<12} {r['ms']:>8.2f} {r['time_ratio']:>6.3f}x {r['param_ratio']:>6.3f}x "
              f"{r['flop_ratio']:>6.3f}x {upd}  {goal}")
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed rounds per shape (median is reported)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1: on a shared 2-core machine more threads only add noise)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                    help="all = cpu, plus cuda when available")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="parameter and activation dtype (results of other dtypes are keyed DEVICE-DTYPE)")
    ap.add_argument("--out", help="results file (default bench/results/layers.json)")
    ap.add_argument("--rows", type=int, default=ROWS, help="rows of the input (default 256 images x 65 tokens)")
    args = tiny.parse(ap, argv, TINY, "bench/results/layers.json")
    args.out = args.out or str(Path(__file__).resolve().parent / "results" / "layers.json")

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        sys.exit("error: --device cuda asked for but torch sees no CUDA device")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

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
        doc["devices"][key] = run_device(dev, args.reps, args.warmup, getattr(torch, args.dtype), args.rows)
        if args.tiny:
            doc["devices"][key]["tiny"] = True
        doc["devices"][key]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(out, doc)      # after each device, so a later failure keeps what was measured
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
