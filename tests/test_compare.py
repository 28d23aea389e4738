"""compare/report: statistics against hand formulas, grouping, pairing, plot, bad runs, CLI."""
import json
import math
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from scipy.stats import ttest_rel
from scipy.special import betainc

import laser_tool
from laser_tool.analysis import compare as cmp
from laser_tool.cli import main
from laser_tool.errors import UserError
from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.analysis import plot, stats
from laser_tool.analysis.stats import holm, mcnemar_exact

from laser_tool.analysis import render as report
from conftest import COMPARE_TINY as TINY, ranks, red, written_run as make_run

# ---------------------------------------------------------------------------------------------
# statistics, checked against the textbook formulas


def test_summary_matches_hand_formula():
    accs = [0.80, 0.82, 0.84, 0.83]
    n = 4
    m = sum(accs) / n
    sd = math.sqrt(sum((a - m) ** 2 for a in accs) / (n - 1))
    t975_df3 = 3.182446305284263  # two-sided 95% critical value, t table, 3 degrees of freedom
    s = stats.summarize(accs)
    assert s["n"] == 4 and s["mean"] == pytest.approx(m) and s["std"] == pytest.approx(sd)
    assert s["ci_low"] == pytest.approx(m - t975_df3 * sd / 2, rel=1e-9)
    assert s["ci_high"] == pytest.approx(m + t975_df3 * sd / 2, rel=1e-9)
    one = stats.summarize([0.9])
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
    assert stats.welch_p(a, b) == pytest.approx(p, rel=1e-7)
    assert 0 < p < 0.05
    assert stats.welch_p([0.8], b) is None and stats.welch_p(a, [0.8]) is None
    assert stats.welch_p([0.8, 0.8], [0.8, 0.8]) is None  # no spread on either side: nothing to test


def test_one_seed_interval_is_the_test_sets_binomial_one():
    p, N = 0.9, 10_000
    half = 1.959963984540054 * math.sqrt(p * (1 - p) / N)  # normal approximation to the binomial
    s = stats.summarize([p], test_size=N)
    assert s["ci_kind"] == "test-set"
    assert s["ci_low"] == pytest.approx(p - half) and s["ci_high"] == pytest.approx(p + half)
    h, kind = stats.diff_halfwidth([0.9], [0.8], N, N)
    assert kind == "test-set" and h == pytest.approx(1.959963984540054 * math.sqrt(0.09 / N + 0.16 / N))
    assert stats.diff_halfwidth([0.9], [0.8]) == (None, None)  # test size unknown: no interval at all


def test_difference_interval_is_welchs():
    a, b = [0.85, 0.86, 0.84, 0.87], [0.83, 0.82, 0.845]
    va = sum((x - sum(a) / 4) ** 2 for x in a) / 3 / 4
    vb = sum((x - sum(b) / 3) ** 2 for x in b) / 2 / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    h, kind = stats.diff_halfwidth(a, b)
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
    assert low["p_vs_baseline"] == pytest.approx(stats.welch_p([0.83, 0.84], [0.85, 0.86, 0.87]))
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
    # the same seeds on both sides: paired over seeds (a seed fixes split and batch order in every family)
    assert svd["p_vs_paired_kind"] == "paired-t"
    assert svd["p_vs_paired"] == pytest.approx(ttest_rel([0.80, 0.82], [0.83, 0.84]).pvalue)
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
        ("baseline", None), ("narrower", None), ("post-hoc", "half-ffn (mlp 32)"), ("healed", "half-ffn (mlp 32)")]
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
    assert [r["family"] for r in c.rows] == ["baseline", "narrower"]
    c = cmp.compare_runs([tmp_path / "study"], speed=False, baseline="wide")
    assert [(r["label"], r["family"]) for r in c.rows] == [("baseline", "baseline"), ("dense mlp 64", "narrower")]
    assert c.rows[0]["params"] == 12_000
    with pytest.raises(UserError, match="names no complete run"):
        cmp.compare_runs([tmp_path / "study"], speed=False, baseline="nope")


# ---------------------------------------------------------------------------------------------
# speed, plot, CLI


