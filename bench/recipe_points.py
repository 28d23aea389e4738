"""bench/recipe.py's points and runs, and its round 3, "what a FLOP buys", with the finalists' seeds.

A point is a recipe (BASE's settings), optionally a model shape (SHAPES) and a seed; its run lives in
--runs under a name built from what differs from the baseline, so the same point always lands in the
same run, and a finished run is read, not retrained (the trainer returns at once, and refuses a run
folder that holds different settings). What the search reads of a run: its validation accuracy, seconds,
params and config (for the FLOPs); a test accuracy only for the chosen point, after the choice is written.

Round 3 changes the model. A shape trains at the preset's recipe for the epochs that make its training
FLOPs, as analysis/costs counts them (study/compute.per_step: costs.step_flops of the shape's spec at the
batch size), equal the baseline's: the most optimizer steps whose FLOPs do not pass the retrained
baseline run's `trained_flops`, given as fractional epochs (TrainConfig: round(epochs x steps per epoch)
steps). The BEST_SHAPES shapes best on validation then train at the lr x LR_MULTS.
Seeds: the baseline and the FINALISTS points of rounds 1-3 best on their one-seed validation (rounds 1-2
by the figures the results file records; their runs are gone, so seed 0 is retrained too) train at every
seed of SEEDS. The choice is the best mean validation accuracy over the seeds (the baseline first among
equals); it is written to the results before any test figure is read. Then, and only then, the chosen
point's test accuracy at each seed and the baseline's at the same seeds.
"""
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from statistics import mean

import torch

from laser_tool.analysis.costs import trained_flops
from laser_tool.analysis.stats import mcnemar_exact, paired_counts, paired_diff_interval, paired_t
from laser_tool.data import fit_model
from laser_tool.device import cpu_name
from laser_tool.fileio import atomic_write_json
from laser_tool.runs.predictions import load_predictions
from laser_tool.runs.safety import finished
from laser_tool.runs.schema import read_config, read_final
from laser_tool.study.compute import per_step
from trainers.config import TrainConfig, build_config
from trainers.presets import PRESETS

QUICK = PRESETS["quick"]
BUDGET_FLOPS = 4.9e12  # issue 28: today's 2-epoch quick baseline trains 4.88e12 FLOPs
# The preset's recipe, as the settings the search moves (label smoothing: TrainConfig's default).
BASE = dict(lr=QUICK["lr"], batch_size=QUICK["batch_size"], warmup_epochs=QUICK["warmup_epochs"],
            weight_decay=QUICK["weight_decay"], label_smoothing=TrainConfig.label_smoothing,
            augment=QUICK["augment"], dropout=QUICK["model"]["dropout"])
SHORT = dict(lr="lr", batch_size="bs", warmup_epochs="wu", weight_decay="wd", label_smoothing="ls",
             augment="aug", dropout="do")
# Round 3's shapes: the quick model's settings each changes (quick: patch 7 = 16 tokens, dim 128, depth 3,
# 4 heads of 32, MLP 256). Patch 4 (49 tokens) is finer; narrower or shallower models train more epochs.
SHAPES = {
    "p7-dim96": dict(dim=96, mlp_dim=192, heads=4, dim_head=24),
    "p7-dim64": dict(dim=64, mlp_dim=128, heads=4, dim_head=16),
    "p7-depth2": dict(depth=2),
    "p7-depth6-dim96": dict(depth=6, dim=96, mlp_dim=192, heads=4, dim_head=24),
    "p4-dim64": dict(patch_size=4, dim=64, mlp_dim=128, heads=4, dim_head=16),
    "p4-dim48": dict(patch_size=4, dim=48, mlp_dim=96, heads=4, dim_head=12),
    "p4-dim32": dict(patch_size=4, dim=32, mlp_dim=64, heads=4, dim_head=8),
}
LR_MULTS = (2.0, 0.5)
BEST_SHAPES = 2
FINALISTS = 3  # besides the baseline
SEEDS = (0, 1, 2)
GOAL_TEST = 0.895  # issue 28: >= 89.5% test at <= BUDGET_FLOPS


