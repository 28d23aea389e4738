"""Cost of a progressive cut against one training epoch of the quick model. Goal: a cut < 5% of an epoch.

    python bench/progressive.py [--run RUN] [--data-dir DIR] [--reps 5] [--out bench/results/progressive.json]

1. In training: a real `laser-tool train --preset quick --reduce-at 1 --reduce-to params:0.5
   --reduce-layer '*.ffn.*'` (or the finished run --run names, e.g. the quick study's D row): the cut
   time the trainer recorded (selection, SVD, factored layers, optimizer rebuild; not the file
   writes) against the epochs' times in metrics.jsonl (the cut falls inside epoch 2's timed loop).
2. Stand-alone, both methods: the same cut of the quick model (after one AdamW step, so there are
   moments to carry over), `--reps` times each, median; whiten includes its calibration pass over
   8 x 128 training images.
The CPU threads are torch's default; the machine's load at the time is recorded.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from laser_tool.data import load_dataset  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.models import build_model, count_params  # noqa: E402
from laser_tool.study import train_config  # noqa: E402
from trainers.optim import make_optimizer  # noqa: E402
from trainers.progressive import Progressive  # noqa: E402
from trainers.train import fit_spec_to_data, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PLAN = dict(reduce_at="1", reduce_to="params:0.5", reduce_layers=["*.ffn.*"])


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


def stand_alone(method: str, splits, reps: int) -> list:
    cfg = train_config("quick", dict(PLAN, reduce_method=method, device="cpu"))
    spec = fit_spec_to_data(cfg.model, splits)
    spe = (len(splits.train_x) // cfg.batch_size)
    torch.manual_seed(0)
    model = build_model(spec)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    x, y = splits.train_x[:cfg.batch_size].float().div(255), splits.train_y[:cfg.batch_size]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    times = []
    for _ in range(reps):
        m, o = copy.deepcopy(model), None
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="A finished progressive quick run (default: train one).")
    ap.add_argument("--data-dir", help="Fashion-MNIST folder (default: the system's).")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "progressive.json")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    run = args.run
    tmp = None
    if run is None:
        tmp = tempfile.TemporaryDirectory()
        cfg = train_config("quick", dict(PLAN, device="cpu", out=tmp.name, name="progressive",
                                         **({"data_dir": args.data_dir} if args.data_dir else {})))
        run = train(cfg, progress=False)
    result = dict(in_training=in_training(run))
    splits = load_dataset("fashion-mnist", args.data_dir, False, None, 0, None)
    epoch = result["in_training"]["dense_epoch_seconds_mean"]
    for method in ("svd", "whiten"):
        t = stand_alone(method, splits, args.reps)
        result[f"stand_alone_{method}"] = dict(seconds=[round(s, 4) for s in t], median=statistics.median(t),
                                               ratio_to_dense_epoch=statistics.median(t) / epoch)
    result.update(goal="cut < 5% of one epoch", goal_met=result["in_training"]["ratio_to_dense_epoch"] < 0.05
                  and all(result[f"stand_alone_{m}"]["ratio_to_dense_epoch"] < 0.05 for m in ("svd", "whiten")),
                  device=f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)",
                  load_average_at_start=round(load, 2), torch=torch.__version__,
                  model="quick preset: vit-tiny dim 128 depth 3 heads 4 mlp 256 patch 7, Fashion-MNIST",
                  params_dense=count_params(build_model(fit_spec_to_data(train_config("quick", {}).model, splits))))
    out = {"about": __doc__.splitlines()[0], "results": {"cpu": result}}
    atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