@pytest.mark.timing
def test_latency_measured_for_every_row_from_real_models(tmp_path):
    make_run(tmp_path, "base", 0.86, model=True)
    make_run(tmp_path, "low", 0.84, model=True, spec=replace(TINY, variant="lowrank", targets=["ffn"]))
    make_run(tmp_path, "nomodel", 0.85, spec=replace(TINY, variant="skl", targets=["ffn"]))
    c = cmp.compare_runs([tmp_path], speed=True)
    lat = {r["label"]: r["latency"] for r in c.rows}
    for label in ("baseline", "lowrank ffn r=0.5"):
        for b in ("1", "64"):
            assert lat[label]["batch"][b]["median_ms"] > 0 and lat[label]["batch"][b]["iqr_ms"] >= 0
        assert lat[label]["threads"] == 2 and lat[label]["rounds"] == 30
    # the dense baseline has one form; the low-rank model is also timed multiplied out, the faster one named
    assert list(lat["baseline"]["forms"]) == ["as trained"] and lat["baseline"]["form"] == "as trained"
    low = lat["lowrank ffn r=0.5"]
    assert set(low["forms"]) == {"as trained", "dense multiply-out"}
    assert low["batch"] == min(low["forms"].values(), key=lambda f: f["batch"]["64"]["median_ms"])["batch"]
    skl = next(r for r in c.rows if r["label"].startswith("skl"))
    assert skl["latency"] is None and any("could not time inference" in w for w in skl["warnings"])
    assert c.rows[0]["params"] == count_params(build_model(TINY))


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


# ---------------------------------------------------------------------------------------------
# paired statistics, recipes, budgets (issue 12)


def factored(role, r, depth=2):
    return {f"blocks.{b}.{role}": {"kind": "factored", "rank": r, "bias": True} for b in range(depth)}


def correct_vector(n=200, wrong=()):
    c = torch.ones(n, dtype=torch.bool)
    c[list(wrong)] = False
    return c


def test_one_seed_rows_are_paired_image_by_image_with_mcnemar(tmp_path):
    make_run(tmp_path, "base", 0, correct=correct_vector(wrong=range(0, 20)))            # 180/200
    make_run(tmp_path, "low", 0, spec=replace(TINY, variant="lowrank", targets=["ffn"]),
             correct=correct_vector(wrong=list(range(10, 20)) + list(range(100, 130))))  # 160/200
    make_run(tmp_path, "half", 0, spec=replace(TINY, variant="half-ffn"), correct=correct_vector(wrong=range(5, 25)))
    c = cmp.compare_runs([tmp_path], speed=False)
    low = next(r for r in c.rows if r["label"].startswith("lowrank"))
    # base right, low wrong: 30 images (100..129); low right, base wrong: 10 (0..9)
    assert low["p_vs_baseline"] == pytest.approx(mcnemar_exact(10, 30)) and round(low["p_vs_baseline"], 5) == 0.00222
    assert low["p_vs_baseline_kind"] == "mcnemar" == low["p_kind"]
    assert low["diff_vs_baseline"] == pytest.approx(0.80 - 0.90) and low["diff_vs_baseline_ci_kind"] == "paired-images"
    half = next(r for r in c.rows if r["label"].startswith("half"))
    raw = [low["p_vs_baseline"], half["p_vs_baseline"]]
    assert [low["p_vs_baseline_holm"], half["p_vs_baseline_holm"]] == pytest.approx(holm(raw))
    assert low["vs_baseline"]["test"]["p"] == low["p_vs_baseline"] and "val" in low["vs_baseline"]
    md = report.markdown(c)
    assert "0.002ᴹ (0.004)" in md and "exact McNemar" in md and "‡" in md