def name_of(recipe: dict, shape=None, epochs=None, seed=0) -> str:
    """A run name from what differs from the baseline: the same point always lands in the same run."""
    diff = [f"{SHORT[k]}{'' if isinstance(v, bool) else f'{v:g}'}" for k, v in recipe.items() if v != BASE[k]]
    name = "-".join(([f"{shape}-e{epochs:g}"] if shape else []) + diff) or "base"
    return f"{name}-seed{seed}" if seed else name


def train_settings(recipe: dict, a, shape=None, epochs=None, seed=0) -> dict:
    """build_config's settings for a point: the quick preset, the recipe, lr scaled to the batch by the
    square-root rule, the shape's model settings and epochs."""
    lr = recipe["lr"] * (recipe["batch_size"] / BASE["batch_size"]) ** 0.5
    return dict(recipe, **(SHAPES[shape] if shape else {}), lr=lr, epochs=epochs if shape else a.epochs, seed=seed,
                device="cpu", data_dir=a.data_dir, val_size=a.val_size, train_subset=a.train_subset, out=a.runs,
                name=name_of(recipe, shape, epochs, seed))


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


def search_view(run_dir: Path) -> dict:
    """What the search may know of a finished point: validation accuracy, seconds, FLOPs; never its test."""
    final, why = read_final(run_dir)
    config, why_config = read_config(run_dir)
    if why or why_config:
        raise RuntimeError(f"{run_dir}: {why or why_config}")
    return dict(val_acc=final["val_acc"], seconds=round(final["train_seconds"], 1),
                flops=trained_flops(config), lr_used=config["lr"], params=final["params"],
                epochs=config["epochs"], best_epoch=final["best_epoch"])


def paired_on_val(run_dir: Path, base_dir: Path) -> dict:
    """A point minus the baseline on the same validation images (their predictions.safetensors' `val`
    part alone): the difference in pp, its 95% half-width and the exact McNemar p."""
    (mine, _), (base, _) = load_predictions(run_dir), load_predictions(base_dir)
    n, b, c = paired_counts(mine.correct("val"), base.correct("val"))
    diff, half = paired_diff_interval(n, b, c)
    return dict(diff_pp=round(100 * diff, 2), half_width_pp=round(100 * half, 2),
                mcnemar_p=float(f"{mcnemar_exact(b, c):.3g}"))


def test_figure(run_dir: Path) -> dict:
    """A chosen point's test accuracy (best-by-validation checkpoint): read only once the choice is made."""
    final, _ = read_final(run_dir)
    return dict(test_acc=final["test_acc"])


class Runs:
    """Trains (or reads) runs one at a time; records which it may not start (past --stop-after, --finish)."""

    def __init__(self, a):
        self.a, self.missing = a, []
        self.deadline = time.time() + 60 * a.stop_after if a.stop_after else None

    def get(self, settings: dict):
        """The run's search_view, training it first if needed; None when it may not start."""
        run_dir = Path(self.a.runs) / settings["name"]
        done = finished(run_dir)
        if not done and (self.a.finish or (self.deadline is not None and time.time() > self.deadline)):
            self.missing.append(settings["name"])
            return None
        from trainers.train import train  # the trainer, as `laser-tool train` calls it
        t = time.time()
        with contextlib.redirect_stderr(HideTestFigures(sys.stderr)):
            train(build_config("quick", settings))  # a finished run: checked to hold these settings, read
        if not done:
            print(f"{settings['name']}: trained in {time.time() - t:.0f} s ({time.strftime('%H:%M:%S')})",
                  file=sys.stderr)
        return search_view(run_dir)


def shape_epochs(shape: str, base_dir: Path) -> float:
    """The epochs at which `shape` trains the baseline run's FLOPs: the most whole optimizer steps that
    do not pass them (per step: costs.step_flops at the batch size), as epochs of the baseline's steps."""
    config, why = read_config(base_dir)
    if why:
        raise RuntimeError(f"{base_dir}: {why}")
    target, per_epoch = trained_flops(config), config["schedule"]["steps_per_epoch"]
    cfg = build_config("quick", dict(SHAPES[shape], dataset=config["dataset"]))
    steps = max(1, math.floor(target / per_step(fit_model(cfg.model, cfg.dataset), config["batch_size"])))
    epochs = round(steps / per_epoch, 4)
    return epochs if round(epochs * per_epoch) == steps else steps / per_epoch


