"""study: frontier and grid plans, matched ranks, a tiny end-to-end frontier on synthetic IDX data, resume."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from laser_tool.errors import UserError
from laser_tool.models import ModelSpec, build_model
from laser_tool.models.surgery import named_linears

from laser_tool.analysis import costs
from laser_tool.data import fit_model
from laser_tool.study.compute import cut_spec
from laser_tool.study import frontier
from laser_tool import study
from conftest import cli, one_line_error, study_args


FAMILY_RUNS = [f"{f}-k{k}-s0" for f in ("narrower", "lowrank", "lowrank-structured", "progressive") for k in (0.5, 0.25)]


def test_frontier_study_runs_reports_and_resumes_without_redoing_work(tiny_study):
    tmp, calls = tiny_study
    lines = []
    request = study.StudyRequest("quick", out=tmp / "st", device="cpu", data_dir=tmp / "data",
                                 train_opts={"augment": False, "label_smoothing": 0.1})
    report = study.run_study(request, log=lines.append)
    assert sorted(calls["train"]) == sorted(["baseline-s0"] + FAMILY_RUNS)
    # every budget of one baseline and method in one call: one decomposition and calibration per layer
    assert calls["reduce"] == [["svd-k0.25-s0", "svd-k0.5-s0"], ["whiten-k0.25-s0", "whiten-k0.5-s0"]]
    # each cut healed, and the baseline itself trained on as long (the heal's compute control)
    assert sorted(calls["heal"]) == ["baseline-plus1-k0.25-s0", "baseline-plus1-k0.5-s0"] + [
        f"{m}-k{k}-heal1-s0" for m in ("svd", "whiten") for k in (0.25, 0.5)]
    assert sum("done, test acc" in ln for ln in lines) == 9 + 2 + 6  # the group's second budget is found done
    # Healing trains with the run's own recipe (here: no augmentation, label smoothing 0.1, its batch size)
    runs = tmp / "st" / "runs"
    base_cfg = json.loads((runs / "baseline-s0" / "config.json").read_text())
    healed = json.loads((runs / "svd-k0.5-heal1-s0" / "config.json").read_text())
    for k in ("augment", "label_smoothing", "batch_size", "weight_decay", "seed", "val_size", "dataset"):
        assert healed["train"][k] == base_cfg["train"][k], k
    assert healed["train"]["augment"] is False and healed["resolved"]["augment"] == base_cfg["resolved"]["augment"]
    assert healed["lr"] == pytest.approx(base_cfg["lr"] * study.HEAL_LR_FACTOR) and healed["epochs"] == 1
    assert healed["init_source"]["run"].endswith("svd-k0.5-s0") and healed["heal"]["epochs"] == 1
    assert healed["model"]["layers"] and healed["reduction"]  # the factored layers were kept
    md = report.read_text()
    # report.md opens with the answer, one line per budget, and lists how to make every row
    assert md.index("## The answer") < md.index("## All rows")
    assert "- At keep ≈ 0.50" in md and "- At keep ≈ 0.2" in md  # the budgets as the rows reach them
    assert "laser-tool train --preset quick --variant lowrank --target attn --target ffn --keep 0.5" in md
    assert "--reduce-at 0.333" in md and "--method whiten --store factored" in md
    assert all((runs / n / "predictions.safetensors").exists() for n in calls["train"] + calls["heal"])
    assert (tmp / "st" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp / "st" / "results.json").read_text())["rows"]
    fams = {r["family"] for r in rows}
    assert {"baseline", "narrower", "train-time", "progressive", "post-hoc", "healed", "continued"} <= fams
    assert all(r["baseline"] == "baseline" for r in rows if r["family"] != "baseline")  # one same-recipe baseline
    base_row, heal_row = (next(r for r in rows if r["family"] == f) for f in ("baseline", "healed"))
    assert heal_row["train_seconds"] > base_row["train_seconds"]  # the heal adds to its baseline's training
    assert heal_row["train_flops"] > base_row["train_flops"]  # and its FLOPs to the baseline's whole training
    # one compute control per budget: the dense model trained on for what that budget's heal costs (FLOPs,
    # up to the optimizer steps' rounding), so less than the heal's 1 epoch
    name = {Path(r["runs"][0]).name: r for r in rows}
    for keep in ("0.25", "0.5"):
        control, heal = name[f"baseline-plus1-k{keep}-s0"], name[f"svd-k{keep}-heal1-s0"]
        assert control["family"] == "continued" and control["keep"] == 1.0
        assert re.fullmatch(r"baseline \+ 0\.\d+ more ep \(control\)", control["label"]), control["label"]
        extra = control["train_flops"] - base_row["train_flops"], heal["train_flops"] - base_row["train_flops"]
        assert extra[0] == pytest.approx(extra[1], rel=0.25)

    for k in calls:
        calls[k].clear()
    lines.clear()
    study.run_study(request, log=lines.append)  # second invocation: nothing new is trained, reduced or healed
    assert calls == {"train": [], "reduce": [], "heal": []}
    assert sum("already complete" in ln for ln in lines) == 9 + 4 + 6
    calls_made = json.loads((tmp / "st" / "study.json").read_text())["invocations"]
    assert [c["runs_made"] for c in calls_made] == [17, 0]
    assert "over 2 invocation(s)" in (tmp / "st" / "report.md").read_text()

    # An unfinished run (no final.json) is continued, and only it; so is a missing budget of a group.
    (runs / "lowrank-k0.5-s0" / "final.json").unlink()
    (runs / "whiten-k0.25-s0" / "final.json").unlink()
    study.run_study(request, log=lines.append)
    assert calls == {"train": ["lowrank-k0.5-s0"], "reduce": [["whiten-k0.25-s0"]], "heal": []}


def test_frontier_parameter_counts_match_each_familys_formula(tmp_path):
    """Per budget, the planned models keep the requested fraction of the targeted layers (attention and
    FFN), to within each family's granularity (an integer width, rank or head size)."""
    steps, notes = study.plan("quick-wide", 1, tmp_path)
    fit = dict(image_size=28, channels=1, num_classes=10)
    base = replace(next(s for s in steps if s.name == "baseline-s0").cfg.model, **fit)
    for st in steps:
        if st.kind != "train" or st.name == "baseline-s0":
            continue
        fam, k = st.name.rsplit("-s", 1)[0].rsplit("-k", 1)
        keep, spec = float(k), replace(st.cfg.model, **fit)
        if fam == "progressive":  # dense until the cut; the cut is reduce's params:F on every targeted layer
            assert (st.cfg.reduce_to, st.cfg.reduce_layers) == (f"params:{keep:g}", ["*:all"])
            assert float(st.cfg.reduce_at) == pytest.approx(st.cfg.epochs / 3)
            continue
        got, layers = costs.keep(spec, base)
        assert {n.rsplit(".", 1)[0].split(".", 2)[-1] for n in layers} == {"attn", "ffn"}
        if fam == "narrower":  # widths rounded to an integer: mlp 256 and head size 32
            assert abs(spec.mlp_dim - keep * 256) <= 0.5 and abs(spec.dim_head - keep * 32) <= 0.5
            assert got == pytest.approx(keep, abs=0.5 / 32 + 0.01)
        else:  # low-rank: rank int(keep * d_in*d_out/(d_in+d_out)) plus the seed's two biases
            assert spec.keep == keep and got == pytest.approx(keep, abs=0.02)
    assert not notes
    cuts = [s for s in steps if s.kind == "reduce" and not s.search]
    assert [(s.name, s.selectors) for s in cuts if s.method == "svd"] == [
        (f"svd-k{k:g}-s0", [f"*:all=params:{k:g}"]) for k in (0.5, 0.25, 0.1)]
    assert len({s.group for s in cuts}) == 2  # one decomposition per method for all budgets
    # the allocated families: a search per budget under the uniform cut's parameters, one sweep per method
    searched = [s for s in steps if s.search]
    assert [(s.name, s.selectors, s.search["budget"]) for s in searched if s.method == "svd"] == [
        (f"svd-alloc-k{k:g}-s0", ["*:all"], f"uniform:{k:g}") for k in (0.5, 0.25, 0.1)]
    assert len({s.group for s in searched}) == 2 and not {s.group for s in searched} & {s.group for s in cuts}