def test_missing_or_mismatched_predictions_fall_back_and_say_so_in_one_line(tmp_path):
    make_run(tmp_path, "base", 0, correct=correct_vector(wrong=range(20)))
    make_run(tmp_path, "nopreds", 0.85, spec=replace(TINY, variant="lowrank", targets=["ffn"]))
    make_run(tmp_path, "short", 0, spec=replace(TINY, variant="skl", targets=["ffn"]),
             correct=correct_vector(n=150, wrong=range(10)))
    make_run(tmp_path, "other", 0, spec=replace(TINY, variant="half-ffn"), correct=correct_vector(wrong=range(12)),
             pred_dataset="mnist")
    c = cmp.compare_runs([tmp_path], speed=False)
    by = {r["label"].split()[0]: r for r in c.rows}
    assert by["lowrank"]["p_kind"] is None  # no test-set size recorded: no unpaired p either
    assert by["skl"]["p_kind"] is None and by["half-ffn"]["p_kind"] is None
    md = report.markdown(c)
    lines = md.splitlines()
    assert sum("unpaired test: no predictions.safetensors" in ln for ln in lines) == 1
    assert sum("test predictions differ in length (150 vs 200)" in ln for ln in lines) == 1
    assert sum("predictions are from different datasets (mnist vs fashion-mnist)" in ln for ln in lines) == 1
    assert len(c.rows) == 4  # the rest of the report is still made
    # with the test-set size known, the fallback is the unpaired two-proportion z-test
    for d in tmp_path.iterdir():
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(dict(cfg, split={"test": 200, "val": 50})))
    low = next(r for r in cmp.compare_runs([tmp_path], speed=False).rows if r["label"].startswith("lowrank"))
    assert low["p_kind"] == "z-unpaired" and low["p_vs_baseline"] is not None


def test_post_hoc_rows_are_paired_over_their_baselines_seeds(tmp_path):
    lowrank = replace(TINY, variant="lowrank", targets=["ffn-in"])
    cut = replace(TINY, layers=factored("ffn.in", 4))
    base_accs, cut_accs, low_accs = [0.86, 0.87, 0.85], [0.84, 0.86, 0.845], [0.83, 0.85, 0.84]
    for s in range(3):
        b = make_run(tmp_path, f"base-s{s}", base_accs[s], seed=s)
        make_run(tmp_path, f"cut-s{s}", cut_accs[s], seed=s, spec=cut, parent=b, reduction=red("svd", "ffn.in", 4))
        make_run(tmp_path, f"low-s{s}", low_accs[s], seed=s, spec=lowrank)
    rows = cmp.compare_runs([tmp_path], speed=False).rows
    c = next(r for r in rows if r["family"] == "post-hoc")
    assert c["p_kind"] == "paired-t" and c["p_vs_baseline"] == pytest.approx(ttest_rel(cut_accs, base_accs).pvalue)
    assert c["roots"] == [str((tmp_path / f"base-s{s}").resolve()) for s in range(3)]
    low = next(r for r in rows if r["family"] == "train-time")  # another family, the same seeds: paired by seed
    assert low["p_kind"] == "paired-t" and low["p_vs_baseline"] == pytest.approx(ttest_rel(low_accs, base_accs).pvalue)


def test_recipes_are_kept_apart_and_rows_use_their_own_baseline(tmp_path):
    lowrank = replace(TINY, variant="lowrank", targets=["ffn"])
    for s in range(2):
        make_run(tmp_path, f"base2-s{s}", 0.80 + s / 100, seed=s, epochs=2)
        make_run(tmp_path, f"base5-s{s}", 0.88 + s / 100, seed=s, epochs=5)
        make_run(tmp_path, f"low5-s{s}", 0.86 + s / 100, seed=s, epochs=5, spec=lowrank)
        make_run(tmp_path, f"low3-s{s}", 0.84, seed=s, epochs=3, spec=lowrank)
        make_run(tmp_path, f"lowdrop-s{s}", 0.85, seed=s, epochs=5, spec=replace(lowrank, dropout=0.1))
    c = cmp.compare_runs([tmp_path], speed=False)
    by = {r["label"]: r for r in c.rows}
    assert {"baseline [epochs=2]", "baseline [epochs=5]"} <= set(by)
    low5 = by["lowrank ffn r=0.5 [dropout=0.0, epochs=5]"]
    assert low5["baseline"] == "baseline [epochs=5]" and low5["diff_vs_baseline"] == pytest.approx(-0.02)
    for label in ("lowrank ffn r=0.5 [dropout=0.0, epochs=3]", "lowrank ffn r=0.5 [dropout=0.1, epochs=5]"):
        assert by[label]["baseline"] is None and by[label]["p_vs_baseline"] is None
        assert any("no same-recipe baseline" in w for w in by[label]["warnings"])
    md = report.markdown(c)
    assert md.count("| no same-recipe baseline |") == 2
    # the two baselines are never compared with each other, nor with the other's variants
    assert by["baseline [epochs=2]"]["diff_vs_baseline"] is None
    assert by["baseline [epochs=5]"]["diff_vs_baseline"] is None
    # a setting the hand-written list never named still splits groups (derived from the train entry)
    d = tmp_path / "new"
    make_run(d, "a", 0.8, train={"epochs": 2, "lr": 1e-3, "future_knob": 1, "seed": 0, "device": "cpu"})
    make_run(d, "b", 0.8, seed=1, train={"epochs": 2, "lr": 1e-3, "future_knob": 2, "seed": 1, "device": "cuda"})
    make_run(d, "c", 0.8, seed=2, train={"epochs": 2, "lr": 1e-3, "future_knob": 2, "seed": 2, "device": "cpu"})
    labels = sorted((r["label"], r["n"]) for r in cmp.compare_runs([d], speed=False).rows)
    assert labels == [("baseline [future_knob=1]", 1), ("baseline [future_knob=2]", 2)]


