"""The quick preset's recipe, searched on validation at a fixed training-FLOP budget (issue 28, item 1).

    .venv/bin/python bench/recipe.py --runs /scratch/recipe-runs [--threads 1] [--stop-after MIN]
                                     [--data-dir DIR] [--out bench/results/recipe.json]
    .venv/bin/python bench/recipe.py --tiny --data-dir DIR --out FILE   # smoke test, seconds

The model is the quick preset's (vit-tiny dim 128, depth 3, 7x7 patches) and every point trains it the
preset's 2 epochs, so every point costs the same training FLOPs (analysis/costs.py counts them from each
run's config; a point over BUDGET_FLOPS could not be chosen). The search:
  1. one factor at a time around today's recipe (the preset): each value of FACTORS with every other
     setting the preset's; the baseline itself is a point;
  2. one combined round: every factor at its best value on validation, the same with the lr halved and
     doubled (lr interacts with everything), and only the factors that beat the baseline by MARGIN.
One seed (0) per point and the default split (5,000 validation images). The chosen point is the best on
validation of every point trained; only then, and only for it, is the test set's figure read. Each run's
final.json holds a test accuracy (the trainer scores every run), so the runs go into --runs, a scratch
folder outside the repo, and this script reads nothing of a search point's but its validation accuracy,
its training seconds and its config (for the FLOPs).

Rerunning resumes: a finished point is read, not retrained (train() returns at once), an interrupted one
continues. --stop-after starts no point after that many minutes; the results then say what is missing,
and no test figure is read until the plan is complete (or --finish says to choose among what is done).
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from laser_tool.analysis.costs import trained_flops  # noqa: E402
from laser_tool.analysis.stats import mcnemar_exact, paired_counts, paired_diff_interval  # noqa: E402
from laser_tool.device import cpu_name  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.runs.predictions import load_predictions  # noqa: E402
from laser_tool.runs.safety import finished  # noqa: E402
from laser_tool.runs.schema import read_config, read_final  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.presets import PRESETS  # noqa: E402

QUICK = PRESETS["quick"]
BUDGET_FLOPS = 4.9e12  # issue 28: today's 2-epoch quick baseline trains 4.88e12 FLOPs
# The preset's recipe, as the settings the search moves (label smoothing: TrainConfig's default).
BASE = dict(lr=QUICK["lr"], batch_size=QUICK["batch_size"], warmup_epochs=QUICK["warmup_epochs"],
            weight_decay=QUICK["weight_decay"], label_smoothing=TrainConfig.label_smoothing,
            augment=QUICK["augment"], dropout=QUICK["model"]["dropout"])
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
SHORT = dict(lr="lr", batch_size="bs", warmup_epochs="wu", weight_decay="wd", label_smoothing="ls",
             augment="aug", dropout="do")
# --tiny: a few hundred images, two factors (the combined round still runs), into a folder beside --out
TINY = dict(train_subset=256, val_size=100, factors="lr,label_smoothing", epochs=2)


def name_of(recipe: dict) -> str:
    """A run name from what differs from the baseline: the same recipe always lands in the same run."""
    diff = [f"{SHORT[k]}{'' if isinstance(v, bool) else f'{v:g}'}" for k, v in recipe.items() if v != BASE[k]]
    return "-".join(diff) or "base"


def train_settings(recipe: dict, a) -> dict:
    """build_config's settings for a recipe: the quick preset, the recipe, lr scaled to the batch."""
    lr = recipe["lr"] * (recipe["batch_size"] / BASE["batch_size"]) ** 0.5
    return dict(recipe, lr=lr, epochs=a.epochs, seed=0, device="cpu", data_dir=a.data_dir, val_size=a.val_size,
                train_subset=a.train_subset, out=a.runs, name=name_of(recipe))


def search_view(run_dir: Path) -> dict:
    """What the search may know of a finished point: validation accuracy, seconds, FLOPs; never its test."""
    final, why = read_final(run_dir)
    config, why_config = read_config(run_dir)
    if why or why_config:
        raise RuntimeError(f"{run_dir}: {why or why_config}")
    return dict(val_acc=final["val_acc"], seconds=round(final["train_seconds"], 1),
                flops=trained_flops(config), lr_used=config["lr"])


def paired_on_val(run_dir: Path, base_dir: Path) -> dict:
    """A point minus the baseline on the same validation images (their predictions.safetensors' `val`
    part alone): the difference in pp, its 95% half-width and the exact McNemar p."""
    (mine, _), (base, _) = load_predictions(run_dir), load_predictions(base_dir)
    n, b, c = paired_counts(mine.correct("val"), base.correct("val"))
    diff, half = paired_diff_interval(n, b, c)
    return dict(diff_pp=round(100 * diff, 2), half_width_pp=round(100 * half, 2),
                mcnemar_p=float(f"{mcnemar_exact(b, c):.3g}"))


def test_figure(run_dir: Path) -> dict:
    """The chosen point's test accuracy (best-by-validation checkpoint): the only test figure read."""
    final, _ = read_final(run_dir)
    return dict(test_acc=final["test_acc"])


class HideTestFigures:
    """stderr without the trainer's closing line ("RUN: test acc ..."): the search's log shows the people
    running it no test figure of a search point either."""

    def __init__(self, stream):
        self.stream, self.dropped = stream, False

    def write(self, s: str) -> int:
        if "test acc" in s or (self.dropped and s == "\n"):  # print() writes its newline apart
            self.dropped = "test acc" in s
        else:
            self.stream.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()

    def isatty(self) -> bool:  # no progress bars in a log
        return False


class Search:
    """The points trained so far, in order, and whether more may start."""

    def __init__(self, a):
        self.a, self.points, self.missing, self.combos = a, [], [], {}
        self.deadline = time.time() + 60 * a.stop_after if a.stop_after else None

    def point(self, recipe: dict, round_: str, factor=None):
        """Train (or read) one point; None when it may not start (past --stop-after, or --finish)."""
        name = name_of(recipe)
        known = next((p for p in self.points if p["name"] == name), None)
        if known:
            return known
        run_dir = Path(self.a.runs) / name
        if not finished(run_dir):
            late = self.deadline is not None and time.time() > self.deadline
            if self.a.finish or late:
                self.missing.append(name)
                return None
            from trainers.train import train  # the trainer, as `laser-tool train` calls it
            from trainers.config import build_config
            t = time.time()
            with contextlib.redirect_stderr(HideTestFigures(sys.stderr)):
                train(build_config("quick", train_settings(recipe, self.a)))
            print(f"{name}: trained in {time.time() - t:.0f} s", file=sys.stderr)
        p = dict(name=name, round=round_, factor=factor, recipe=recipe, **search_view(run_dir))
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
    ap.add_argument("--stop-after", type=float, help="start no point after this many minutes")
    ap.add_argument("--finish", action="store_true",
                    help="train nothing more: choose among the finished points and read the chosen one's test")
    ap.add_argument("--factors", default=",".join(FACTORS), help="the factors searched (all)")
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
    search = Search(a)
    search.combined(search.one_factor(a.factors.split(",")))
    if search.missing and not a.finish:
        print(f"stopped before {len(search.missing)} point(s): {', '.join(search.missing)}; no test figure "
              f"read (rerun to go on, or --finish to choose among the finished points)", file=sys.stderr)
        search.write()
        return
    search.write(chosen=choose(search))
    print(table(json.loads(Path(a.out).read_text())))


if __name__ == "__main__":
    main()
