"""A full sensitivity sweep (every Linear layer of vit-tiny x 8 ranks): cached vs LASER's naive way.

    .venv/bin/python bench/reduce.py [--device auto] [--val-size 5000] [--train-steps 300] [--run RUN]
                                     [--data-dir DIR] [--out bench/results/reduce.json]
    .venv/bin/python bench/reduce.py --tiny --data-dir DIR --out FILE   # smoke test, a few seconds on CPU

The model is the seed's vit-tiny (dim 512, depth 4, heads 6, dim_head 64, mlp 256) on Fashion-MNIST
(28x28x1, patch 4: 50 tokens), trained here for a few hundred steps unless --run names a trained run,
so that accuracies move with the rank. Both ways evaluate the same candidates on the same
validation split with the same batches:
  naive   per candidate: reload the checkpoint, SVD the layer, write the truncated matrix back,
          evaluate the whole model (LASER runs one process per candidate; we do not charge the
          process start or the data loading, only the reload).
  cached  laser_tool.search.sweep: one SVD per layer, activations entering the layer under test
          computed once, each candidate re-runs only the network from that layer on.
Both use exact SVDs (LASER uses a randomized one) so that their accuracies can be compared exactly.
rerun_fraction is the share of a forward pass the average cached candidate re-runs (stage costs
measured once): the ratio's floor when evaluation dominates, since a candidate cannot skip the
layers after the one under test. The naive way's extra cost per candidate (reload, SVD) is what
takes the ratio below it.
The results file keeps one entry per device; a run replaces only its own device's entry.
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from laser_tool.runs.checkpoint import load_run, save_model  # noqa: E402
from laser_tool.data import load_dataset  # noqa: E402
from laser_tool.models.evaluate import evaluate  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.models import ModelSpec, build_model, count_params  # noqa: E402
from laser_tool.device import resolve_device  # noqa: E402
from laser_tool.posthoc.reduce import run_data  # noqa: E402
from laser_tool.posthoc.search import naive_sweep, staged, sweep  # noqa: E402
from laser_tool.models.surgery import slots  # noqa: E402

# LASER's rates 1..9.9 give kept fractions rho = 1 - 0.1*rate; eight of them.
GRID = ["rho:0.9", "rho:0.8", "rho:0.6", "rho:0.4", "rho:0.2", "rho:0.1", "rho:0.05", "rho:0.02"]
SPEC = dict(arch="vit-tiny", image_size=28, patch_size=4, channels=1, num_classes=10)
# --tiny: the same code paths with a small ViT (dim 64, depth 2, 7x7 patches), 100 validation images,
# two training steps and three ranks per layer
TINY = dict(val_size=100, train_steps=2, batch_size=50)
TINY_SPEC = dict(SPEC, patch_size=7, dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128)
TINY_GRID = GRID[::3]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def rerun_fraction(model, grid, images, batch_size, device) -> float:
    """The share of a forward pass the average cached candidate re-runs: each stage is timed once
    over the validation batches, and a candidate in stage k costs the stages from k on."""
    st = staged(model)
    clock = time.time if device.type == "cuda" else time.process_time
    state = [st.prefix(images[i:i + batch_size].to(device).float().div_(255))
             for i in range(0, len(images), batch_size)]
    cost = []
    for _, fn in st.stages:
        sync(device)
        t = clock()
        state = [fn(x) for x in state]
        sync(device)
        cost.append(clock() - t)
    tail = [sum(cost[st.index[n]:]) * len(rs) for n, rs in grid.items()]
    return sum(tail) / (sum(cost) * sum(len(rs) for rs in grid.values()))


def train_run(root: Path, data_dir, val_size, steps, device, spec=SPEC) -> Path:
    """A quickly trained vit-tiny run directory (AdamW, no augmentation)."""
    spec = ModelSpec(**spec)
    cfg = dict(model=spec.to_dict(), dataset="fashion-mnist", data_dir=data_dir, val_size=val_size,
               train_subset=None, seed=0)
    sp = load_dataset("fashion-mnist", data_dir, False, val_size, 0, None)
    torch.manual_seed(0)
    model = build_model(spec).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(sp.train_x), (128,), generator=g)
        x, y = sp.train_x[i].to(device).float() / 255, sp.train_y[i].to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    run = root / "bench-vit-tiny"
    run.mkdir(parents=True, exist_ok=True)
    save_model(run / "model.safetensors", model.eval(), cfg)
    atomic_write_json(run / "config.json", cfg)
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--run", help="Use this trained vit-tiny run instead of training one.")
    ap.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual places).")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (1 avoids OpenMP spin-waiting "
                    "on a machine shared with other processes).")
    ap.add_argument("--out", help="results file (default bench/results/reduce.json)")
    a = tiny.parse(ap, argv, TINY, "bench/results/reduce.json")
    a.out = a.out or str(Path(__file__).parent / "results" / "reduce.json")
    grid_specs = TINY_GRID if a.tiny else GRID
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    tmp = tempfile.TemporaryDirectory()
    t = time.time()
    run = Path(a.run) if a.run else train_run(Path(tmp.name), a.data_dir, a.val_size, a.train_steps, device,
                                              TINY_SPEC if a.tiny else SPEC)
    train_s = time.time() - t
    model, cfg = load_run(run, device)
    sp = run_data(cfg, a.data_dir)
    names = [s.name for s in slots(model)]
    _, base_acc = evaluate(model, sp.val_x, sp.val_y, a.batch_size, device)
    sync(device)
    t = time.time()
    evaluate(model, sp.val_x, sp.val_y, a.batch_size, device)
    sync(device)
    eval_s = time.time() - t

    # Wall time, plus this process's CPU time: on a shared CPU machine the load of other processes
    # inflates wall time unevenly, CPU time much less.
    t, c = time.time(), time.process_time()
    cached, _ = sweep(model, names, grid_specs, sp.val_x, sp.val_y, a.batch_size, device)
    sync(device)
    cached_s, cached_cpu = time.time() - t, time.process_time() - c
    grid = {n: [c["rank"] for c in rows] for n, rows in cached.items()}
    t, c = time.time(), time.process_time()
    naive = naive_sweep(run, grid, sp.val_x, sp.val_y, a.batch_size, device)
    sync(device)
    naive_s, naive_cpu = time.time() - t, time.process_time() - c

    rerun = rerun_fraction(model, grid, sp.val_x, a.batch_size, device)
    mismatches = [dict(layer=n, rank=c["rank"], cached=c["val_acc"], naive=d["val_acc"])
                  for n in names for c, d in zip(cached[n], naive[n]) if c["val_acc"] != d["val_acc"]]
    n_cand = sum(len(v) for v in grid.values())
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    m = ModelSpec.from_dict(cfg["model"]).resolved()
    desc = (f"{m.arch} dim {m.dim} depth {m.depth} heads {m.heads} mlp {m.mlp_dim}, "
            f"{cfg['dataset']} {m.image_size}x{m.image_size}x{m.channels}, patch {m.patch_size}")
    entry = dict(device=dev_name, torch=torch.__version__, model=desc,
                 params=count_params(model), layers=len(names), grid=grid_specs, candidates=n_cand,
                 val_images=len(sp.val_x), batch_size=a.batch_size, base_val_acc=base_acc,
                 train_steps=0 if a.run else a.train_steps, train_seconds=round(train_s, 2),
                 full_eval_seconds=round(eval_s, 3), cached_seconds=round(cached_s, 2),
                 naive_seconds=round(naive_s, 2), ratio=round(cached_s / naive_s, 4),
                 cached_cpu_seconds=round(cached_cpu, 2), naive_cpu_seconds=round(naive_cpu, 2),
                 cpu_time_ratio=round(cached_cpu / naive_cpu, 4), rerun_fraction=round(rerun, 4),
                 identical_accuracies=not mismatches, mismatches=mismatches,
                 val_acc_range=[min(c["val_acc"] for r in cached.values() for c in r),
                                max(c["val_acc"] for r in cached.values() for c in r)],
                 table={n: [[c["rank"], c["val_acc"]] for c in rows] for n, rows in cached.items()})
    if a.tiny:
        entry["tiny"] = True
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("about", __doc__.strip().splitlines()[0])
    results.setdefault("results", {})[device.type] = entry
    atomic_write_json(out, results)
    print(json.dumps({k: v for k, v in entry.items() if k != "table"}, indent=2))


if __name__ == "__main__":
    main()