def test_one_requested_spec_is_one_group_although_ranks_differ_by_seed(tmp_path):
    for s, r in enumerate((5, 6, 7)):
        b = make_run(tmp_path, f"base-s{s}", 0.86, seed=s)
        step = {"method": "svd", "selectors": ["*.ffn.in"], "rank": "energy:0.9", "store": "factored",
                "calib_batches": 0, "ranks": ranks("ffn.in", r), "parent": str(b), "calib": None}
        make_run(tmp_path, f"cut-s{s}", 0.85 - s / 100, seed=s, spec=replace(TINY, layers=factored("ffn.in", r)),
                 reduction=[step], parent=b)
        other = dict(step, rank="energy:0.8", ranks=ranks("ffn.in", 3))
        make_run(tmp_path, f"cut8-s{s}", 0.8, seed=s, spec=replace(TINY, layers=factored("ffn.in", 3)),
                 reduction=[other], parent=b)
    rows = cmp.compare_runs([tmp_path], speed=False).rows
    assert [(r["family"], r["n"]) for r in rows] == [("baseline", 3), ("post-hoc", 3), ("post-hoc", 3)]
    d_in, d_out = TINY.dim, TINY.mlp_dim
    keeps = [(r * (d_in + d_out) + d_out) / (d_in * d_out + d_out) for r in (5, 6, 7)]
    assert rows[1]["keep"] == pytest.approx(sum(keeps) / 3) and rows[1]["targeted_layers"] == "ffn-in"
    assert rows[0]["keep"] == 1.0


def test_forward_and_training_flops_match_the_closed_form():
    from laser_tool.analysis import costs
    s = ModelSpec(arch="vit-tiny", image_size=28, channels=1, patch_size=7, dim=128, depth=3, heads=4, dim_head=32,
                  mlp_dim=256, dropout=0.0, emb_dropout=0.0)
    T, inner, patch_dim = 17, 128, 7 * 7 * 5  # 16 patches + CLS; SPT stacks 5 shifted copies
    block = T * 128 * 3 * inner + 2 * 4 * T * T * 32 + T * inner * 128 + 2 * T * 128 * 256
    macs = 16 * patch_dim * 128 + 3 * block + 128 * 10  # embed, blocks, head on the CLS token
    per_image, per_batch = costs.forward_flops(s)
    assert per_image == 2 * macs
    low = replace(s, variant="lowrank", targets=["ffn"])
    r = 256 * 128 // (256 + 128) // 2  # the seed's rank rule at r=0.5: int(0.5 * m n / (m + n)) = 42
    assert costs.forward_flops(low)[0] == 2 * (macs - 3 * 2 * T * 128 * 256 + 3 * 2 * T * r * (128 + 256))
    # a training step by the counter: the backward pass of every matmul is two matmuls of its size
    step_image, step_batch = costs.step_flops(s)
    assert step_image == 3 * per_image and step_batch == 2 * per_batch
    assert costs.training_flops(s, 1000, 10) == step_image * 1000 + step_batch * 10


