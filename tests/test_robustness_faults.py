"""Issue 9, items 6-11: balanced factors, lying headers, one-line errors for bad files, debris and a
full disk, umask. Each case goes through the CLI in temp directories (helpers in robust.py)."""
import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from laser_tool.runs.checkpoint import META_KEY, load_run
from laser_tool.models.layers import FactoredLinear
from laser_tool.posthoc.decompose import Calib, Decomposition
from conftest import cli
from robust import place, refused, snapshot, train_args, world  # noqa: F401

# ------------------------------------------------------------------ 6. balanced factors

def test_6_whitened_factors_are_balanced_and_keep_their_product():
    torch.manual_seed(0)
    X = torch.randn(500, 48) * torch.logspace(-2, 1, 48)   # badly scaled inputs, as after a GELU
    W = torch.randn(32, 48) / 7
    d = Decomposition(W, "whiten", Calib.from_inputs(X))
    for r in (4, 16, 32):
        U, V = d.factors(r)
        raw = (d.U[:, :r] * d.s[:r]) @ d.Vh[:r]           # the product before balancing
        assert torch.allclose(U.double() @ V.double(), raw, rtol=1e-4, atol=1e-6)
        assert torch.allclose(U.norm(dim=0), V.norm(dim=1), rtol=1e-4)
        raw_ratio = float((d.U[:, :r] * d.s[:r]).abs().mean() / d.Vh[:r].abs().mean())
        ratio = float(U.abs().mean() / V.abs().mean())
        assert raw_ratio > 100 and 0.1 < ratio < 10, (raw_ratio, ratio)
    U, V = Decomposition(W).factors(8)                      # plain SVD: sqrt(s) on each side
    s = torch.linalg.svdvals(W.double())[:8]
    assert torch.allclose(U.norm(dim=0).double(), s.sqrt(), rtol=1e-4)


def test_6_reduce_stores_balanced_factors(world):
    model, _ = load_run(world / "runs" / "base-red")
    fac = [m for m in model.modules() if isinstance(m, FactoredLinear)]
    assert fac
    for m in fac:
        assert torch.allclose(m.U.norm(dim=0), m.V.norm(dim=1), rtol=1e-3)


# ------------------------------------------------------------------ 7. a lying header

def rewrite_checkpoint(path: Path, change):
    tensors = load_file(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    meta = change(tensors, meta) or meta
    save_file(tensors, path, metadata=meta)


def test_7_header_that_lies_about_the_model_is_one_line(world, place):
    def huge(tensors, meta):
        cfg = json.loads(meta[META_KEY])
        cfg["model"]["dim"] = 200_000   # the header now lies; checked on the meta device, nothing is allocated
        meta[META_KEY] = json.dumps(cfg)
    rewrite_checkpoint(place / "base" / "model.safetensors", huge)
    refused(place, "spectrum", place / "base", words=["does not match the model"])
    refused(place, "reduce", place / "base", "--layer", "head", "--rank", "2", "--out", place / "r",
            words=["does not match the model"])


# ------------------------------------------------------------------ 8. one line, never a traceback

def _drop_head(tensors, meta):
    del tensors["head.weight"]


def _nan_head(tensors, meta):
    tensors["head.weight"].fill_(float("nan"))


CORRUPT = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:200]),
    "json": lambda p: rewrite_checkpoint(p, lambda t, m: {**m, META_KEY: "{not json"}),
    "no-model-key": lambda p: rewrite_checkpoint(p, lambda t, m: {**m, META_KEY: json.dumps({"dataset": "mnist"})}),
    "wrong-type": lambda p: rewrite_checkpoint(
        p, lambda t, m: {**m, META_KEY: json.dumps({**json.loads(m[META_KEY]),
                                                    "model": {**json.loads(m[META_KEY])["model"], "dim": "big"}})}),
    "wrong-arch": lambda p: rewrite_checkpoint(
        p, lambda t, m: {**m, META_KEY: json.dumps({**json.loads(m[META_KEY]),
                                                    "model": {**json.loads(m[META_KEY])["model"], "arch": "xt-vit"}})}),
    "missing-tensor": lambda p: rewrite_checkpoint(p, _drop_head),
    "nan": lambda p: rewrite_checkpoint(p, _nan_head),
}