def test_frontier_options_and_their_errors(tmp_path):
    steps, _ = study.plan("quick", 1, tmp_path, frontier_opts=dict(budgets="0.3,0.6", targets="ffn",
                                                                   families="narrower,svd"))
    assert [s.name for s in steps] == ["baseline-s0", "narrower-k0.6-s0", "narrower-k0.3-s0", "svd-k0.6-s0",
                                       "svd-k0.6-heal1-s0", "svd-k0.3-s0", "svd-k0.3-heal1-s0",
                                       "baseline-plus1-k0.6-s0", "baseline-plus1-k0.3-s0"]
    # each budget's control trains the dense model for the FLOPs of that budget's heal, not for its epochs
    for keep, control in ((0.6, steps[-2]), (0.3, steps[-1])):
        dense = fit_model(steps[0].cfg.model, steps[0].cfg.dataset)
        heal_flops = 1 * costs.step_flops(cut_spec(dense, [f"*:mlp=params:{keep:g}"]))[0]
        assert 0 < control.cfg.epochs < 1 and control.cfg.warmup_epochs == 0
        assert control.cfg.epochs * costs.step_flops(dense)[0] == pytest.approx(heal_flops, rel=0.01)
    assert steps[-1].cfg.epochs < steps[-2].cfg.epochs
    assert steps[1].cfg.model.mlp_dim == round(0.6 * 256) and steps[1].cfg.model.dim_head == 32  # ffn only
    for opts, msg in ((dict(budgets="0.5,1"), r"budget 1 is outside \(0, 1\)"),
                      (dict(budgets="half"), "'half' is not a number"),
                      (dict(families="narrower,magic"), "unknown family 'magic'"),
                      (dict(targets="head"), "choose ffn, attn or all")):
        with pytest.raises(UserError, match=msg):
            study.plan("quick", 1, tmp_path, frontier_opts=opts)
    with pytest.raises(UserError, match="--budgets applies to the frontier presets"):
        study.plan("seed-xt", 1, tmp_path, frontier_opts=dict(budgets="0.5"))


