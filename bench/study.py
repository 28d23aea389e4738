"""Post-hoc rows at several budgets: one shared reduction (reduce_run_budgets) vs one reduce_run per budget.

    .venv/bin/python bench/study.py [--run RUN] [--epochs 1] [--train-subset 10000] [--repeats 3]
                                    [--data-dir DIR] [--out bench/results/study.json]
    .venv/bin/python bench/study.py --tiny --data-dir DIR --out FILE   # smoke test, a few seconds

The model is the `quick` preset's (vit-tiny dim 128, depth 3, 7x7 patches) on Fashion-MNIST, trained
here briefly unless --run names a trained run (accuracy does not change the timing). Budgets are the
frontier study's: params:0.5, 0.25 and 0.1 of every attention and FFN layer (`*:all`), factored.
For each method (svd, whiten) it times
  one     reduce_run at the first budget (what a single post-hoc row costs)
  shared  reduce_run_budgets at all three budgets (what the study pays for the three rows)
and reports shared / one in CPU seconds (goal: at most 1.3; wall seconds beside, noisier on a shared
machine). Both score the unreduced model once and each reduced model on the full validation and
test splits (that scoring is what the rows are: accuracies and per-image predictions), which no
sharing can remove: its floor is about (1 + 3a) / (1 + a) when scoring a reduced model costs a times
the unreduced one. So the CPU time spent scoring is measured apart (`scoring_cpu`), and
`ratio_without_scoring` is the ratio of everything else: loading, calibration, decompositions, the
cuts and the writes, the part the sharing is for; `ratio_vs_three_separate` compares with three
reduce_run calls. Median of --repeats, one torch thread.
"""
import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from laser_tool.runs.checkpoint import load_run  # noqa: E402
from laser_tool.models.evaluate import evaluate  # noqa: E402
from laser_tool.posthoc import reduce as reducer  # noqa: E402
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run, reduce_run_budgets, run_data  # noqa: E402

BUDGETS = {0.5: ["*:all=params:0.5"], 0.25: ["*:all=params:0.25"], 0.1: ["*:all=params:0.1"]}
# --tiny: the same code paths on 256 training and 100 validation images, one repeat
TINY = dict(train_subset=256, val_size=100, repeats=1)


def train_base(root: Path, epochs: int, subset: int, data_dir, val_size=None) -> Path:
    from trainers import train as trainer
    from trainers.config import build_config
    return trainer.train(build_config("quick", dict(epochs=epochs, train_subset=subset, out=str(root), name="base",
                                                    device="cpu", data_dir=data_dir, val_size=val_size)))


def _round(d):
    return {k: round(v, 3) for k, v in d.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir")
    ap.add_argument("--val-size", type=int, help="validation images of the run trained here (default 5000)")
    ap.add_argument("--out", help="results file (default bench/results/study.json)")
    a = tiny.parse(ap, argv, TINY, "bench/results/study.json")
    a.out = a.out or str(Path(__file__).parent / "results" / "study.json")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        t0 = time.time()
        run = Path(a.run) if a.run else train_base(work / "runs", a.epochs, a.train_subset, a.data_dir,
                                                   a.val_size)
        train_seconds = time.time() - t0
        config = json.loads((run / "config.json").read_text())
        splits = run_data(config, a.data_dir)
        model, _ = load_run(run)
        t = time.perf_counter()
        evaluate(model, splits.val_x, splits.val_y, 500)
        evaluate(model, splits.test_x, splits.test_y, 500)
        score_seconds = time.perf_counter() - t
        scoring = [0.0]  # CPU seconds spent scoring models inside the reductions (wrapped below)

        def timed(fn):
            def wrapped(*args, **kw):
                c = time.process_time()
                try:
                    return fn(*args, **kw)
                finally:
                    scoring[0] += time.process_time() - c
            return wrapped
        reducer.evaluate = timed(reducer.evaluate)
        reducer.evaluate_with_predictions = timed(reducer.evaluate_with_predictions)
        results = {}
        for method in ("svd", "whiten"):
            runs = {"one": [], "shared": []}
            for k in range(a.repeats):
                for kind in ("one", "shared"):
                    scoring[0] = 0.0
                    t, c = time.perf_counter(), time.process_time()
                    if kind == "one":
                        reduce_run(run, BUDGETS[0.5], ReduceSettings(method=method, store="factored"), splits=splits,
                                   out=work / f"one-{method}-{k}")
                    else:
                        reduce_run_budgets(run, BUDGETS, ReduceSettings(method=method, store="factored"), splits=splits,
                                           outs={b: work / f"shared-{method}-{k}-{b}" for b in BUDGETS})
                    cpu = time.process_time() - c
                    runs[kind].append(dict(wall=time.perf_counter() - t, cpu=cpu, scoring_cpu=scoring[0],
                                           other_cpu=cpu - scoring[0]))
            med = {kind: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for kind, rs in runs.items()}
            accs = {b: json.loads((work / f"shared-{method}-{k}-{b}" / "final.json").read_text())["test_acc"]
                    for b in BUDGETS}
            results[method] = dict(
                one_budget=_round(med["one"]), three_budgets=_round(med["shared"]),
                ratio_cpu=round(med["shared"]["cpu"] / med["one"]["cpu"], 3),
                ratio_wall=round(med["shared"]["wall"] / med["one"]["wall"], 3),
                ratio_without_scoring=round(med["shared"]["other_cpu"] / med["one"]["other_cpu"], 3),
                ratio_vs_three_separate=round(med["shared"]["cpu"] / (len(BUDGETS) * med["one"]["cpu"]), 3),
                runs={kind: [_round(r) for r in rs] for kind, rs in runs.items()}, test_acc_by_budget=accs)
        doc = dict(about=__doc__.split("\n")[0], goal="three budgets cost at most 1.3x one budget",
                   device=f"cpu ({platform.machine()}, 1 thread)", torch=torch.__version__,
                   model="quick preset: vit-tiny dim 128 depth 3 heads 4 mlp 256 patch 7, fashion-mnist",
                   run=str(run) if a.run else f"trained here: {a.epochs} epoch(s) on {a.train_subset} images",
                   train_seconds=round(train_seconds, 1), budgets=BUDGETS, store="factored",
                   val_images=len(splits.val_x), test_images=len(splits.test_x),
                   base_test_acc=json.loads((run / "final.json").read_text())["test_acc"],
                   score_seconds=round(score_seconds, 3), results=results)
        tiny.write(doc, a, a.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