@pytest.mark.timing  # compare finds the NaN weights of a legacy run when it times inference
@pytest.mark.parametrize("kind", list(CORRUPT))
def test_8_bad_checkpoints_in_every_reader(world, place, kind):
    run = place / "base"
    CORRUPT[kind](run / "model.safetensors")
    out = place / "out"
    refused(place, "spectrum", run)
    refused(place, "reduce", run, "--layer", "head", "--rank", "2", "--out", out)
    refused(place, "search", run, "--budget", "params:0.5", "--layers", "head", "--report", out / "s.json")
    before = snapshot(place)
    if kind == "nan":   # the header is fine, but the file is not the one final.json vouches for
        r = cli("compare", run, "--format", "json", "--out", place.parent / f"{place.name}-cmp.json")
        assert r.exit_code == 0 and "Traceback" not in r.output + r.stderr
        d = json.loads((place.parent / f"{place.name}-cmp.json").read_text())
        assert d["rows"] == [] and d["problems"][0]["status"] == "mismatch"
        assert "model.safetensors" in d["problems"][0]["reason"]
        legacy = place.parent / f"{place.name}-legacy"  # a run from before digests: compare finds the NaN
        shutil.copytree(run, legacy)                    # when it times inference
        final = json.loads((legacy / "final.json").read_text())
        final.pop("digests")
        (legacy / "final.json").write_text(json.dumps(final))
        r = cli("compare", legacy, "--format", "json")
        rows = json.loads(r.stdout)["rows"]
        assert rows[0]["latency"] is None and "non-finite weights" in " ".join(rows[0]["warnings"])
    else:               # the header shows it: a problem row, and compare goes on
        r = cli("compare", run, "--no-speed", "--format", "json")
        assert r.exit_code == 0 and "Traceback" not in r.output + r.stderr
        assert "1 run(s) not compared" in r.stderr
    assert snapshot(place) == before


def test_8_corrupt_or_foreign_resume_files(world, place):
    run = place / "base"
    (run / "final.json").unlink()                           # unfinished: the trainer must read the state
    state = (run / "state.safetensors").read_bytes()
    (run / "state.safetensors").write_bytes(state[:1000])
    refused(place, *train_args(world, place, "base"), words=["resume point"])
    other = place / "other"
    assert cli(*train_args(world, place, "other", "--dim", "24")).exit_code == 0
    shutil.copy(other / "state.safetensors", run / "state.safetensors")   # another model's resume point
    refused(place, *train_args(world, place, "base"), words=["does not belong to this run"])
    (run / "state.safetensors").write_bytes(state)
    good = (run / "config.json").read_text()
    for bad in ("{torn", "[1, 2]", '{"train": {"epochs": "many"}}'):
        (run / "config.json").write_text(bad)
        refused(place, *train_args(world, place, "base"), words=["config.json"])
    (run / "config.json").write_text(good)


def test_8_corrupt_final_json_is_recomputed(world, place):
    """A study finds runs by final.json; an unreadable one is rebuilt from the saved state, never
    taken as "complete" and never a traceback."""
    run = place / "base"
    good = json.loads((run / "final.json").read_text())
    (run / "final.json").write_text("{torn")
    r = cli(*train_args(world, place, "base"))
    assert r.exit_code == 0, r.output
    assert "recomputing" in r.stderr
    again = json.loads((run / "final.json").read_text())
    assert again["test_acc"] == good["test_acc"] and again["status"] == "complete"


def test_8_second_reduction_into_the_same_out(world, place):
    args = ["reduce", place / "base", "--layer", "head", "--rank", "2", "--out", place / "red"]
    assert cli(*args).exit_code == 0
    refused(place, *args, words=["already exists"])


# ------------------------------------------------------------------ 10. debris and a full disk