def _frontier(root, seeds=1, val=None):
    """Baseline, narrower and low-rank at two budgets, and post-hoc svd cuts of the baseline; each run's
    validation accuracy is its test accuracy unless `val` ({run prefix: accuracy}) says otherwise."""
    out = {}

    def run(name, seed, wrong, **kw):
        acc = 1 - len(wrong) / 200
        return make_run(root, f"{name}-s{seed}", 0, seed=seed, correct=correct_vector(wrong=wrong),
                        val_acc=(val or {}).get(name, acc), **kw)
    for s in range(seeds):
        b = run("base", s, range(20))
        for i, (mlp, scale, r) in enumerate(((32, 0.5, 10), (16, 0.25, 5))):
            run(f"narrow{i}", s, range(24 + 6 * i), spec=replace(TINY, mlp_dim=mlp))
            run(f"low{i}", s, range(21 + 20 * i), spec=replace(TINY, variant="lowrank", targets=["ffn"], scale=scale))
            layers = {**factored("ffn.in", r), **factored("ffn.out", r)}
            step = [{"method": "svd", "selectors": ["*:mlp"], "rank": f"params:{scale}", "store": "factored",
                     "ranks": {**ranks("ffn.in", r), **ranks("ffn.out", r)}}]
            run(f"svd{i}", s, range(30 + 40 * i), spec=replace(TINY, layers=layers), reduction=step, parent=b)
    return out


def test_plot_has_one_series_per_family(tmp_path):
    _frontier(tmp_path)
    rows = cmp.compare_runs([tmp_path], speed=False).rows
    fig = plot.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(plot.series_names(fig)) == ["lowrank ffn", "narrower", "post-hoc svd ffn"]
    assert plot.series_count(fig) == 3
    keep_ax = next(ax for ax in fig.axes if ax.get_gid() == "keep")
    assert [len(ln.get_xdata()) for ln in keep_ax.lines if (ln.get_gid() or "").startswith("series:")] == [2, 2, 2]
    assert any(ln.get_gid() == "frontier" for ln in keep_ax.lines)
    assert {ax.get_gid() for ax in fig.axes} == {"keep", "train_flops"}
    assert plot.pareto([(1, 0.9), (0.5, 0.8), (0.5, 0.7), (0.25, 0.85), (0.1, 0.6)]) == [4, 3, 0]


def test_the_winner_is_chosen_on_validation_and_confirmed_on_test(tmp_path):
    """Validation ranks narrower first at keep 0.5 while test ranks low-rank first: the answer takes
    validation's winner, runs the three confirmatory tests on test, and says the two disagree."""
    from laser_tool.analysis import answer
    _frontier(tmp_path, val={"narrow0": 0.95})
    c = cmp.compare_runs([tmp_path], speed=False)
    items = answer.answer(c.rows)
    assert [i["budget"] for i in items] == pytest.approx([0.5, 0.25], abs=0.03)
    hi, lo = items
    assert hi["best"]["curve"] == "narrower" and hi["test_pick"]["curve"] == "lowrank ffn" and hi["disagree"]
    assert lo["best"]["curve"] == "narrower" and not lo["disagree"]
    names = [t["name"] for t in hi["tests"]]
    assert names == ["winner vs the best post-hoc row", "narrower vs low-rank (the seed's claim)",
                     "winner vs the baseline"]
    other, claim, base = hi["tests"]
    assert other["b"]["curve"] == "post-hoc svd ffn" and base["b"]["family"] == "baseline"
    # narrower wrong on 24 images, low-rank on 21, svd on 30, baseline on 20 (nested sets): exact McNemar
    assert other["p"] == pytest.approx(mcnemar_exact(6, 0)) and claim["p"] == pytest.approx(mcnemar_exact(0, 3))
    assert base["p"] == pytest.approx(mcnemar_exact(0, 4)) and other["diff"] == pytest.approx(6 / 200)
    tests = [t for i in items for t in i["tests"]]
    assert [t["p_holm"] for t in tests] == pytest.approx(holm([t["p"] for t in tests]))
    assert {t["family_size"] for t in tests} == {6}
    lo_ci, hi_ci = other["ci95"]
    assert lo_ci <= other["diff"] <= hi_ci and other["verdict"] in ("inconclusive", "better", "worse") or \
        other["verdict"].startswith("equivalent")
    md = answer.markdown(c.rows)
    assert md.count("\n- At keep ≈") == 2 and "Validation and test disagree" in md and "Holm p" in md


