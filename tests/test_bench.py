"""Every bench script still runs: `bench/X.py --tiny` end to end, on tiny synthetic Fashion-MNIST.

--tiny runs the script's own code paths at a tiny size (seconds on CPU); the numbers mean nothing, only
that the script does not crash and writes its JSON. bench/results is never written (--out goes to a
temporary folder) and the test checks it is left as it was. bench/train.py --gpu is not run here.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = object()  # stands for the tiny Fashion-MNIST folder in the arguments below

# script -> (extra arguments, the JSON's top-level keys, path to the entry that must say tiny)
CASES = {
    "breakeven": ([], {"about", "machine", "settings", "results", "tiny", "seconds"}, []),
    "decided_power": ([], {"about", "observed", "settings", "results", "tiny", "seconds"}, []),
    "export": ([], {"about", "machine", "settings", "models", "tiny"}, []),
    "folder": ([], {"about", "tiny", "decode_into_cache", "cache_hit_s", "epoch"}, []),
    "layers": (["--device", "cpu", "--threads", "1"], {"description", "devices"}, ["devices", "cpu"]),
    "multiseed": ([], {"about", "machine", "settings", "equality_check", "threads_1", "best_k", "threads_2",
                       "tiny"}, []),
    "progressive": (["--data-dir", DATA, "--threads", "1"], {"about", "results"}, ["results", "cpu"]),
    "seed_power": ([], {"about", "settings", "size", "power", "tiny", "seconds"}, []),
    "reduce": (["--data-dir", DATA, "--device", "cpu", "--threads", "1"], {"about", "results"},
               ["results", "cpu"]),
    "study": (["--data-dir", DATA], {"about", "goal", "device", "torch", "model", "run", "train_seconds",
                                     "budgets", "store", "val_images", "test_images", "base_test_acc",
                                     "score_seconds", "results", "tiny"}, []),
    "train": ([], {"machine", "cpu", "tiny"}, []),
    "whiten": (["--data-dir", DATA, "--threads", "1"], {"about", "results", "base_val_acc", "tiny"}, []),
}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """Tiny learnable images in Fashion-MNIST's file names (the same IDX names as MNIST's)."""
    return write_tiny_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist", n_train=600, n_test=100)


def _digests():
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.glob("*.json"))}


def _run_tiny(script, extra, fashion, tmp_path) -> dict:
    """Run `bench/SCRIPT.py --tiny` into tmp_path; its JSON. bench/results must be left as it was."""
    out = tmp_path / f"{script}.json"
    args = [str(fashion) if a is DATA else a for a in extra]
    before = _digests()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("OUT", None)  # bench/train.py --gpu writes to $OUT; not that part here, but keep it out of play
    p = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--tiny", "--out", str(out), *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"bench/{script}.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    assert _digests() == before, "bench/results was written"
    return json.loads(out.read_text())


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_runs_tiny(script, fashion, tmp_path):
    extra, keys, tiny_at = CASES[script]
    doc = _run_tiny(script, extra, fashion, tmp_path)
    assert keys <= set(doc), f"missing top-level keys {keys - set(doc)}"
    entry = doc
    for k in tiny_at:
        entry = entry[k]
    assert entry["tiny"] is True


def test_recipe_search_reads_the_test_set_once(fashion, tmp_path):
    """bench/recipe.py: every point has a validation accuracy, only the chosen point a test accuracy, and
    the chosen point is the best on validation. Round 3 trains every shape at the baseline's FLOPs (less
    by under one of its steps), the best two at lr x2 and x0.5; the finalists (the baseline and the best
    points of rounds 1-3 on one seed) at every seed, the choice the best mean validation accuracy, and
    test figures for the chosen point's and the baseline's seeds alone. A rerun resumes: every point is
    read back, none retrained, the rounds 1-2 from the results file."""
    doc = _run_tiny("recipe", ["--data-dir", DATA], fashion, tmp_path)
    assert doc["tiny"] is True and doc["complete"] and doc["missing"] == []
    points = doc["points"]
    assert points[0]["name"] == "base" and all(0 <= p["val_acc"] <= 1 and p["flops"] > 0 for p in points)
    assert [p["name"] for p in points if "test_acc" in p] == [doc["chosen"]]
    chosen = next(p for p in points if p["name"] == doc["chosen"])
    assert chosen["val_acc"] == max(p["val_acc"] for p in points)
    assert points[0]["val_vs_base"] is None and all(p["val_vs_base"]["mcnemar_p"] <= 1 for p in points[1:])

    r3 = doc["round3"]
    shapes = r3["points"]
    assert r3["complete"] and shapes[0]["name"] == "base" and shapes[0]["val_acc"] == points[0]["val_acc"]
    assert [p["shape"] for p in shapes[1:3]] == ["p7-dim64", "p4-dim48"] and len(shapes) == 3 + 2 * 2
    best = sorted(shapes[1:3], key=lambda p: -p["val_acc"])
    assert [(p["shape"], p["lr_used"]) for p in shapes[3:]] == [
        (p["shape"], lr) for p in best for lr in (2 * 3e-3, 0.5 * 3e-3)]
    for p in shapes[1:]:
        steps = round(p["epochs"] * r3["steps_per_epoch"])
        assert p["epochs"] > 2 and r3["target_flops"] - p["flops"] < p["flops"] / steps <= p["flops"]
        assert p["flops"] <= r3["target_flops"] and "test_acc" not in p and p["val_vs_base"]["mcnemar_p"] <= 1

    seeds = doc["seeds"]
    finalists = seeds["finalists"]
    assert seeds["seeds"] == [0, 1] and seeds["missing"] == [] and finalists[0]["name"] == "base"
    one_seed = sorted([p for p in points + shapes if p["name"] != "base"], key=lambda p: -p["val_acc"])
    assert [f["name"] for f in finalists[1:]] == [p["name"] for p in one_seed[:2]]
    assert all([r["seed"] for r in f["runs"]] == [0, 1] for f in finalists)
    assert all(f["runs"][0]["val_acc"] == f["one_seed_val"] for f in finalists)  # seed 0: the same run
    best = max(finalists, key=lambda f: f["val_mean"])
    assert seeds["chosen"] == best["name"] and best["val_mean"] == max(f["val_mean"] for f in finalists)
    for f in finalists[1:]:
        assert f["minus_base"]["mean_pp"] == round(100 * (f["val_mean"] - finalists[0]["val_mean"]), 3)
    tested = {f["name"] for f in finalists if any("test_acc" in r for r in f["runs"])}
    assert tested == {"base", seeds["chosen"]} and all("test_acc" in r for f in finalists if f["name"] in tested
                                                      for r in f["runs"])

    runs = tmp_path / "recipe-runs"
    stamps = {d.name: (d / "final.json").stat().st_mtime_ns for d in runs.iterdir()}
    assert set(stamps) == {p["name"] for p in points + shapes} | {r["name"] for f in finalists for r in f["runs"]}
    assert _run_tiny("recipe", ["--data-dir", DATA], fashion, tmp_path) == doc
    assert {d.name: (d / "final.json").stat().st_mtime_ns for d in runs.iterdir()} == stamps


def test_heal_grid_chooses_on_validation_per_length_and_keep(tmp_path):
    """bench/heal_grid.py: per length and keep the heal with the best validation accuracy, whatever its
    test accuracy; the plateau is every length's baseline."""
    sys.path.insert(0, str(ROOT / "bench"))
    import heal_grid
    from conftest import written_run
    runs = tmp_path / "st" / "runs"
    written_run(runs, "baseline-s0", 0.89, val_acc=0.90, epochs=12.2261)
    written_run(runs, "baseline-e36.6783-s0", 0.90, val_acc=0.91, epochs=36.6783)
    written_run(runs, "baseline-plus1-s0", 0.891, val_acc=0.901)
    # at 12.2261 epochs, keep 0.25: the best on validation (heal 3, lr x0.5) is not the best on test
    for name, val, test in (("svd-k0.25-heal1-s0", 0.85, 0.86), ("svd-k0.25-heal1-lr2-s0", 0.86, 0.90),
                            ("svd-k0.25-heal3-lr0.5-s0", 0.87, 0.84), ("svd-k0.1-heal1-e36.6783-s0", 0.70, 0.71)):
        written_run(runs, name, test, val_acc=val)
    doc = heal_grid.read_study(tmp_path / "st", 12.2261)
    assert doc[12.2261]["baseline"]["epochs"] == 12.2261 and doc[36.6783]["baseline"]["test_acc"] == 0.90
    assert doc[12.2261]["control"] == {1: dict(val_acc=0.901, test_acc=0.891)}
    chosen = {(c["length"], c["keep"]): c["chosen"] for c in heal_grid.choose(doc, tmp_path / "st")}
    assert chosen[12.2261, 0.25] == dict(heal=3, mult=0.5, val_acc=0.87, test_acc=0.84)
    assert chosen[36.6783, 0.1] == dict(heal=1, mult=1.0, val_acc=0.70, test_acc=0.71)


def test_recipe_levers_points_train_quicks_flops():
    """bench/recipe_levers.py (a one-off driver, no --tiny): every point it trains costs quick's training
    FLOPs, within 1% and under issue 28's 4.9e12, counted as the project counts them."""
    import argparse
    import math
    sys.path.insert(0, str(ROOT / "bench"))
    import recipe_levers
    from laser_tool.data import fit_model
    from laser_tool.study.compute import per_step
    from trainers.config import build_config

    def flops(settings):
        cfg = build_config("quick", settings)
        steps = round(cfg.epochs * math.floor(55_000 / cfg.batch_size))
        return steps * per_step(fit_model(cfg.model, cfg.dataset), cfg.batch_size)
    a = argparse.Namespace(data_dir=None, runs="/nonexistent")
    quick = flops({})
    for name, change in recipe_levers.LEVERS.items():
        got = flops({k: v for k, v in recipe_levers.settings(name, change, 0, a).items()
                     if k not in ("data_dir", "out", "device")})
        assert 0.99 * quick <= got <= min(quick, 4.9e12), name