def test_10_debris_of_killed_writers_is_cleared(world, place):
    run = place / "base"
    (run / ".model.safetensors.k1ll3d_x.tmp").write_bytes(b"half")
    (run / ".notes.txt").write_text("a user's hidden file stays")
    (place / ".red.tmp-abc123_x").mkdir()
    (place / ".red.tmp-abc123_x" / "model.safetensors").write_bytes(b"half")
    (place / ".base.old-xyz12345").mkdir()
    assert cli(*train_args(world, place, "base")).exit_code == 0         # complete: still clears its debris
    assert not (run / ".model.safetensors.k1ll3d_x.tmp").exists() and not (place / ".base.old-xyz12345").exists()
    assert (run / ".notes.txt").exists() and (place / ".red.tmp-abc123_x").exists()
    assert cli("reduce", run, "--layer", "head", "--rank", "2", "--out", place / "red").exit_code == 0
    assert not (place / ".red.tmp-abc123_x").exists()


def test_10_full_disk_keeps_the_files_in_agreement(world, tmp_path, monkeypatch):
    """ENOSPC while writing epoch 2's last.safetensors: nothing of epoch 2 lands; the message names
    the bytes needed; the run then resumes and finishes."""
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".last.safetensors."):
            seen.append(name)
            if len(seen) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    args = train_args(world, tmp_path, "r", "--epochs", "2")
    r = cli(*args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]   # epoch 1's progress line precedes it
    assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0]
    line = errors[0]
    assert "no space left" in line and "bytes needed" in line
    monkeypatch.setattr(os, "fsync", real_fsync)
    run = tmp_path / "r"
    st = load_file(run / "state.safetensors")
    last = load_file(run / "last.safetensors")
    assert all(torch.equal(st[f"model.{k}"], v) for k, v in last.items())   # state and last: epoch 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], line
    r = cli(*args)
    assert r.exit_code == 0 and json.loads((run / "final.json").read_text())["epochs"] == 2


# ------------------------------------------------------------------ 11. umask

def test_11_files_follow_the_umask(world, place):
    for f in ("model.safetensors", "config.json", "state.safetensors", "metrics.jsonl", "final.json"):
        assert stat.S_IMODE((world / "runs" / "base" / f).stat().st_mode) == 0o644, f
    red = world / "runs" / "base-red"
    assert stat.S_IMODE(red.stat().st_mode) == 0o755
    assert stat.S_IMODE((red / "model.safetensors").stat().st_mode) == 0o644
    old = os.umask(0o027)
    try:
        assert cli("spectrum", place / "base", "--out", place / "s.csv").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((place / "s.csv").stat().st_mode) == 0o640


def test_8_corrupt_final_json_inside_a_study(tmp_path, monkeypatch):
    """A study whose runs' final.json files were damaged: the trained run's is recomputed from its
    state, the reduced run (laser-tool's own) is made again; exit 0, no traceback."""
    from laser_tool.data import files as data
    from conftest import SMALL_FRONTIER, TINY_PRESET, write_fashion
    from laser_tool.study import frontier
    from trainers import presets
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})
    monkeypatch.setitem(presets.PRESETS, "quick", TINY_PRESET)
    monkeypatch.setitem(frontier.FRONTIERS, "quick", SMALL_FRONTIER)
    write_fashion(tmp_path / "data" / "fashion-mnist")
    args = ["study", "--preset", "quick", "--out", tmp_path / "st", "--device", "cpu", "--data-dir", tmp_path / "data"]
    assert cli(*args).exit_code == 0
    runs = tmp_path / "st" / "runs"
    damaged = [runs / "baseline-s0", runs / "svd-k0.5-s0"]
    good = {p: json.loads((p / "final.json").read_text())["test_acc"] for p in damaged}
    for p in damaged:
        (p / "final.json").write_text('{"status": "compl')
    r = cli(*args)
    assert r.exit_code == 0 and "Traceback" not in r.output + r.stderr, r.stderr
    for p in damaged:
        assert json.loads((p / "final.json").read_text())["test_acc"] == good[p]
