"""compare/report: statistics against hand formulas, grouping, pairing, plot, bad runs, CLI."""
import json
import math
from dataclasses import replace

import pytest
from click.testing import CliRunner
from scipy.special import betainc

import laser_tool
from laser_tool import compare as cmp
from laser_tool.checkpoint import save_model
from laser_tool.cli import main
from laser_tool.errors import UserError
from laser_tool.models import ModelSpec, build_model, count_params

from laser_tool import report

TINY = ModelSpec(arch="vit-tiny", image_size=8, channels=1, num_classes=10, patch_size=4, dim=32, depth=2,
                 heads=2, dim_head=16, mlp_dim=64, dropout=0.0, emb_dropout=0.0)


def make_run(root, name, acc, seed=0, spec=TINY, dataset="fashion-mnist", params=10_000, reduction=None,
             final=True, model=False, epochs=2, heal=None, **final_extra):
    """A run directory as the trainer / reducer write it (config.json flattened keys + model spec)."""
    d = root / name
    d.mkdir(parents=True)
    config = {"kind": "train", "model": spec.to_dict(), "dataset": dataset, "seed": seed, "epochs": epochs,
              "lr": 1e-3, "batch_size": 32}
    if reduction:
        config.update(kind="post-hoc", reduction=reduction, parent=str(root / "parent"))
    if heal:
        config["heal"] = {"epochs": heal}
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": acc}) + "\n")
    if model:
        m = build_model(spec)
        params = count_params(m)
        save_model(d / "model.safetensors", m, config)
    if final:
        (d / "final.json").write_text(json.dumps({"status": "complete", "test_acc": acc, "params": params,
                                                  "train_seconds": 10.0 + seed, **final_extra}))
    return d


def ranks(role, r, depth=2):
    return {f"blocks.{b}.{role}": r for b in range(depth)}


def red(method, role, r):
    return [{"method": method, "ranks": ranks(role, r), "store": "factored"}]


# ---------------------------------------------------------------------------------------------
# statistics, checked against the textbook formulas


def test_summary_matches_hand_formula():
    accs = [0.80, 0.82, 0.84, 0.83]
    n = 4
    m = sum(accs) / n
    sd = math.sqrt(sum((a - m) ** 2 for a in accs) / (n - 1))
    t975_df3 = 3.182446305284263  # two-sided 95% critical value, t table, 3 degrees of freedom
    s = cmp.summarize(accs)
    assert s["n"] == 4 and s["mean"] == pytest.approx(m) and s["std"] == pytest.approx(sd)
    assert s["ci_low"] == pytest.approx(m - t975_df3 * sd / 2, rel=1e-9)
    assert s["ci_high"] == pytest.approx(m + t975_df3 * sd / 2, rel=1e-9)
    one = cmp.summarize([0.9])
    assert one["mean"] == 0.9 and one["std"] is None and one["ci_low"] is None


def test_welch_p_matches_hand_formula():
    a, b = [0.85, 0.86, 0.84, 0.87], [0.83, 0.82, 0.845, 0.81, 0.835]
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    # Two-sided p of Student's t through the regularized incomplete beta: I_{df/(df+t^2)}(df/2, 1/2).
    p = betainc(df / 2, 0.5, df / (df + t * t))
    assert cmp.welch_p(a, b) == pytest.approx(p, rel=1e-7)
    assert 0 < p < 0.05
    assert cmp.welch_p([0.8], b) is None and cmp.welch_p(a, [0.8]) is None
    assert cmp.welch_p([0.8, 0.8], [0.8, 0.8]) is None  # no spread on either side: nothing to test


def test_one_seed_interval_is_the_test_sets_binomial_one():
    p, N = 0.9, 10_000
    half = 1.959963984540054 * math.sqrt(p * (1 - p) / N)  # normal approximation to the binomial
    s = cmp.summarize([p], test_size=N)
    assert s["ci_kind"] == "test-set"
    assert s["ci_low"] == pytest.approx(p - half) and s["ci_high"] == pytest.approx(p + half)
    h, kind = cmp.diff_halfwidth([0.9], [0.8], N, N)
    assert kind == "test-set" and h == pytest.approx(1.959963984540054 * math.sqrt(0.09 / N + 0.16 / N))
    assert cmp.diff_halfwidth([0.9], [0.8]) == (None, None)  # test size unknown: no interval at all