def test_study_takes_train_settings_and_refuses_to_mix_them(tiny_study, monkeypatch):
    """`--epochs` (once a TypeError) and any train setting reach every run and are part of its identity:
    a second invocation with other settings into the same --out is refused, nothing is reused."""
    tmp, calls = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "svd")))
    common = ["study", "--preset", "quick", "--out", tmp / "st", "--device", "cpu", "--data-dir", tmp / "data"]
    res = cli(*common, "--epochs", "1", "--lr", "0.002", "--batch-size", "25")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines() == [str(tmp / "st" / "report.md")]  # the path, once
    cfg = json.loads((tmp / "st" / "runs" / "narrower-k0.5-s0" / "config.json").read_text())
    assert (cfg["epochs"], cfg["lr"], cfg["batch_size"]) == (1, 0.002, 25)
    made = sum(len(v) for v in calls.values())
    one_line_error(cli(*common, "--epochs", "2", "--lr", "0.002", "--batch-size", "25"),
                   "holds runs made with other settings", "epochs")
    assert sum(len(v) for v in calls.values()) == made


def test_plan_rows_and_shared_post_hoc_twins(tmp_path):
    steps, notes = study.plan("seed-xt", 2, tmp_path)
    trains = [s.name for s in steps if s.kind == "train"]
    assert len(trains) == 18 and trains[:9] == [f"{r.id}-{r.slug}-s0" for r in study.GRIDS["seed-xt"]]
    # D (skl ffn-in) and E (lowrank ffn-in) hold the same budget on the same layers: one twin serves both
    reduces = [s.name for s in steps if s.kind == "reduce" and s.name.endswith("-s0")]
    assert reduces == [f"{r}-posthoc-{m}-s0" for r in "BDFGI" for m in ("svd", "whiten")]
    steps, notes = study.plan("seed-vit-tiny", 1, tmp_path)
    assert [s.kind for s in steps] == ["train", "train"] and "T2" in notes[0]
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of quick, quick-wide, frontier"):
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