def test_holm_counts_each_comparison_once_and_the_table_shows_the_same_p(tmp_path):
    """The runner-up by validation is itself the best other-kind row: one test, not two; the winner's test
    against its baseline shows the answer's Holm p in the table too, out of the exploratory family."""
    from laser_tool.analysis import answer
    _frontier(tmp_path, val={"low0": 0.99, "svd0": 0.98, "low1": 0.99, "svd1": 0.98})
    c = cmp.compare_runs([tmp_path], speed=False)
    items = answer.answer(c.rows)
    for i in items:
        ranked = sorted((r for r in c.rows if r.get("keep") is not None and r["family"] != "baseline"
                         and abs(r["keep"] - i["budget"]) < 0.1), key=lambda r: -r["val_acc_mean"])
        assert ranked[1]["label"] == i["tests"][0]["b"]["label"]  # the runner-up is the other-kind row
    tests = [t for i in items for t in i["tests"]]
    assert len(tests) == 6 and {t["family_size"] for t in tests} == {6}
    cmp.adopt_confirmatory(c, answer.confirmatory_pairs(items))
    win = next(r for r in c.rows if r["label"] == items[0]["best"]["label"] and r["paired_with"] is None)
    assert win["p_vs_baseline_family"] == "confirmatory" and win["p_vs_baseline_holm"] == items[0]["tests"][2]["p_holm"]
    explo = [r for r in c.rows if r.get("p_vs_baseline_family") == "exploratory"]
    assert explo and all(r["p_vs_baseline_holm"] >= r["p_vs_baseline"] for r in explo)


def test_metric_val_and_json_rows_carry_both_metrics(tmp_path):
    lowrank = replace(TINY, variant="lowrank", targets=["ffn"])
    for s in range(3):
        make_run(tmp_path, f"base-s{s}", 0.86 + s / 100, seed=s, val_acc=0.90 + s / 100)
        make_run(tmp_path, f"low-s{s}", 0.84 + s / 200, seed=s, spec=lowrank, val_acc=0.85 + s / 50)
    res = CliRunner().invoke(main, ["compare", str(tmp_path), "--format", "json", "--no-speed", "--metric", "val"])
    assert res.exit_code == 0, res.output
    low = next(r for r in json.loads(res.stdout)["rows"] if r["family"] == "train-time")
    val_diff = (0.85 + 0.87 + 0.89) / 3 - (0.90 + 0.91 + 0.92) / 3
    assert low["metric"] == "val" and low["diff_vs_baseline"] == pytest.approx(val_diff)
    assert low["vs_baseline"]["val"]["diff"] == pytest.approx(val_diff)
    assert low["vs_baseline"]["test"]["diff"] == pytest.approx((0.84 + 0.845 + 0.85) / 3 - 0.87)
    assert low["val_acc_mean"] == pytest.approx(0.87) and low["acc_mean"] == pytest.approx(0.845)
    for k in ("keep", "p_vs_baseline", "p_vs_baseline_holm", "p_kind"):
        assert k in low
    assert low["p_kind"] == "paired-t" and low["p_vs_baseline_holm"] == pytest.approx(low["p_vs_baseline"])
    md = CliRunner().invoke(main, ["compare", str(tmp_path), "--no-speed", "--metric", "val"]).stdout
    assert "Δ val vs baseline (pp)" in md and "val acc %" in md


