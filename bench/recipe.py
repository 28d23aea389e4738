"""The quick preset's recipe, searched on validation at a fixed training-FLOP budget (issue 28, item 1).

    .venv/bin/python bench/recipe.py --runs /scratch/recipe-runs [--threads 1] [--stop-after MIN]
                                     [--data-dir DIR] [--out bench/results/recipe.json]
    .venv/bin/python bench/recipe.py --tiny --data-dir DIR --out FILE   # smoke test, seconds

Rounds 1-2 keep the model (the quick preset's: vit-tiny dim 128, depth 3, 7x7 patches) and its 2 epochs,
so every point costs the same training FLOPs (analysis/costs.py counts them from each run's config; a
point over BUDGET_FLOPS could not be chosen):
  1. one factor at a time around today's recipe (the preset): each value of FACTORS with every other
     setting the preset's; the baseline itself is a point;
  2. one combined round: every factor at its best value on validation, the same with the lr halved and
     doubled (lr interacts with everything), and only the factors that beat the baseline by MARGIN.
One seed (0) per point and the default split (5,000 validation images); the chosen point of rounds 1-2 is
the best on validation, and only its test figure was read. Once the results file (--out) holds rounds
1-2 complete, they are history: read from it, never retrained (their runs may be gone).
  3. what a FLOP buys (recipe_points.py): model shapes at the baseline's training FLOPs (more epochs for
     a cheaper model), the best two at lr x2 and x0.5; then the baseline and the 3 best points of rounds
     1-3 at seeds 0, 1, 2, the choice the best mean validation accuracy, and only then the test figures
     of the chosen point and of the baseline at the same seeds.
Each run's final.json holds a test accuracy (the trainer scores every run), so the runs go into --runs, a
scratch folder outside the repo, and this script reads nothing of a search point's but its validation
accuracy, seconds, params and config (for the FLOPs); the trainer's "test acc" line is kept out of the log.

Rerunning resumes: a finished point is read, not retrained (train() returns at once), an interrupted one
continues. --stop-after starts no run after that many minutes; the results then say what is missing, and
no test figure is read until the plan is complete (--finish: rounds 1-2 choose among what is done; round
3 and the seeds train nothing more and choose only when complete).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402
from recipe_points import (BASE, BUDGET_FLOPS, FINALISTS, QUICK, SEEDS, SHAPES, Round3, Runs,  # noqa: E402
                           name_of, paired_on_val, tables, test_figure, train_settings)

from laser_tool.device import cpu_name  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402

# The values tried besides the baseline's. `lr` is the peak lr at batch 128; another batch size scales
# it by sqrt(batch / 128), the square-root rule for Adam (Malladi et al. 2022), so the batch points
# measure the batch size and not an lr moved with it. augment: the dataset's default (Fashion-MNIST:
# 2-pixel pad-and-crop, horizontal flip at 0.5, data.DEFAULT_AUGMENT). dropout: the FFN's and the
# attention output's (the model's `dropout`).
FACTORS = {
    "lr": [1.5e-3, 6e-3],
    "batch_size": [64, 256],
    "warmup_epochs": [0.1, 1.0],
    "weight_decay": [0.0, 0.15],
    "label_smoothing": [0.1],
    "augment": [True],
    "dropout": [0.1],
}
# A factor whose best value beats the baseline on validation by at least this much (about the binomial
# standard error of one point at 5,000 images) makes the "clear gains only" combination.
MARGIN = 0.005
# --tiny: a few hundred images, two factors (the combined round still runs), two shapes, two finalists at
# two seeds, into a folder beside --out
TINY = dict(train_subset=256, val_size=100, factors="lr,label_smoothing", epochs=2, shapes="p7-dim64,p4-dim48",
            finalists=2, seeds="0,1")


class Search:
    """The points trained so far, in order, and whether more may start."""

    def __init__(self, runs: Runs):
        self.a, self.runs, self.points, self.missing, self.combos = runs.a, runs, [], runs.missing, {}

    def point(self, recipe: dict, round_: str, factor=None):
        """Train (or read) one point; None when it may not start (past --stop-after, or --finish)."""
        name = name_of(recipe)
        known = next((p for p in self.points if p["name"] == name), None)
        if known:
            return known
        run_dir, view = Path(self.a.runs) / name, self.runs.get(train_settings(recipe, self.a))
        if view is None:
            return None
        p = dict(name=name, round=round_, factor=factor, recipe=recipe, **view)
        p["within_budget"] = self.a.tiny or p["flops"] <= BUDGET_FLOPS
        p["val_vs_base"] = paired_on_val(run_dir, Path(self.a.runs) / "base") if name != "base" else None
        self.points.append(p)
        self.write()
        return p

    def one_factor(self, factors) -> dict:
        """Round 1; returns {factor: its best value on validation, the baseline's value included}."""
        base = self.point(BASE, "one-factor")
        best = {}
        for factor in factors:
            scored = [(base["val_acc"], BASE[factor])] if base else []
            for value in FACTORS[factor]:
                p = self.point(dict(BASE, **{factor: value}), "one-factor", factor)
                if p:
                    scored.append((p["val_acc"], value))
            # ties go to the baseline's value (listed first): change nothing without a gain
            best[factor] = max(scored, key=lambda s: s[0], default=(None, BASE[factor]))
        return best

    def combined(self, best: dict) -> None:
        """Round 2: the best of every factor; its lr halved and doubled; the clear gains alone. A
        combination that is already a point (the baseline, a round-1 point) is not trained twice."""
        if self.missing:  # round 1 unfinished: its best values are not known yet
            self.missing.append("the combined round")
            return
        base_acc = next(p["val_acc"] for p in self.points if p["name"] == "base")
        every = dict(BASE, **{f: v for f, (_, v) in best.items()})
        clear = dict(BASE, **{f: v for f, (acc, v) in best.items() if acc - base_acc >= MARGIN})
        combos = {"every factor's best": every, "every factor's best, lr x0.5": dict(every, lr=every["lr"] / 2),
                  "every factor's best, lr x2": dict(every, lr=every["lr"] * 2),
                  f"only the gains >= {MARGIN * 100:g} pp": clear}
        for label, recipe in combos.items():
            if self.point(recipe, "combined"):
                self.combos[label] = name_of(recipe)

    def write(self, chosen=None):
        a = self.a
        doc = dict(
            about=__doc__.split("\n")[0], budget_flops=BUDGET_FLOPS, baseline=BASE, factors=FACTORS,
            lr_rule="lr is the peak at batch 128; batch B trains at lr * sqrt(B / 128)", margin=MARGIN,
            fixed=dict(preset="quick", epochs=a.epochs, seed=0, val_size=a.val_size or 5000, seeds_per_point=1),
            machine=dict(processor=cpu_name(), cpu_count=os.cpu_count(), torch=torch.__version__,
                         threads_per_run=torch.get_num_threads(), runs_at_once=1),
            runs=str(a.runs), points=self.points, combinations=self.combos, missing=self.missing,
            complete=not self.missing, chosen=chosen)
        if a.tiny:
            doc["tiny"] = True
        atomic_write_json(a.out, doc)


def choose(search: Search) -> str:
    """The best point on validation within the budget (the first of equals: the plan lists the baseline
    first); its test figure is read and written on its entry alone."""
    eligible = [p for p in search.points if p["within_budget"]]
    chosen = max(eligible, key=lambda p: p["val_acc"])
    chosen.update(test_figure(Path(search.a.runs) / chosen["name"]))
    return chosen["name"]


def table(doc: dict) -> str:
    """The points as docs/recipe.md's markdown table (validation only; the chosen point's test beside it)."""
    rows = ["| point | round | lr used | val acc | vs base on val, pp (paired 95%, McNemar p) | training FLOPs "
            "| train s |", "|---|---|---|---|---|---|---|"]
    for p in doc["points"]:
        mark = f" **chosen, test {100 * p['test_acc']:.2f}%**" if "test_acc" in p else ""
        v = p["val_vs_base"]
        paired = f"{v['diff_pp']:+.2f} ± {v['half_width_pp']:.2f} (p {v['mcnemar_p']:.2g})" if v else ""
        rows.append(f"| `{p['name']}`{mark} | {p['round']} | {p['lr_used']:.3g} | {100 * p['val_acc']:.2f}% "
                    f"| {paired} | {p['flops']:.4g} | {p['seconds']:.0f} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", help="scratch folder for the points' runs, outside the repo (--tiny: beside --out)")
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training (1)")
    ap.add_argument("--stop-after", type=float, help="start no run after this many minutes")
    ap.add_argument("--finish", action="store_true",
                    help="train nothing more: choose among the finished points and read the chosen one's test")
    ap.add_argument("--factors", default=",".join(FACTORS), help="the factors searched (all)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="round 3's shapes (all)")
    ap.add_argument("--finalists", type=int, default=FINALISTS, help="points besides the baseline given seeds (3)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="the finalists' seeds (0,1,2)")
    ap.add_argument("--epochs", type=float, default=QUICK["epochs"], help=argparse.SUPPRESS)
    ap.add_argument("--train-subset", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--val-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="results file (default bench/results/recipe.json)")
    a = tiny.parse(ap, argv, TINY, "bench/results/recipe.json")
    a.out = a.out or str(Path(__file__).parent / "results" / "recipe.json")
    if a.runs is None:
        if not a.tiny:
            ap.error("--runs DIR is needed: a scratch folder outside the repo (its runs hold test figures)")
        a.runs = str(Path(a.out).parent / "recipe-runs")
    torch.set_num_threads(a.threads)  # one training at a time, on this many threads
    runs = Runs(a)
    doc = history(a)
    if doc is None:
        search = Search(runs)
        search.combined(search.one_factor(a.factors.split(",")))
        if search.missing and not a.finish:
            print(f"stopped before {len(search.missing)} point(s): {', '.join(search.missing)}; no test figure "
                  f"read (rerun to go on, or --finish to choose among the finished points)", file=sys.stderr)
            search.write()
            return
        search.write(chosen=choose(search))
        doc = json.loads(Path(a.out).read_text())
        print(table(doc))
    else:
        print(f"rounds 1-2: read from {a.out} (history; chosen there: {doc['chosen']})", file=sys.stderr)
    r3 = Round3(runs, doc, a.shapes.split(","))
    r3.search()
    r3.seeds([int(s) for s in a.seeds.split(",")], a.finalists)
    if runs.missing:
        print(f"stopped before {len(runs.missing)} run(s): {', '.join(runs.missing)}; no test figure read "
              f"(rerun to go on)", file=sys.stderr)
    print(tables(json.loads(Path(a.out).read_text())))


def history(a):
    """The results file's rounds 1-2 when complete there (with --tiny: a tiny file's only), else None."""
    try:
        doc = json.loads(Path(a.out).read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("complete") and doc.get("chosen") and bool(doc.get("tiny")) == a.tiny else None


if __name__ == "__main__":
    main()