def test_cli_errors_are_one_line(tmp_path, isolated):
    line = one_line_error(cli("study", "--preset", "nope", "--out", tmp_path / "s"))
    assert line == ("error: unknown preset 'nope'; choose one of quick, quick-wide, frontier, frontier-seed-vit-tiny, quick-narrow, "
                    "seed-xt, seed-vit-tiny")
    (tmp_path / "empty").mkdir()
    one_line_error(cli("study", "--preset", "quick", "--out", tmp_path / "s", "--data-dir", tmp_path / "empty",
                       "--device", "cpu"), "fashion-mnist not found")
    assert not (tmp_path / "s" / "runs").exists()


def test_match_compute_trains_twins_as_long_as_a_heal_costs_and_answers_at_equal_compute(tiny_study, monkeypatch):
    """--match-compute: each train-time, narrower and progressive row gets a twin whose training FLOPs
    (counted from its run, as the table counts them) are within 5% of the healed rows'; the answer is
    given at equal parameters and again at equal parameters and compute."""
    tmp, calls = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier(
        "quick", (0.5,), "all", ("narrower", "lowrank", "progressive", "svd"), heal_epochs=1))
    report = study.run_study(study.StudyRequest("quick", out=tmp / "st", device="cpu", data_dir=tmp / "data",
                                                train_opts={"augment": False}, frontier_opts={"match_compute": True}),
                             log=lambda s: None)
    runs = tmp / "st" / "runs"
    twins = [f"{f}-k0.5-iso-s0" for f in ("narrower", "lowrank", "progressive")]
    assert set(twins) <= set(calls["train"])
    heal = costs.trained_flops(json.loads((runs / "svd-k0.5-heal1-s0" / "config.json").read_text()))
    for name in twins:
        config = json.loads((runs / name / "config.json").read_text())
        assert config["train"]["matched_to"] == {"base_epochs": 1, "heal_epochs": 1} and config["train"]["epochs"] > 1
        assert costs.trained_flops(config) == pytest.approx(heal, rel=0.05), name
        plain = json.loads((runs / name.replace("-iso", "") / "config.json").read_text())
        assert costs.trained_flops(plain) < 0.9 * heal  # the iso-epoch row had less compute
    rows = json.loads((tmp / "st" / "results.json").read_text())["rows"]
    iso = [r for r in rows if r["iso_compute"]]
    assert len({r["label"] for r in iso}) == 3 and all(r["baseline"] == "baseline" and "iso-compute" in r["label"] for r in iso)
    md = report.read_text()
    assert "matched in" in md and "parameters + training FLOPs" in md


def test_match_compute_needs_heals_and_rows_to_match(tmp_path):
    for opts, msg in ((dict(families="svd,whiten"), "has only post-hoc ones"),
                      (dict(families="narrower,lowrank"), "add a post-hoc family"),):
        with pytest.raises(UserError, match=msg):
            study.plan("quick", 1, tmp_path, frontier_opts=dict(opts, match_compute=True))
    with pytest.raises(UserError, match="give --heal-epochs 1 or more"):
        study.plan("quick", 1, tmp_path, heal_epochs=0, frontier_opts=dict(match_compute=True))
    one_line_error(cli("study", "--preset", "seed-xt", "--match-compute", "--out", tmp_path / "x"),
                   "--match-compute applies to the frontier presets")


