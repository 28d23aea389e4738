"""Cost of a progressive cut against one training epoch of the quick model. Goal: a cut < 5% of an epoch.

    python bench/progressive.py [--run RUN] [--data-dir DIR] [--reps 5] [--out bench/results/progressive.json]
    python bench/progressive.py --tiny --data-dir DIR --out FILE   # smoke test: 2 steps, 1 rep per method

Measured in one process, so that the machine's load (shared here) weighs on both alike:
  epoch  one training epoch of the quick preset's model on Fashion-MNIST (429 optimizer steps of 128
         images: forward, backward, clip, AdamW; the trainer's BatchLoader), dense
  cut    Progressive.cut of that trained model, FFN layers to params:0.5 as the quick study's row D:
         selection, SVD (or calibration + whitening), factored layers, the optimizer rebuild that
         carries the moments over; `--reps` times per method on fresh copies, median
ratio = cut / epoch. With --run (a finished progressive run) the cut time the trainer recorded there
and its epoch times are added for reference; they come from different moments of a shared machine.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402
from laser_tool.data import Augment, BatchLoader, load_dataset  # noqa: E402
from laser_tool.data import fit_model  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.models import build_model, count_params  # noqa: E402
from laser_tool.study import train_config  # noqa: E402
from trainers.optim import make_optimizer  # noqa: E402
from trainers.progressive import Progressive  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PLAN = dict(reduce_at="1", reduce_to="params:0.5", reduce_layers=["*.ffn.*"])
# --tiny: the same code paths on a 256-image training set (2 steps) and 100 validation images
TINY = dict(reps=1, val_size=100, train_subset=256)


def in_training(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "final.json").read_text())
    (cut,) = config["progressive"]["cuts"]
    dense = [e["seconds"] for e in epochs if e["epoch"] <= cut["epoch"]]
    every = [e["seconds"] for e in epochs]
    return dict(run=str(run), cut_seconds=cut["seconds"], cut_step=cut["step"], cut_epoch=cut["epoch"],
                epoch_seconds=[round(s, 2) for s in every], dense_epoch_seconds_mean=statistics.mean(dense),
                ratio_to_dense_epoch=cut["seconds"] / statistics.mean(dense),
                ratio_to_mean_epoch=cut["seconds"] / statistics.mean(every),
                params_before=cut["params_before"], params_after=cut["params_after"],
                ranks={l["name"]: l["rank_after"] for l in cut["layers"]}, test_acc=final["test_acc"],
                final_params=final["params"])


def quick(method="svd"):
    return train_config("quick", dict(PLAN, reduce_method=method, device="cpu"))


def one_epoch(splits):
    """(seconds, model, optimizer) of one dense training epoch of the quick model."""
    cfg = quick()
    torch.manual_seed(0)
    model = build_model(fit_model(cfg.model, splits))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    loader = BatchLoader(splits.train_x, splits.train_y, cfg.batch_size, shuffle=True, drop_last=True,
                         augment=Augment(), seed=0, device=torch.device("cpu"))
    model.train()
    t0 = time.perf_counter()
    for x, y in loader.epoch(0):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, model, opt, len(loader)


def time_cuts(method: str, model, opt, splits, spe: int, reps: int) -> list:
    cfg = quick(method)
    spec = fit_model(cfg.model, splits)
    times = []
    for _ in range(reps):
        m = copy.deepcopy(model)
        o = make_optimizer(m, cfg.lr, cfg.weight_decay)
        o.load_state_dict(opt.state_dict())
        prog = Progressive(cfg, spec, spe, splits, torch.device("cpu"))
        counters = {"global_step": spe, "best_val_acc": 0.0, "best_epoch": 1}
        config = {"model": spec.to_dict()}
        prog.start(m, counters, config)
        assert prog.due(counters)
        t0 = time.perf_counter()
        prog.cut(m, o, counters, config, None, is_main=False)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="A finished progressive run, for the cut time its trainer recorded.")
    ap.add_argument("--data-dir", help="Fashion-MNIST folder (default: the system's).")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, help="results file (default bench/results/progressive.json)")
    ap.add_argument("--val-size", type=int, help="validation images (default: the dataset's, 5000)")
    ap.add_argument("--train-subset", type=int, help="training images (default: all)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    args = tiny.parse(ap, argv, TINY, "bench/results/progressive.json")
    args.out = args.out or RESULTS / "progressive.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    splits = load_dataset("fashion-mnist", args.data_dir, False, args.val_size, 0, args.train_subset)
    epoch, model, opt, spe = one_epoch(splits)
    result = dict(epoch_seconds=round(epoch, 2), steps_per_epoch=spe)
    for method in ("svd", "whiten"):
        t = time_cuts(method, model, opt, splits, spe, args.reps)
        result[f"cut_{method}"] = dict(seconds=[round(s, 4) for s in t], median=round(statistics.median(t), 4),
                                       ratio_to_epoch=round(statistics.median(t) / epoch, 5))
    if args.run:
        result["recorded_in_training"] = in_training(args.run)
    result.update(goal="cut < 5% of one epoch",
                  goal_met=all(result[f"cut_{m}"]["ratio_to_epoch"] < 0.05 for m in ("svd", "whiten")),
                  device=f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)",
                  load_average_at_start=round(load, 2), load_average_at_end=round(os.getloadavg()[0], 2),
                  torch=torch.__version__,
                  model="quick preset: vit-tiny dim 128 depth 3 heads 4 mlp 256 patch 7, Fashion-MNIST",
                  params_dense=count_params(model))
    if args.tiny:
        result["tiny"] = True
    out = {"about": __doc__.splitlines()[0], "results": {"cpu": result}}
    atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