def test_difference_interval_is_welchs():
    a, b = [0.85, 0.86, 0.84, 0.87], [0.83, 0.82, 0.845]
    va = sum((x - sum(a) / 4) ** 2 for x in a) / 3 / 4
    vb = sum((x - sum(b) / 3) ** 2 for x in b) / 2 / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    h, kind = cmp.diff_halfwidth(a, b)
    # invert: the half-width divided by the standard error is the t quantile whose two-sided p is 0.05
    tq = h / math.sqrt(va + vb)
    assert kind == "seeds" and betainc(df / 2, 0.5, df / (df + tq * tq)) == pytest.approx(0.05, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# grouping and pairing


def test_groups_by_spec_across_seeds(tmp_path):
    lowrank = replace(TINY, variant="lowrank", targets=["ffn-in"])
    for s, acc in enumerate([0.85, 0.86, 0.87]):
        make_run(tmp_path, f"base-s{s}", acc, seed=s)
    for s, acc in enumerate([0.83, 0.84]):
        make_run(tmp_path, f"lr-s{s}", acc, seed=s, spec=lowrank, params=8_000)
    c = cmp.compare_runs([tmp_path], speed=False)
    assert [r["label"] for r in c.rows] == ["baseline", "lowrank ffn-in r=0.5"]
    base, low = c.rows
    assert base["family"] == "baseline" and base["n"] == 3 and sorted(base["seeds"]) == [0, 1, 2]
    assert base["acc_mean"] == pytest.approx(0.86) and base["p_vs_baseline"] is None
    assert low["family"] == "train-time" and low["n"] == 2 and low["params"] == 8_000
    assert low["diff_vs_baseline"] == pytest.approx(0.835 - 0.86)
    assert low["p_vs_baseline"] == pytest.approx(cmp.welch_p([0.83, 0.84], [0.85, 0.86, 0.87]))
    assert base["train_seconds"] == pytest.approx(11.0)
    assert c.problems == [] and c.notes == []


def test_different_recipes_are_not_seeds_of_one_group(tmp_path):
    make_run(tmp_path, "a", 0.85, epochs=2)
    make_run(tmp_path, "b", 0.87, epochs=5)
    c = cmp.compare_runs([tmp_path], speed=False)
    assert sorted(r["label"] for r in c.rows) == ["baseline [epochs=2]", "baseline [epochs=5]"]


def test_post_hoc_rows_pair_with_train_time_rows_at_matched_params(tmp_path):
    lowrank = replace(TINY, variant="lowrank", targets=["ffn-in"])
    for s in range(2):
        make_run(tmp_path, f"base-s{s}", 0.86 + s / 100, seed=s, params=10_000)
        make_run(tmp_path, f"lr-s{s}", 0.83 + s / 100, seed=s, spec=lowrank, params=8_000)
        make_run(tmp_path, f"svd-s{s}", 0.80 + s / 50, seed=s, params=8_050, reduction=red("svd", "ffn.in", 12))
        make_run(tmp_path, f"wh-s{s}", 0.82, seed=s, params=7_990, reduction=red("whiten", "ffn.in", 11))
        # same budget but other layers, and right layers but far from the budget: not twins
        make_run(tmp_path, f"att-s{s}", 0.81, seed=s, params=8_000, reduction=red("svd", "attn.out", 5))
        make_run(tmp_path, f"far-s{s}", 0.84, seed=s, params=9_000, reduction=red("svd", "ffn.in", 30))
    rows = cmp.compare_runs([tmp_path], speed=False).rows
    labels = [(r["label"], r["paired_with"]) for r in rows]
    assert labels[:4] == [("baseline", None), ("lowrank ffn-in r=0.5", None),
                          ("baseline -> svd ffn-in r=12", "lowrank ffn-in r=0.5"),
                          ("baseline -> whiten ffn-in r=11", "lowrank ffn-in r=0.5")]
    assert {lab for lab, p in labels[4:]} == {"baseline -> svd attn-out r=5", "baseline -> svd ffn-in r=30"}
    assert all(p is None for _, p in labels[4:]) and all(r["family"] == "post-hoc" for r in rows[2:])
    svd = rows[2]
    assert svd["diff_vs_paired"] == pytest.approx(0.81 - 0.835)
    assert svd["p_vs_paired"] == pytest.approx(cmp.welch_p([0.80, 0.82], [0.83, 0.84]))
    assert svd["params_vs_paired"] == 50
    assert rows[3]["p_vs_paired"] is not None


def test_half_ffn_pairs_with_reductions_of_both_ffn_layers(tmp_path):
    make_run(tmp_path, "base", 0.86)
    make_run(tmp_path, "half", 0.85, spec=replace(TINY, variant="half-ffn"), params=7_000)
    both = [{"method": "svd", "ranks": {**ranks("ffn.in", 9), **ranks("ffn.out", 9)}, "store": "factored"}]
    make_run(tmp_path, "svd", 0.84, params=7_100, reduction=both)
    make_run(tmp_path, "healed", 0.855, params=7_100, reduction=both, heal=2)
    rows = cmp.compare_runs([tmp_path], speed=False).rows
    assert [(r["family"], r["paired_with"]) for r in rows] == [
        ("baseline", None), ("narrower-ffn", None), ("post-hoc", "half-ffn (mlp 32)"), ("healed", "half-ffn (mlp 32)")]
    assert rows[3]["label"].endswith("+ heal 2ep")


def test_mixed_datasets_and_archs_are_grouped_separately_and_said_so(tmp_path):
    make_run(tmp_path, "fm-base", 0.86)
    make_run(tmp_path, "fm-lr", 0.84, spec=replace(TINY, variant="lowrank", targets=["ffn"]))
    make_run(tmp_path, "c10-base", 0.60, dataset="cifar10", spec=replace(TINY, channels=3))
    make_run(tmp_path, "xt-base", 0.70, spec=ModelSpec(arch="xt-vit", image_size=8, channels=1, patch_size=4,
                                                        dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64))
    c = cmp.compare_runs([tmp_path], speed=False)
    assert len({r["section"] for r in c.rows}) == 3
    assert any("3 dataset/architecture combinations" in n for n in c.notes)
    assert sum(r["family"] == "baseline" for r in c.rows) == 3
    fm_lr = next(r for r in c.rows if r["label"].startswith("lowrank"))
    assert fm_lr["diff_vs_baseline"] == pytest.approx(-0.02)  # against its own section's baseline only
    md = report.markdown(c)
    assert md.count("### ") == 3 and "never across them" in md


def test_bad_runs_are_listed_and_the_rest_compared(tmp_path):
    make_run(tmp_path, "good", 0.86)
    make_run(tmp_path, "good2", 0.87, seed=1)
    make_run(tmp_path, "running", 0.5, final=False)
    (make_run(tmp_path, "broken", 0.5) / "final.json").write_text('{"status": "comp')
    (make_run(tmp_path, "crashed", 0.5) / "final.json").write_text('{"status": "failed", "error": "NaN loss"}')
    (make_run(tmp_path, "badmetrics", 0.88, seed=2) / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    (make_run(tmp_path, "badcfg", 0.5) / "config.json").write_text("not json")
    (make_run(tmp_path, "badacc", 0.5) / "final.json").write_text('{"status": "complete", "test_acc": "high"}')
    c = cmp.compare_runs([tmp_path], speed=False)
    status = {p["run"].rsplit("/", 1)[-1]: p["status"] for p in c.problems}
    assert status == {"running": "incomplete", "broken": "corrupt", "crashed": "failed", "badcfg": "corrupt",
                      "badacc": "corrupt"}
    assert "NaN loss" in next(p["reason"] for p in c.problems if p["status"] == "failed")
    assert len(c.rows) == 1 and c.rows[0]["n"] == 3  # the corrupt metrics file is a warning, not a drop
    assert any("metrics.jsonl line 2" in w for w in c.rows[0]["warnings"])
    md = report.markdown(c)
    assert "Runs not compared:" in md and "running" in md and "metrics.jsonl line 2" in md
    api = laser_tool.compare_rows([tmp_path], speed=False)
    assert len(api) == 6 and {r["status"] for r in api} == {"ok", "incomplete", "corrupt", "failed"}


def test_no_runs_is_one_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="no runs found"):
        cmp.compare_runs([tmp_path / "empty"])
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0 and "no runs found" in res.output
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_runs_found_two_levels_deep_and_baseline_option(tmp_path):
    make_run(tmp_path / "study" / "runs", "base", 0.86)
    make_run(tmp_path / "study" / "runs", "wide", 0.87, spec=replace(TINY, mlp_dim=128), params=12_000)
    c = cmp.compare_runs([tmp_path / "study"], speed=False)
    assert [r["family"] for r in c.rows] == ["baseline", "narrower-ffn"]
    c = cmp.compare_runs([tmp_path / "study"], speed=False, baseline="wide")
    assert [(r["label"], r["family"]) for r in c.rows] == [("baseline", "baseline"), ("dense mlp 64", "narrower-ffn")]
    assert c.rows[0]["params"] == 12_000
    with pytest.raises(UserError, match="names no complete run"):
        cmp.compare_runs([tmp_path / "study"], speed=False, baseline="nope")


# ---------------------------------------------------------------------------------------------
# speed, plot, CLI


def test_inference_speed_measured_for_every_row_from_real_models(tmp_path):
    make_run(tmp_path, "base", 0.86, model=True)
    make_run(tmp_path, "low", 0.84, model=True, spec=replace(TINY, variant="lowrank", targets=["ffn"]))
    make_run(tmp_path, "nomodel", 0.85, spec=replace(TINY, variant="skl", targets=["ffn"]))
    c = cmp.compare_runs([tmp_path], speed=True, speed_batch=8, speed_reps=2)
    speeds = {r["label"]: r["images_per_s"] for r in c.rows}
    assert speeds["baseline"] > 0 and speeds["lowrank ffn r=0.5"] > 0
    skl = next(r for r in c.rows if r["label"].startswith("skl"))
    assert skl["images_per_s"] is None and any("could not time inference" in w for w in skl["warnings"])
    assert c.rows[0]["params"] == count_params(build_model(TINY))


def test_plot_is_a_png_with_one_series_per_family(tmp_path):
    lowrank = replace(TINY, variant="lowrank", targets=["ffn-in"])
    for s in range(2):
        make_run(tmp_path, f"base-s{s}", 0.86 + s / 100, seed=s)
        make_run(tmp_path, f"lr-s{s}", 0.83, seed=s, spec=lowrank, params=8_000)
        make_run(tmp_path, f"svd-s{s}", 0.80, seed=s, params=8_000, reduction=red("svd", "ffn.in", 12))
    make_run(tmp_path, "half", 0.85, spec=replace(TINY, variant="half-ffn"), params=7_000)
    rows = cmp.compare_runs([tmp_path], speed=False).rows
    fig = report.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.series_count(fig) == 4  # baseline, train-time, narrower-ffn, post-hoc
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["baseline", "train-time", "narrower-ffn", "post-hoc"]


def test_cli_formats_and_plot(tmp_path):
    make_run(tmp_path / "runs", "base-s0", 0.86, model=True)
    make_run(tmp_path / "runs", "base-s1", 0.87, seed=1, model=True)
    make_run(tmp_path / "runs", "wip", 0.87, final=False)
    r = CliRunner()
    res = r.invoke(main, ["compare", str(tmp_path / "runs"), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert "| baseline | baseline | 2 |" in res.output and "incomplete" in res.output
    assert (tmp_path / "p.png").exists()
    res = r.invoke(main, ["compare", str(tmp_path / "runs"), "--format", "json", "--no-speed"])
    doc = json.loads(res.stdout)
    assert doc["rows"][0]["n"] == 2 and doc["problems"][0]["status"] == "incomplete"
    res = r.invoke(main, ["compare", str(tmp_path / "runs"), "--format", "csv", "--no-speed"])
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("section,label,family") and len(lines) == 3


def test_parameterisation_and_new_variants_are_separate_groups(tmp_path):
    """Runs that differ only in --param/--init (part of the model spec) are never seeds of one group."""
    low = replace(TINY, variant="lowrank", targets=["ffn"])
    specs = {"std": low, "str": replace(low, param="structured"), "spec": replace(low, param="structured",
                                                                                 init="spectral"),
             "keep": replace(low, keep=0.5), "mon": replace(TINY, variant="monarch", targets=["ffn"], keep=0.5),
             "btt": replace(TINY, variant="btt", targets=["ffn"], btt_rank=2)}
    make_run(tmp_path, "base", 0.86)
    for name, spec in specs.items():
        make_run(tmp_path, name, 0.84, spec=spec, params=8_000)
    c = cmp.compare_runs([tmp_path], speed=False)
    labels = {r["label"]: r["family"] for r in c.rows}
    assert labels == {"baseline": "baseline", "lowrank ffn r=0.5": "train-time",
                      "lowrank ffn r=0.5 structured": "train-time",
                      "lowrank ffn r=0.5 structured spectral": "train-time", "lowrank ffn keep=0.5": "train-time",
                      "monarch ffn keep=0.5": "train-time", "btt ffn rank=2": "train-time"}
    assert all(r["n"] == 1 for r in c.rows)