def test_lr_grid_trains_every_point_and_the_report_keeps_the_validation_best(tiny_study, monkeypatch):
    tmp, calls = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "svd"),
                                                                       heal_epochs=1))
    report = study.run_study(study.StudyRequest("quick", out=tmp / "st", device="cpu", data_dir=tmp / "data",
                                                train_opts={"augment": False}, frontier_opts={"lr_grid": "2,0.5"}),
                             log=lambda s: None)
    assert sorted(calls["train"]) == ["baseline-s0", "narrower-k0.5-lr0.5-s0", "narrower-k0.5-lr2-s0"]
    assert sorted(calls["heal"]) == ["baseline-plus1-k0.5-s0", "svd-k0.5-heal1-lr0.5-s0", "svd-k0.5-heal1-lr2-s0"]
    runs = tmp / "st" / "runs"
    val = {n: json.loads((runs / n / "final.json").read_text())["val_acc"] for n in calls["train"] + calls["heal"]}
    rows = json.loads((tmp / "st" / "results.json").read_text())["rows"]
    for fam, names in (("narrower", ["narrower-k0.5-lr0.5-s0", "narrower-k0.5-lr2-s0"]),
                       ("healed", ["svd-k0.5-heal1-lr0.5-s0", "svd-k0.5-heal1-lr2-s0"])):
        kept = {r["label"] for r in rows if r["family"] == fam}
        best = max(names, key=lambda n: val[n])  # ties: the first point, as max() keeps it
        assert len(kept) == 1 and f"lr×{best.split('-lr')[1].split('-')[0]}" in kept.pop()
    assert report.read_text().count("lr grid: ") == 2


def test_lr_grid_errors(tmp_path):
    for text, msg in (("0,1", "not a positive multiple"), ("1,1", "given twice"), ("1,fast", "is not a number"),
                      ("-2", "not a positive multiple")):
        with pytest.raises(UserError, match=msg):
            study.plan("quick", 1, tmp_path, frontier_opts=dict(lr_grid=text))
    steps, _ = study.plan("frontier", 1, tmp_path)   # the frontier preset tries 0.5, 1 and 2 by default
    assert {s.cfg.lr_grid["mult"] for s in steps if s.kind == "train" and s.cfg.lr_grid} == {0.5, 1.0, 2.0}


def test_a_study_directory_whose_rows_have_other_seeds_is_refused(tmp_path):
    """A run a study finds by name but trained with another seed than its plan's (so its split and batch
    order differ from the rows it would be paired with) is refused in one line naming the seed."""
    from laser_tool.study.run import check_same_settings
    steps, _ = study.plan("quick", 1, tmp_path, frontier_opts=dict(families="narrower,svd", budgets="0.5"))
    row = next(s for s in steps if s.name == "narrower-k0.5-s0")
    (tmp_path / "runs" / row.name).mkdir(parents=True)
    (tmp_path / "runs" / row.name / "config.json").write_text(json.dumps({"train": {**row.cfg.to_dict(), "seed": 3}}))
    with pytest.raises(UserError, match=r"narrower-k0.5-s0: seed differ"):
        check_same_settings(tmp_path / "runs", steps)
    check_same_settings(tmp_path / "runs", [s for s in steps if s.name != row.name])  # the others pass