def test_study_report_opens_with_the_answer(tmp_path):
    import time
    from laser_tool import study
    _frontier(tmp_path / "st" / "runs")
    md = study.write_report(tmp_path / "st", study.StudyRequest("quick", seeds=1, device="cpu"), [], [],
                            time.time()).read_text()
    assert md.index("## The answer") < md.index("(plot.png)") < md.index("## All rows")
    assert md.count("\n- At keep ≈") == 2 and "winner (chosen on validation)" in md and "Confirmatory tests" in md
    assert (tmp_path / "st" / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_progressive_and_attention_narrowed_rows_find_the_dense_baseline(tmp_path):
    recipe = {"epochs": 2, "lr": 1e-3, "seed": 0, "reduce_at": None, "reduce_to": None, "reduce_layers": []}
    prog = dict(recipe, reduce_at="1", reduce_to="params:0.5", reduce_layers=["*:mlp"])
    for s in range(2):
        make_run(tmp_path, f"base-s{s}", 0.86, seed=s, train=dict(recipe, seed=s))
        make_run(tmp_path, f"prog-s{s}", 0.85, seed=s, train=dict(prog, seed=s),
                 spec=replace(TINY, layers={**factored("ffn.in", 10 + s), **factored("ffn.out", 10 + s)}))
        make_run(tmp_path, f"attn-s{s}", 0.84, seed=s, train=dict(recipe, seed=s), spec=replace(TINY, dim_head=8))
    c = cmp.compare_runs([tmp_path], speed=False)
    assert len({r["section"] for r in c.rows}) == 1
    by = {r["family"]: r for r in c.rows}
    assert set(by) == {"baseline", "progressive", "narrower"} and by["baseline"]["n"] == 2
    assert by["progressive"]["n"] == 2 and by["progressive"]["baseline"] == "baseline"  # one plan, ranks by seed
    assert by["progressive"]["curve"] == "progressive svd" and 0 < by["progressive"]["keep"] < 1
    assert by["narrower"]["label"] == "dense dim head 8" and by["narrower"]["baseline"] == "baseline"
    assert by["narrower"]["targeted_layers"] == "attn" and by["narrower"]["keep"] == pytest.approx(0.5, abs=0.02)


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


def test_lr_grid_keeps_the_point_best_on_validation_even_where_test_disagrees(tmp_path):
    """Two points of one lr grid: validation prefers x2, test would prefer x0.5. The table keeps x2 only,
    tests it against the baseline of the grid's base lr, never shows x0.5's test accuracy, and a note
    lists both points' validation accuracy."""
    recipe = {"epochs": 2, "batch_size": 32, "weight_decay": 0.05}
    make_run(tmp_path, "base", 0.80, train={**recipe, "lr": 1e-3}, val_acc=0.80)
    narrow = replace(TINY, mlp_dim=32)
    for mult, val, test in ((0.5, 0.80, 0.91), (2.0, 0.85, 0.70)):
        make_run(tmp_path, f"narrow-lr{mult:g}", test, spec=narrow, val_acc=val,
                 train={**recipe, "lr": 1e-3 * mult, "lr_grid": {"base_lr": 1e-3, "mult": mult}})
    c = cmp.compare_runs([tmp_path], speed=False)
    narrow_rows = [r for r in c.rows if r["family"] == "narrower"]
    assert len(narrow_rows) == 1 and "lr×2" in narrow_rows[0]["label"]
    assert narrow_rows[0]["acc_mean"] == pytest.approx(0.70) and narrow_rows[0]["baseline"] == "baseline"
    assert not any(r["acc_mean"] == pytest.approx(0.91) for r in c.rows)
    note = next(n for n in c.notes if n.startswith("lr grid"))
    assert "×0.5 80.00%" in note and "×2 85.00%" in note


def test_a_factory_models_section_title_shows_only_sizes_it_knows():
    """A `python:` factory's model: its head count may be unknown and its patch size is never read off it, so
    the title shows neither as a value ("heads None, patch 4" for a 4-head, patch-7 model, issue 32)."""
    from laser_tool.analysis.describe import section_title
    assert section_title(("fashion-mnist", "python:m:f", 28, 1, 10, 4, 64, 2, None)) == \
        "fashion-mnist / python:m:f (dim 64, depth 2, 28px)"
    assert section_title(("fashion-mnist", "vit-tiny", 28, 1, 10, 7, 128, 3, 4)) == \
        "fashion-mnist / vit-tiny (dim 128, depth 3, heads 4, patch 7, 28px)"
