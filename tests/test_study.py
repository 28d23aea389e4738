"""study: the grid plan, matched ranks, a tiny end-to-end study on synthetic IDX data, and resume."""
import json
import struct
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from laser_tool.cli import main
from laser_tool.errors import UserError
from laser_tool.models import ModelSpec, build_model
from laser_tool.surgery import named_linears

from laser_tool import data, study
from laser_tool import reduce as reducer
from trainers import presets
from trainers import train as trainer

TINY_PRESET = {
    "model": dict(arch="vit-tiny", dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, patch_size=7,
                  dropout=0.0, emb_dropout=0.0),
    "dataset": "fashion-mnist", "epochs": 1, "batch_size": 50, "lr": 1e-3, "weight_decay": 0.0,
    "warmup_epochs": 0.0, "grad_clip": 1.0, "val_size": 50,
}


def write_fashion(folder, n_train=250, n_test=60):
    """Fashion-MNIST in its real IDX format (big-endian magic and dims, then uint8 data)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n, dtype=np.uint8)
        x = (rng.integers(0, 60, (n, 28, 28)) + y[:, None, None] * 19).astype(np.uint8)  # learnable a little
        for base, arr, magic in zip(data.IDX_FILES[split], (x, y), (0x803, 0x801)):
            (folder / base).write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
                                        + arr.tobytes())


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """The quick grid on a tiny model and tiny data; counts the calls that do the work."""
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})
    monkeypatch.setitem(presets.PRESETS, "quick", TINY_PRESET)
    write_fashion(tmp_path / "data" / "fashion-mnist")
    calls = {"train": [], "reduce": [], "heal": []}
    real_train, real_reduce = trainer.train, reducer.reduce_run

    def train(cfg, *a, **k):  # healing is a trainer run started from the reduced run (--init-from)
        calls["heal" if cfg.init_from else "train"].append(cfg.name)
        return real_train(cfg, *a, **k)

    def reduce(*a, **k):
        calls["reduce"].append(a[0])
        return real_reduce(*a, **k)
    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(reducer, "reduce_run", reduce)
    return tmp_path, calls


def test_study_runs_reports_and_resumes_without_redoing_work(tiny_study):
    tmp, calls = tiny_study
    lines = []
    kw = dict(out=tmp / "st", device="cpu", data_dir=tmp / "data", heal_epochs=1, log=lines.append,
              train_opts={"augment": False, "label_smoothing": 0.1})
    report = study.run_study("quick", **kw)
    assert sorted(calls["train"]) == ["A-baseline-s0", "B-half-ffn-s0", "C-lowrank-ffn-s0",
                                      "D-lowrank-ffn-structured-s0"]
    # C and D hold the same budget (D only starts and learns differently): one post-hoc twin serves both
    assert len(calls["reduce"]) == 2 and len(calls["heal"]) == 2  # svd + whiten, each healed
    assert len(lines) == 7 and all("done, test acc" in ln for ln in lines)  # a line per run
    # Healing trains with the run's own recipe (here: no augmentation, label smoothing 0.1, its batch size)
    base_cfg = json.loads((tmp / "st" / "runs" / "A-baseline-s0" / "config.json").read_text())
    healed = json.loads((tmp / "st" / "runs" / "B-posthoc-svd-heal1-s0" / "config.json").read_text())
    for k in ("augment", "label_smoothing", "batch_size", "weight_decay", "seed", "val_size", "dataset"):
        assert healed["train"][k] == base_cfg["train"][k], k
    assert healed["train"]["augment"] is False and healed["resolved"]["augment"] == base_cfg["resolved"]["augment"]
    assert healed["lr"] == pytest.approx(base_cfg["lr"] * study.HEAL_LR_FACTOR) and healed["epochs"] == 1
    assert healed["init_source"]["run"].endswith("B-posthoc-svd-s0") and healed["heal"]["epochs"] == 1
    assert healed["model"]["layers"] and healed["reduction"]  # the factored layers were kept
    md = report.read_text()
    assert "| baseline | baseline | 1 |" in md and "↳ baseline -> svd ffn-in+ffn-out" in md
    assert "+ heal 1ep" in md and "laser-tool train --preset quick --variant lowrank --target ffn" in md
    assert "laser-tool reduce" in md and "--method whiten --store factored" in md
    # report.md opens with the answer: the best family at the budget, with Holm-adjusted margins
    assert md.index("## The answer") < md.index("## All rows") and "- At keep ≈ 0.5" in md
    assert all((tmp / "st" / "runs" / n / "predictions.safetensors").exists() for n in calls["train"])
    assert (tmp / "st" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp / "st" / "results.json").read_text())["rows"]
    svd = next(r for r in rows if r["label"].endswith("svd ffn-in+ffn-out r=5") and r["family"] == "post-hoc")
    assert svd["paired_with"] in ("half-ffn (mlp 16)", "lowrank ffn r=0.5", "lowrank ffn r=0.5 structured spectral")
    assert all(r["images_per_s"] for r in rows)
    prog = [r["paired_with"] for r in rows if r["family"] == "progressive"]  # D sits beside C and its twins
    assert "lowrank ffn r=0.5" in prog and "--reduce-at 0.3333" in md

    for k in calls:
        calls[k].clear()
    lines.clear()
    study.run_study("quick", **kw)  # second invocation: nothing new is trained, reduced or healed
    assert calls == {"train": [], "reduce": [], "heal": []}
    assert sum("already complete" in ln for ln in lines) == 8
    calls_made = json.loads((tmp / "st" / "study.json").read_text())["invocations"]
    assert [c["runs_made"] for c in calls_made] == [8, 0]
    assert "over 2 invocation(s)" in (tmp / "st" / "report.md").read_text()

    # An unfinished run (no final.json) is continued, and only it.
    (tmp / "st" / "runs" / "C-lowrank-ffn-s0" / "final.json").unlink()
    study.run_study("quick", **kw)
    assert calls == {"train": ["C-lowrank-ffn-s0"], "reduce": [], "heal": []}


def test_study_takes_train_settings_and_refuses_to_mix_them(tiny_study):
    """`--epochs` (once a TypeError) and any train setting reach every run and are part of its identity:
    a second invocation with other settings into the same --out is refused, nothing is reused."""
    tmp, calls = tiny_study
    cli = CliRunner()
    common = ["study", "--preset", "quick", "--out", str(tmp / "st"), "--device", "cpu",
              "--data-dir", str(tmp / "data")]
    res = cli.invoke(main, common + ["--epochs", "1", "--lr", "0.002", "--batch-size", "25"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines() == [str(tmp / "st" / "report.md")]  # the path, once
    cfg = json.loads((tmp / "st" / "runs" / "B-half-ffn-s0" / "config.json").read_text())
    assert (cfg["epochs"], cfg["lr"], cfg["batch_size"]) == (1, 0.002, 25)
    made = sum(len(v) for v in calls.values())
    res = cli.invoke(main, common + ["--epochs", "2", "--lr", "0.002", "--batch-size", "25"])
    assert res.exit_code == 2 and "holds runs made with other settings" in res.output and "epochs" in res.output
    assert len(res.output.strip().splitlines()) == 1 and sum(len(v) for v in calls.values()) == made


def test_plan_rows_and_shared_post_hoc_twins(tmp_path):
    steps, notes = study.plan("seed-xt", 2, tmp_path)
    trains = [s.name for s in steps if s.kind == "train"]
    assert len(trains) == 18 and trains[:9] == [f"{r.id}-{r.slug}-s0" for r in study.GRIDS["seed-xt"]]
    # D (skl ffn-in) and E (lowrank ffn-in) hold the same budget on the same layers: one twin serves both
    reduces = [s.name for s in steps if s.kind == "reduce" and s.name.endswith("-s0")]
    assert reduces == [f"{r}-posthoc-{m}-s0" for r in "BDFGI" for m in ("svd", "whiten")]
    steps, notes = study.plan("seed-vit-tiny", 1, tmp_path)
    assert [s.kind for s in steps] == ["train", "train"] and "T2" in notes[0]
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of quick"):
        study.plan("nope", 1, tmp_path)


def test_matched_ranks_give_the_variants_parameter_count():
    base = ModelSpec(arch="vit-tiny", image_size=28, channels=1, patch_size=7, dim=64, depth=2, heads=2,
                     dim_head=32, mlp_dim=128)
    for variant, targets in (("lowrank", ["ffn-in"]), ("skl", ["attn-out"]), ("half-ffn", [])):
        var = replace(base, variant=variant, targets=targets)
        sel = study.matched_selectors(base, var)
        vparams = {r["name"]: r["params"] for r in named_linears(build_model(var))}
        bshape = {r["name"]: (r["in_features"], r["out_features"]) for r in named_linears(build_model(base))}
        assert sel
        for s in sel:
            name, r = s.split("=")
            d_in, d_out = bshape[name]
            factored = int(r) * (d_in + d_out) + d_out  # U, V and the kept bias
            assert abs(factored - vparams[name]) <= (d_in + d_out) / 2 + 1
    wide = replace(base, variant="dyad", targets=["ffn"], mlp_dim=512, n_dyad=4)
    assert study.matched_selectors(base, wide) == []


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})
    r = CliRunner()
    res = r.invoke(main, ["study", "--preset", "nope", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and res.output.strip() == ("error: unknown preset 'nope'; choose one of quick, "
                                                        "seed-xt, seed-vit-tiny")
    (tmp_path / "empty").mkdir()
    res = r.invoke(main, ["study", "--preset", "quick", "--out", str(tmp_path / "s"), "--data-dir",
                          str(tmp_path / "empty"), "--device", "cpu"])
    assert res.exit_code == 2 and "fashion-mnist not found" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "s" / "runs").exists()