def test_epochs_grid_gives_each_length_its_own_baseline_answer_and_plot_and_resumes(tiny_study, monkeypatch):
    """An epochs grid of 1 and 2: every row once per length, each post-hoc row cutting the baseline of its
    own length and every row tested against that baseline; the answer and the plot per length; a second
    invocation finds everything done and makes nothing."""
    tmp, calls = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "ffn",
                                                                       ("narrower", "progressive", "svd"), heal_epochs=1))
    kw = dict(out=tmp / "st", device="cpu", data_dir=tmp / "data", train_opts={"augment": False})
    study.run_study(study.StudyRequest("quick", **kw), log=lambda s: None)  # the preset's own length (1 epoch), no grid
    plain = ["baseline-s0", "narrower-k0.5-s0", "progressive-k0.5-s0"]
    assert sorted(calls["train"]) == sorted(plain)
    kw["frontier_opts"] = {"epochs_grid": "2,1"}
    report = study.run_study(study.StudyRequest("quick", extend=True, **kw), log=lambda s: None)
    # the preset's own length keeps the plain names, so the grid reuses those rows; the other carries -e2
    assert sorted(calls["train"]) == sorted(plain + ["baseline-e2-s0", "narrower-k0.5-e2-s0", "progressive-k0.5-e2-s0"])
    runs = tmp / "st" / "runs"
    cfg = lambda n: json.loads((runs / n / "config.json").read_text())
    assert cfg("svd-k0.5-e2-s0")["parent"].endswith("baseline-e2-s0")
    assert cfg("svd-k0.5-s0")["parent"].endswith("baseline-s0")
    assert cfg("progressive-k0.5-e2-s0")["train"]["reduce_at"] == "0.666667"  # a third of its own run
    assert [json.loads(ln)["epoch"] for ln in (runs / "baseline-e2-s0" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    rows = json.loads((tmp / "st" / "results.json").read_text())["rows"]
    base_len = {r["label"]: r["length"] for r in rows if r["family"] == "baseline"}
    assert sorted(base_len.values()) == [1, 2]
    for r in rows:
        if r["family"] != "baseline" and r["baseline"] is not None:
            length = 2 if any("-e2-" in p for p in r["runs"]) else 1
            assert r["length"] == length and base_len[r["baseline"]] == length, r["label"]
    text = report.read_text()
    assert "| epochs | keep |" in text and "After 1 epochs, at keep" in text and "After 2 epochs, at keep" in text
    from laser_tool.analysis.plot import plot
    fig = plot(rows)
    titles = [ax.get_title() for ax in fig.axes if ax.get_gid() == "keep"]
    assert len(titles) == 2 and titles[0].endswith(", 1 epochs") and titles[1].endswith(", 2 epochs")
    made = {k: len(v) for k, v in calls.items()}
    stamps = {p.name: p.stat().st_mtime_ns for p in runs.glob("*/final.json")}
    study.run_study(study.StudyRequest("quick", extend=True, **kw), log=lambda s: None)  # resumes: nothing trained, cut or healed again, no file rewritten
    assert {k: len(v) for k, v in calls.items()} == made
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*/final.json")} == stamps
    one_line_error(cli("study", "--preset", "quick", "--out", tmp / "st", "--data-dir", tmp / "data", "--device", "cpu",
                       "--no-augment", "--epochs-grid", "1,2,3"), "--epochs-grid 1,2,3 (the study has none)")
    # nothing redone or lost
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*/final.json")} == stamps


def test_epochs_grid_errors(tmp_path):
    for text, msg in (("0,2", "0 epochs trains nothing"), ("2,2", "2 is given twice"), ("two", "is not a number"),
                      ("-1", "-1 epochs trains nothing"), ("nan", "is not a number")):
        with pytest.raises(UserError, match=msg):
            study.plan("quick", 1, tmp_path, frontier_opts=dict(epochs_grid=text))
    with pytest.raises(UserError, match="--epochs and --epochs-grid both given"):
        study.plan("quick", 1, tmp_path, epochs=3, frontier_opts=dict(epochs_grid="2,6"))
    for args in (["--epochs-grid", "0"], ["--epochs-grid", "1.5,x"], ["--preset", "seed-xt", "--epochs-grid", "2"]):
        args = (["--preset", "quick"] if "--preset" not in args else []) + args
        one_line_error(cli("study", *args, "--out", tmp_path / "x"))
        assert not (tmp_path / "x").exists()
    fractional, _ = study.plan("quick", 1, tmp_path, frontier_opts=dict(epochs_grid="2,7.2867"))
    assert [(s.name, s.cfg.epochs) for s in fractional if s.name.startswith("baseline-") and s.kind == "train"] == [
        ("baseline-s0", 2), ("baseline-e7.2867-s0", 7.2867)]
    steps, _ = study.plan("quick", 2, tmp_path, frontier_opts=dict(epochs_grid="2,6,18"))
    bases = [s for s in steps if s.name.startswith("baseline-") and s.kind == "train"]
    assert [(s.name, s.cfg.epochs) for s in bases] == [("baseline-s0", 2), ("baseline-s1", 2), ("baseline-e6-s0", 6),
                                                       ("baseline-e6-s1", 6), ("baseline-e18-s0", 18), ("baseline-e18-s1", 18)]
    prog = {s.name: s.cfg.reduce_at for s in steps if s.name.startswith("progressive-k0.1")}
    assert prog == {"progressive-k0.1-s0": "0.666667", "progressive-k0.1-s1": "0.666667", "progressive-k0.1-e6-s0": "2",
                    "progressive-k0.1-e6-s1": "2", "progressive-k0.1-e18-s0": "6", "progressive-k0.1-e18-s1": "6"}
    heals = {s.name: s.parent for s in steps if s.kind == "heal" and s.name.startswith("svd-k0.1")}
    assert heals["svd-k0.1-heal1-e18-s1"] == "svd-k0.1-e18-s1"
    cut = next(s for s in steps if s.name == "svd-k0.1-e18-s1")
    assert cut.parent == "baseline-e18-s1"


def test_study_takes_trains_epochs_option_and_builds_one_request(tmp_path, monkeypatch):
    """`study` and `train` share one --epochs (a float): a fractional length plans rows of that length (the
    trainer runs round(E x steps per epoch) steps), 2.0 is the study of 2, and under 1 is one clear line."""
    seen = []
    monkeypatch.setattr(study, "study_status", lambda request: seen.append(request) or [])
    base = ["study", "--preset", "quick", "--out", str(tmp_path / "st"), "--status", "--lr", "0.002"]
    for given, want in (("1.5", 1.5), ("2.0", 2)):
        res = cli(*base, "--epochs", given)
        assert res.exit_code == 0, res.output
        assert seen[-1].epochs == want and type(seen[-1].epochs) is type(want)
        assert seen[-1].train_opts == {"lr": 0.002} and seen[-1].frontier_opts == {}
    steps, _ = study.plan("quick", 1, tmp_path, epochs=1.5)
    assert {st.cfg.epochs for st in steps if st.kind == "train"} == {1.5}
    one_line_error(cli(*base, "--epochs", "0.5"), "--epochs must be at least 1 and --heal-epochs at least 0")
    one_line_error(cli(*base, "--device", "cuda:1"), "unknown device 'cuda:1'")


def test_narrower_of_a_factory_model_without_widths_is_one_line_before_any_work(tiny_study, monkeypatch):
    """A `python:` factory's model declares no head width the narrower family could scale: the study says so
    in one line before it writes anything (it used to die with a TypeError traceback while planning)."""
    tmp, calls = tiny_study
    example = Path(__file__).resolve().parents[1] / "examples" / "my_models.py"  # the README's own small ViT
    (tmp / "own_vit_p32.py").write_text(example.read_text())
    monkeypatch.syspath_prepend(str(tmp))
    res = cli(*study_args(tmp / "st", tmp, "--arch", "python:own_vit_p32:small_vit", "--families", "narrower,svd"))
    one_line_error(res, "narrower", "python:own_vit_p32:small_vit", "--families")
    assert not (tmp / "st").exists() and calls == {"train": [], "reduce": [], "heal": []}
