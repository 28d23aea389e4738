"""Issue 27, causes C, D, F and G of the hostile probe: lies believed (C), the wrong data taken silently
(D), tracebacks where one line is promised (F), checks missing or silent fallbacks (G). Each case failed
on main b2c8974; the one-line check is tests/robust.py's (non-zero exit, one `error:` line, no traceback)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from laser_tool.analysis.stats import summarize
from laser_tool.export import run as export_run
from laser_tool.posthoc import reduce as reducer
from laser_tool.runs.checkpoint import load_run, save_model
from laser_tool.runs.reader import UNVOUCHED
from robust import ROOT, TINY, cli, one_line_error, place, refused, train_args, world  # noqa: F401 - fixtures
from synthetic import make_images

FULL = 16  # the full rank of the world's blocks.0.ffn.in (32x16)


def compare_json(*runs):
    r = cli("compare", *runs, "--no-speed", "--format", "json")
    assert r.exit_code == 0 and "Traceback" not in r.output + r.stderr, r.output
    return json.loads(r.stdout)


def edit_final(run: Path, **changes):
    final = json.loads((run / "final.json").read_text())
    for k, v in changes.items():
        if v is None:
            final.pop(k, None)
        else:
            final[k] = v
    (run / "final.json").write_text(json.dumps(final))


# ---------------------------------------------------------------- C: lies believed

def test_c_val_acc_is_checked_against_the_validation_predictions(place):
    run = place / "base"
    edit_final(run, val_acc=0.999)
    d = compare_json(run)
    assert d["rows"] == [] and d["problems"][0]["status"] == "mismatch"
    assert "val_acc 0.9990" in d["problems"][0]["reason"]
    (run / "final.json").write_text((run / "final.json").read_text().replace("0.999", "NaN"))
    d = compare_json(run)
    assert d["rows"] == [] and "val_acc nan" in d["problems"][0]["reason"]


def test_c_a_run_without_digests_is_shown_with_a_warning(place):
    run = place / "base"
    edit_final(run, digests=None)
    d = compare_json(run)
    assert any(UNVOUCHED in w for w in d["rows"][0]["warnings"])


def test_c_a_legacy_parent_is_rescored_before_a_reduction(place):
    """No digests, and another checkpoint of the same shapes swapped in: reduce re-scores the parent and
    refuses, instead of cutting it and recording the claimed accuracy as the baseline."""
    run = place / "base"
    edit_final(run, digests=None)
    model, config = load_run(run)
    final = json.loads((run / "final.json").read_text())
    counts = {k: 0 for k in range(10)}
    for k in _test_labels(run):
        counts[k] += 1
    k = next(k for k, c in counts.items() if abs(c / 100 - final["test_acc"]) > 0.005)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[k] = 10.0  # always class k: another model, scoring count(k)/100
    save_model(run / "model.safetensors", model, config)
    refused(place, "reduce", run, "--layer", "*.ffn.in", "--rank", "4", "--store", "factored", "--device", "cpu",
            "--out", place / "cut", words=["no digests", "scores"])
    assert not (place / "cut").exists()


def _test_labels(run):
    from laser_tool.runs.predictions import load_predictions
    return load_predictions(run)[0].tensors["test_labels"].tolist()


# ---------------------------------------------------------------- D: the wrong data, silently

def write_folder(root: Path, seed: int) -> Path:
    """A PNG image folder (train/ and test/, classes c0..c9) of the synthetic squares."""
    for split, n, s in (("train", 120, seed), ("test", 40, seed + 1)):
        x, y = make_images(n, s)
        for k in range(10):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(x[i].astype("uint8")).save(root / split / f"c{y[i]}" / f"{i:04d}.png")
    return root


def test_d_reduce_refuses_a_dataset_that_is_not_the_runs_own(tmp_path, monkeypatch):
    monkeypatch.setenv("LASER_TOOL_CACHE", str(tmp_path / "cache"))
    own, other = write_folder(tmp_path / "own", 0), write_folder(tmp_path / "other", 7)
    args = [a for a in TINY if a not in ("--val-size", "50")] + ["--val-size", "20", "--batch-size", "20"]
    r = cli("train", *args, "--dataset", f"folder:{own}", "--out", tmp_path / "runs", "--name", "f")
    assert r.exit_code == 0, r.output
    refused(tmp_path / "runs", "reduce", tmp_path / "runs" / "f", "--layer", "*.ffn.in", "--rank", "4",
            "--store", "factored", "--device", "cpu", "--dataset", f"folder:{other}", "--out", tmp_path / "runs" / "cut",
            words=[f"folder:{other}", "not the data this run was trained on"])


@pytest.mark.parametrize("flag,value,own", [("--num-classes", 7, 10), ("--channels", 3, 1), ("--image-size", 32, 28)])
def test_d_train_refuses_sizes_the_dataset_would_replace(world, tmp_path, flag, value, own):
    refused(tmp_path, *train_args(world, tmp_path, "x", flag, value), words=[f"{flag} {value}", str(own)])


# ---------------------------------------------------------------- F: tracebacks where one line is promised

def test_f_predictions_whose_lengths_differ(place):
    run = place / "base"
    path = run / "predictions.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    from safetensors.torch import load, save
    tensors = load(raw)
    tensors["test_labels"] = tensors["test_labels"][:-7].clone()
    path.write_bytes(save(tensors, metadata=meta))
    edit_final(run, digests={**json.loads((run / "final.json").read_text())["digests"],
                             "predictions.safetensors": hashlib.sha256(path.read_bytes()).hexdigest()})
    d = compare_json(run)
    assert d["rows"] == [] and "inconsistent" in d["problems"][0]["reason"]
    refused(place, "reduce", run, "--layer", "*.ffn.in", "--rank", "4", "--device", "cpu", "--out", place / "cut",
            words=["predictions.safetensors is inconsistent"])


def test_f_an_output_path_through_a_symlink_loop(world, place):
    run = place / "base"
    os.symlink(place / "loop-a", place / "loop-b")
    os.symlink(place / "loop-b", place / "loop-a")
    loop = place / "loop-a"
    for args in (("spectrum", run, "--out", loop / "s.csv"),
                 ("export", run, "--format", "dense", "--out", loop / "m.safetensors"),
                 ("reduce", run, "--layer", "*.ffn.in", "--rank", "4", "--device", "cpu", "--out", loop / "cut"),
                 ("compare", run, "--no-speed", "--plot", loop / "p.png")):
        refused(place, *args, words=["loop-a", "symbolic links"])


def import_args(world, out, *extra):
    return ["import", "--arch", "vit-tiny", "--dim", "16", "--depth", "1", "--heads", "2", "--dim-head", "8",
            "--mlp-dim", "32", "--patch-size", "7", "--weights", world / "runs" / "base" / "model.safetensors",
            "--dataset", "mnist", "--data-dir", world / "data", "--out", out, *extra]


@pytest.mark.parametrize("extra,words", [(("--eval-batch-size", "0"), ["--eval-batch-size 0"]),
                                         (("--val-size", "0"), ["--val-size 0"]),
                                         (("--seed", "-1"), ["--seed -1"])])
def test_f_g_import_split_settings(world, tmp_path, extra, words):
    refused(tmp_path, *import_args(world, tmp_path / "imp", "--val-size", "50", *extra), words=words)


# ---------------------------------------------------------------- G: checks missing, silent fallbacks

def test_g_search_ranks_empty_is_refused(world, tmp_path):
    refused(tmp_path, "search", world / "runs" / "base", "--budget", "params:0.9", "--ranks", "", "--device", "cpu",
            "--report", tmp_path / "s.json", words=["--ranks", "names nothing"])


def test_g_a_rank_above_the_full_rank_is_one_rule(world, tmp_path):
    base, big = world / "runs" / "base", "4,100"
    words = ["rank 100", f"maximum {FULL}"]
    refused(tmp_path, "spectrum", base, "--layers", "*.ffn.in", "--ranks", big, words=words)
    refused(tmp_path, "search", base, "--layers", "*.ffn.in", "--ranks", big, "--budget", "params:0.9",
            "--device", "cpu", "--report", tmp_path / "s.json", words=words)
    refused(tmp_path, "reduce", base, "--layer", "*.ffn.in", "--rank", "100", "--device", "cpu",
            "--out", tmp_path / "cut", words=words)
    r = cli("spectrum", base, "--layers", "*.ffn.in", "--ranks", "rho:0.05,4", "--format", "json")
    assert r.exit_code == 0, r.output  # a fraction that rounds below one singular value is no column, as before


def test_g_accuracy_intervals_lie_in_0_1():
    for accs, size in (([0.93, 0.3], None), ([0.05, 0.95, 0.5], None), ([0.99], 10), ([0.01], 10)):
        s = summarize(accs, size)
        assert 0.0 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 1.0, s


@pytest.mark.parametrize("fmt,name", [("dense", "m.onnx"), ("onnx", "m.safetensors")])
def test_g_export_refuses_the_other_formats_suffix(world, tmp_path, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    refused(tmp_path, "export", world / "runs" / "base", "--format", fmt, "--out", tmp_path / name,
            words=[name, f"--format is {fmt}"])


def test_g_info_of_a_huge_model_builds_nothing():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "laser_tool", "info", "--dim", "100000", "--depth", "1000", "--json"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["params"] > 10 ** 11


@pytest.mark.parametrize("variant,words", [(("--variant", "dyad", "--n-dyad", "3"), ["n_dyad=3"]),
                                           (("--variant", "monarch", "--monarch-blocks", "100000"), ["100000 blocks"]),
                                           (("--variant", "btt", "--btt-rank", "0"), ["rank 0"])])
def test_g_variant_sizes_fail_before_the_data(world, tmp_path, variant, words):
    args = train_args(world, tmp_path, "v", *variant, "--target", "ffn")
    args[args.index("--data-dir") + 1] = tmp_path / "no-data-here"
    refused(tmp_path, *args, words=words)


def test_g_divergence_names_only_checkpoints_that_exist(world, tmp_path):
    r = cli(*train_args(world, tmp_path, "d", "--lr", "1e9"))
    line = one_line_error(r, "non-finite")
    for name in ("state.safetensors", "last.safetensors"):
        assert name not in line or (tmp_path / "d" / name).is_file(), line


@pytest.mark.parametrize("verb", ["reduce", "export"])
def test_g_sigterm_during_reduce_or_export_is_one_line(world, tmp_path, monkeypatch, verb):
    module, name = (reducer, "write_run") if verb == "reduce" else (export_run, "save_tensors")
    real = getattr(module, name)

    def terminated(*a, **k):  # SIGTERM arrives just before the output is written
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(module, name, terminated)
    # Were the verb to leave SIGTERM to its default, it would kill pytest: fail the test instead.
    def unhandled(*_):
        pytest.fail("SIGTERM reached the handler the verb found")
    previous = signal.signal(signal.SIGTERM, unhandled)
    args = (("reduce", world / "runs" / "base", "--layer", "*.ffn.in", "--rank", "2", "--store", "factored",
             "--device", "cpu", "--out", tmp_path / "cut") if verb == "reduce" else
            ("export", world / "runs" / "base", "--format", "dense", "--out", tmp_path / "m.safetensors"))
    try:
        r = cli(*args)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back as it was
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert r.exit_code == 143 and isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    # warnings said while working (a factored cut that saves no time, on this tiny model) may come before
    lines = [line for line in r.output.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "interrupted by SIGTERM" in lines[0], r.output
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "esc\x1b[31m"])
def test_g_a_name_with_control_characters_is_refused(world, tmp_path, name):
    refused(tmp_path, *train_args(world, tmp_path, name), words=["control character"])
