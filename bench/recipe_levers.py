"""Round 4 of the quick recipe search (issue 28): the trainer's levers around round 3's chosen point.

    .venv/bin/python bench/recipe_levers.py --runs /work/scratch/recipe3-runs --data-dir DIR [--worker K/N]
    .venv/bin/python bench/recipe_levers.py --runs ... --finish     # choose; read the chosen point's test

Round 3 (recipe.py) chose patch 7, dim 64, MLP 128, 4 heads of 16, at the baseline's training FLOPs
(7.2867 epochs) and lr 6e-3, on validation over 3 seeds. This round tries, at seed 0 and the same FLOPs,
what the trainer could not do then: an EMA of the weights (`--ema`), the lr schedule's shape (`--schedule
linear | wsd`), a higher lr (6e-3 was the top of round 3's grid) and a narrower model trained longer
(dim 48). Any point that beats the chosen one's seed-0 validation accuracy is trained at seeds 1 and 2;
the choice is the best mean validation accuracy over the 3 seeds (round 3's point among them, first among
equals). Only then is the chosen point's test figure read. `--worker K/N` trains every N-th point from
the K-th (two workers use the two cores); a finished run is read, never retrained.
"""
import argparse
import json
import sys
from pathlib import Path
from statistics import mean

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_points import BASE, SHAPES, Runs, search_view, test_figure  # noqa: E402

from laser_tool.fileio import atomic_write_json  # noqa: E402

SHAPES["p7-dim48"] = dict(dim=48, mlp_dim=96, heads=4, dim_head=12)
CHOSEN = dict(shape="p7-dim64", epochs=7.2867, lr=6e-3)  # round 3's choice (bench/results/recipe.json)
# The levers, each a change to CHOSEN; dim 48 trains the FLOPs of dim 64's 7.2867 epochs (recipe_points'
# shape_epochs: the most whole steps at or under them).
LEVERS = {
    "ema0.999": dict(ema=0.999),
    "linear": dict(schedule="linear"),
    "wsd": dict(schedule="wsd"),
    "lr0.012": dict(lr=1.2e-2),
    "dim48": dict(shape="p7-dim48", epochs=12.2261),
    "dim48-lr0.012": dict(shape="p7-dim48", epochs=12.2261, lr=1.2e-2),
}
SEEDS = (0, 1, 2)


def settings(name: str, change: dict, seed: int, a) -> dict:
    p = dict(CHOSEN, **change)
    extra = {k: v for k, v in p.items() if k in ("ema", "schedule")}
    run = f"r4-{name}" + (f"-seed{seed}" if seed else "")
    return dict(BASE, **SHAPES[p["shape"]], **extra, lr=p["lr"], epochs=p["epochs"], seed=seed, device="cpu",
                data_dir=a.data_dir, out=a.runs, name=run)


def round3_name(seed: int) -> str:
    return "p7-dim64-e7.2867-lr0.006" + (f"-seed{seed}" if seed else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--worker", default="0/1", help="K/N: train every N-th point from the K-th")
    ap.add_argument("--finish", action="store_true", help="train nothing: choose and read the chosen test figure")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recipe_levers.json"))
    a = ap.parse_args(argv)
    a.stop_after, a.val_size, a.train_subset = None, None, None
    k, n = map(int, a.worker.split("/"))
    torch.set_num_threads(1)
    runs = Runs(a)
    base0 = search_view(Path(a.runs) / round3_name(0))["val_acc"]
    for i, name in enumerate(LEVERS):  # seed 0 of every lever, this worker's share
        if i % n == k and not a.finish:
            runs.get(settings(name, LEVERS[name], 0, a))
    if a.finish:
        views = {(name, 0): search_view(Path(a.runs) / settings(name, LEVERS[name], 0, a)["name"]) for name in LEVERS}
        ahead = [name for name in LEVERS if views[name, 0]["val_acc"] > base0]
        for name in ahead:
            for seed in SEEDS[1:]:
                views[name, seed] = runs.get(settings(name, LEVERS[name], seed, a))
        finalists = {"round 3's point": [search_view(Path(a.runs) / round3_name(s))["val_acc"] for s in SEEDS]}
        finalists.update({name: [views[name, s]["val_acc"] for s in SEEDS] for name in ahead})
        chosen = max(finalists, key=lambda f: mean(finalists[f]))  # dicts keep order: round 3's first
        runs_of = {f: [round3_name(s) if f == "round 3's point" else settings(f, LEVERS[f], s, a)["name"] for s in SEEDS]
                   for f in finalists}
        doc = dict(about=__doc__.split("\n")[0], chosen_before=CHOSEN, levers=LEVERS, round3_seed0_val=base0,
                   points={name: views[name, 0] for name in LEVERS},
                   finalists={f: dict(val=v, val_mean=mean(v), runs=runs_of[f]) for f, v in finalists.items()},
                   chosen=chosen)
        atomic_write_json(a.out, doc)  # the choice is on disk before any test figure is read
        tests = [test_figure(Path(a.runs) / r)["test_acc"] for r in runs_of[chosen]]
        doc["chosen_test"] = dict(per_seed=tests, mean=mean(tests))
        atomic_write_json(a.out, doc)
        print(json.dumps(dict(points={k: v["val_acc"] for k, v in doc["points"].items()},
                              finalists={f: d["val_mean"] for f, d in doc["finalists"].items()},
                              chosen=chosen, test=doc["chosen_test"]), indent=1))


if __name__ == "__main__":
    main()