class Round3:
    """Round 3 and the seeds, as the results file's `round3` and `seeds` sections."""

    def __init__(self, runs: Runs, doc: dict, shapes: list):
        self.runs, self.a, self.doc, self.shapes = runs, runs.a, doc, shapes
        self.base_dir = Path(self.a.runs) / "base"
        self.sec = dict(about=__doc__.split("\n")[0], shapes={s: SHAPES[s] for s in shapes}, lr_mults=LR_MULTS,
                        best_shapes=BEST_SHAPES, runs=str(self.a.runs), points=[], missing=runs.missing,
                        machine=dict(processor=cpu_name(), cpu_count=os.cpu_count(), torch=torch.__version__,
                                     threads_per_run=torch.get_num_threads(), runs_at_once=1))
        doc["round3"] = self.sec
        doc.pop("seeds", None)

    def write(self):
        self.sec["complete"] = not self.runs.missing
        atomic_write_json(self.a.out, self.doc)

    def point(self, recipe: dict, round_: str, shape=None, epochs=None):
        view = self.runs.get(train_settings(recipe, self.a, shape, epochs))
        if view is None:
            return None
        name = name_of(recipe, shape, epochs)
        p = dict(name=name, round=round_, shape=shape, model=SHAPES.get(shape, {}), recipe=recipe, **view)
        p["within_budget"] = self.a.tiny or p["flops"] <= BUDGET_FLOPS
        p["val_vs_base"] = paired_on_val(Path(self.a.runs) / name, self.base_dir) if name != "base" else None
        self.sec["points"].append(p)
        self.write()
        return p

    def search(self):
        """The baseline retrained, every shape at the baseline's FLOPs, the best shapes at lr x2 and x0.5."""
        base = self.point(BASE, "baseline (retrained)")
        if base is None:
            self.runs.missing.append("round 3's shapes")
            return self.write()
        config, _ = read_config(self.base_dir)
        self.sec.update(target_flops=base["flops"], steps_per_epoch=config["schedule"]["steps_per_epoch"])
        scored = []
        for shape in self.shapes:
            p = self.point(BASE, "shape", shape, shape_epochs(shape, self.base_dir))
            if p:
                scored.append(p)
        if self.runs.missing:
            self.runs.missing.append("round 3's lr points")
            return self.write()
        for p in sorted(scored, key=lambda p: -p["val_acc"])[:BEST_SHAPES]:
            for m in LR_MULTS:
                self.point(dict(BASE, lr=BASE["lr"] * m), f"shape, lr x{m:g}", p["shape"], p["epochs"])
        self.write()

    def seeds(self, seeds, finalists: int):
        """The baseline and the best `finalists` points of rounds 1-3 at every seed; the choice on the mean
        validation accuracy, written before the chosen point's and the baseline's test figures are read."""
        if self.runs.missing:
            return
        ok = [p for p in self.doc["points"] + self.sec["points"] if p["name"] != "base" and p["within_budget"]]
        top = sorted(ok, key=lambda p: -p["val_acc"])[:finalists]
        base = next(p for p in self.sec["points"] if p["name"] == "base")
        sec = dict(seeds=list(seeds), rule="the best mean validation accuracy over the seeds (the baseline first "
                   "among equals), chosen before any test figure is read", finalists=[], missing=self.runs.missing)
        self.doc["seeds"] = sec
        for p in [base] + top:
            f = dict(name=p["name"], round=p["round"], shape=p.get("shape"), recipe=p["recipe"],
                     epochs=p.get("epochs", self.a.epochs), one_seed_val=p["val_acc"], runs=[])
            for s in seeds:
                view = self.runs.get(train_settings(p["recipe"], self.a, f["shape"], f["epochs"], s))
                if view:
                    f["runs"].append(dict(seed=s, name=name_of(p["recipe"], f["shape"], f["epochs"], s), **view))
            sec["finalists"].append(f)
            self.write()
        if self.runs.missing:
            return self.write()
        b = [r["val_acc"] for r in sec["finalists"][0]["runs"]]
        for f in sec["finalists"]:
            v = [r["val_acc"] for r in f["runs"]]
            f["val_mean"] = mean(v)
            if f["name"] != "base":
                p, half = paired_t(v, b)
                f["minus_base"] = dict(diffs_pp=[round(100 * (x - y), 2) for x, y in zip(v, b)],
                                       mean_pp=round(100 * (mean(v) - mean(b)), 3),
                                       half_width_pp=None if half is None else round(100 * half, 3), t_p=p)
        chosen = max(sec["finalists"], key=lambda f: f["val_mean"])  # the first of equals: the baseline
        sec["chosen"] = chosen["name"]
        self.write()  # the choice is on disk before any test figure is read
        for f in {id(chosen): chosen, id(sec["finalists"][0]): sec["finalists"][0]}.values():
            for r in f["runs"]:
                r.update(test_figure(Path(self.a.runs) / r["name"]))
            f["test_mean"] = mean(r["test_acc"] for r in f["runs"])
        sec["shortfall_pp"] = round(100 * max(0.0, GOAL_TEST - chosen["test_mean"]), 2)
        self.write()


def model_cols(p: dict) -> str:
    m = {**QUICK["model"], **(p.get("model") or {})}
    return f"{m['patch_size']} | {m['dim']} | {m['depth']} | {m['heads']}x{m['dim_head']} | {m['mlp_dim']}"


def tables(doc: dict) -> str:
    """Round 3's points and the finalists' seeds, as docs/recipe.md's markdown tables."""
    sec = doc.get("round3") or {}
    rows = ["| point | round | patch | dim | depth | heads | MLP | params | epochs | lr | val acc "
            "| vs base on val, pp (paired 95%, McNemar p) | training FLOPs | train s |", "|---" * 14 + "|"]
    for p in sec.get("points", []):
        v = p["val_vs_base"]
        paired = f"{v['diff_pp']:+.2f} ± {v['half_width_pp']:.2f} (p {v['mcnemar_p']:.2g})" if v else ""
        rows.append(f"| `{p['name']}` | {p['round']} | {model_cols(p)} | {p['params']:,} | {p['epochs']:g} "
                    f"| {p['lr_used']:.3g} | {100 * p['val_acc']:.2f}% | {paired} | {p['flops']:.4g} "
                    f"| {p['seconds']:.0f} |")
    seeds = doc.get("seeds") or {}
    n = len(seeds.get("seeds", []))
    rows += ["", "| finalist | from | picked on (one seed) | " + " | ".join(f"val seed {s}" for s in seeds.get(
        "seeds", [])) + " | mean val | minus base, paired by seed, pp (mean ± 95% t, p) | test mean (per seed) |",
             "|---" * (n + 6) + "|"]
    for f in seeds.get("finalists", []):
        d = f.get("minus_base")
        paired = f"{d['mean_pp']:+.2f} ± {d['half_width_pp']:.2f} (p {d['t_p']:.2g})" if d and d["t_p"] is not None \
            else (f"{d['mean_pp']:+.2f}" if d else "")
        test = (f"{100 * f['test_mean']:.2f}% (" + ", ".join(f"{100 * r['test_acc']:.2f}" for r in f["runs"]) + ")"
                if "test_mean" in f else "")
        mark = " **chosen**" if f["name"] == seeds.get("chosen") else ""
        mv = f"{100 * f['val_mean']:.2f}%" if "val_mean" in f else ""
        rows.append(f"| `{f['name']}`{mark} | {f['round']} | {100 * f['one_seed_val']:.2f}% | "
                    + " | ".join(f"{100 * r['val_acc']:.2f}%" for r in f["runs"]) + f" | {mv} | {paired} | {test} |")
    return "\n".join(rows)
