"""Rank search: the staged forward, cached vs naive sweeps, the budget, compose, spectrum."""
import json

import pytest
import torch

from laser_tool.runs.checkpoint import load_run
from laser_tool.errors import UserError
from laser_tool.models import ModelSpec, build_model
from laser_tool.posthoc.calibration import calibration_batches, collect_calibration
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run, run_data
from laser_tool.posthoc.search import SearchSettings, naive_sweep, search_run, staged, sweep
from conftest import TINY_RUN as TINY, cli, hashes, make_run, one_line_error

pytestmark = pytest.mark.usefixtures("isolated", "one_thread_per_module")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("arch", ["vit-tiny", "xt-vit"])
def test_staged_forward_is_bitwise_the_model(arch):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, **TINY)).eval()
    x = torch.rand(8, 1, 28, 28)
    st = staged(model)
    with torch.no_grad():
        assert torch.equal(st.run_from(0, st.prefix(x)), model(x))
    assert st.index["head"] == len(st.stages) - 1
    if arch == "vit-tiny":
        assert len(st.stages) == 1 + 4 * 2 + 2   # embed, 4 per block, pool, head


@pytest.mark.parametrize("method", ["svd", "whiten"])
def test_cached_sweep_equals_naive(base, method):
    model, cfg = load_run(base)
    splits = run_data(cfg)
    names = ["embed", "blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.1.ffn.in", "blocks.1.ffn.out", "head"]
    specs = ["1", "params:0.3", "rho:0.5"]
    calib = None
    if method != "svd":
        calib = collect_calibration(model, names, calibration_batches(splits, 2, 0), method)
    cached, _ = sweep(model, names, specs, splits.val_x, splits.val_y, batch_size=40, method=method, calib=calib)
    grid = {n: [c["rank"] for c in rows] for n, rows in cached.items()}
    naive = naive_sweep(base, grid, splits.val_x, splits.val_y, batch_size=40, method=method, calib=calib)
    for n in names:
        assert [(c["rank"], c["val_acc"]) for c in cached[n]] == [(c["rank"], c["val_acc"]) for c in naive[n]]
        assert [c["val_loss"] for c in cached[n]] == pytest.approx([c["val_loss"] for c in naive[n]], rel=1e-6)
    accs = {c["val_acc"] for rows in cached.values() for c in rows}
    assert len(accs) > 1                                       # the sweep measured something


def test_search_meets_budget_and_applies(base, tmp_path):
    before = hashes(base)
    settings = SearchSettings(layers=["*:mlp", "*:qkv"], ranks=["params:0.1", "params:0.3", "params:0.5"],
                              batch_size=50)
    rep = search_run(base, "params:0.5", settings, apply=True, out=tmp_path / "applied", report=tmp_path / "s.json")
    chosen = rep["chosen"]
    assert chosen["params"] <= rep["budget_params"] and chosen["meets_budget"]
    assert rep["allocation"]["params"] <= rep["budget_params"]
    # the parameters used are reported against the budget (an upper bound)
    assert chosen["fraction_kept"] == pytest.approx(chosen["params"] / rep["selected_params"])
    assert chosen["fraction_kept"] <= chosen["budget_fraction"] == 0.5
    assert chosen["budget_unused"] == pytest.approx(rep["budget_params"] - chosen["params"])
    # LASER's compose done right: a step is accepted exactly when it is at least the best so far.
    best = rep["allocation"]["val_acc"]
    for s in rep["compose"]["steps"]:
        assert s["best_before"] == best and s["accepted"] == (s["val_acc"] >= best)
        best = max(best, s["val_acc"]) if s["accepted"] else best
    assert chosen["val_acc"] == best >= rep["allocation"]["val_acc"]
    assert json.loads((tmp_path / "s.json").read_text())["chosen"] == chosen
    red = json.loads((tmp_path / "applied" / "reduce.json").read_text())
    assert red["val_acc_after"] == chosen["val_acc"] and red["test_acc_after"] == chosen["test_acc"]
    assert (tmp_path / "applied" / "search.json").exists()
    assert {l["name"]: l["rank_after"] for l in red["layers"]} == chosen["ranks"]
    assert hashes(base) == before


def test_unmeetable_budget(base, tmp_path):
    before = hashes(base)
    with pytest.raises(UserError, match="cannot be met"):
        search_run(base, "params:0.01", SearchSettings(layers=["*:mlp"], ranks=["params:0.5"]),
                   report=tmp_path / "x.json")
    one_line_error(cli("search", base, "--budget", "params:0.01", "--layers", "*:mlp", "--ranks", "params:0.5",
                       "--report", tmp_path / "y.json"), "cannot be met")
    one_line_error(cli("search", base, "--budget", "half"), "params:F")
    assert hashes(base) == before and not (tmp_path / "x.json").exists()


def test_search_cli_allocates_by_the_threshold_rule(base, tmp_path):
    res = cli("search", base, "--budget", "params:0.6", "--layers", "1:mlp", "--ranks", "params:0.2,params:0.5",
              "--report", tmp_path / "r.json", "--no-compose")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(rep["table"]) == {"blocks.1.ffn.in", "blocks.1.ffn.out"}      # 1:mlp, nothing else
    # The rule, by hand from the report's sweep: the smallest accuracy drop t whose allocation fits the
    # budget; each layer at its fewest parameters among the ranks that drop at most t (none: left whole).
    base_acc, whole = rep["base_val_acc"], rep["layer_params"]

    def at(t):
        return {n: min(((e["params"], e["rank"]) for e in rows if base_acc - e["val_acc"] <= t + 1e-12),
                       default=(whole[n], None)) for n, rows in rep["table"].items()}
    drops = sorted({0.0} | {base_acc - e["val_acc"] for rows in rep["table"].values() for e in rows})
    t = next(t for t in drops if sum(p for p, _ in at(t).values()) <= rep["budget_params"])
    want = {n: r for n, (_, r) in at(t).items() if r is not None}
    assert want and rep["allocation"]["threshold"] == pytest.approx(t)
    assert rep["allocation"]["ranks"] == rep["chosen"]["ranks"] == want
    assert rep["chosen"]["params"] == sum(p for p, _ in at(t).values()) <= rep["budget_params"]
    assert f"chosen: {json.dumps(want)}" in res.stdout


def test_spectrum_cli(base, tmp_path):
    before = hashes(base)
    res = cli("spectrum", base, "--format", "json", "--plot", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 10 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    r = next(r for r in rows if r["layer"] == "blocks.0.ffn.in")
    assert len(r["singular_values"]) == r["max_rank"] == 32
    assert 1 <= r["stable_rank"] <= r["effective_rank"] <= 32
    assert r["energy_at"]["params:0.5"]["rank"] == 10
    res = cli("spectrum", base, "--layers", "*.ffn.*", "--out", tmp_path / "s.csv")
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("layer,d_out,d_in,kind") and "energy@params:0.5" in lines[0]
    assert hashes(base) == before


def test_xt_vit_reduce_and_search(tmp_path):
    run = make_run(tmp_path, name="xt", steps=5, arch="xt-vit")
    out = reduce_run(run, ["1:fc_in", "blocks.0.attn.q=3"], ReduceSettings(rank="params:0.3", store="factored"),
                     out=tmp_path / "r")
    ranks = json.loads((out / "config.json").read_text())["reduction"][0]["ranks"]
    assert set(ranks) == {"blocks.1.ffn1.in", "blocks.1.ffn2.in", "blocks.0.attn.q"}
    model, _ = load_run(out)
    assert model is not None
    rep = search_run(run, "params:0.5", SearchSettings(layers=["*.ffn2.*"], ranks=["params:0.2", "params:0.4"],
                                                       batch_size=50), report=tmp_path / "s.json")
    assert rep["chosen"]["meets_budget"] and set(rep["table"]) == {f"blocks.{i}.ffn2.{k}" for i in (0, 1)
                                                                    for k in ("in", "out")}


def _priced(monkeypatch, ms_of):
    """layer_times replaced by a cost model ms_of(d_out, d_in, rank) (the rule under test, not the clock)."""
    from laser_tool.posthoc import layer_time
    monkeypatch.setattr(layer_time, "layer_times",
                        lambda cases, rows, threads=2, rounds=15: {k: ms_of(*c) for k, c in cases.items()})


def test_a_latency_budget_allocates_by_measured_time_and_never_takes_a_rank_slower_than_dense(base, tmp_path,
                                                                                             monkeypatch):
    # factor pairs cost a fixed 1 ms of overhead plus their multiply-adds: low ranks pay, high ranks do not
    _priced(monkeypatch, lambda d_out, d_in, r: d_out * d_in / 1e3 if r is None else 1 + r * (d_out + d_in) / 1e3)
    settings = SearchSettings(layers=["*:mlp"], ranks=["params:0.1", "params:0.5", "params:0.9"], batch_size=50)
    rep = search_run(base, "latency:0.9", settings, report=tmp_path / "l.json")
    costs, chosen = rep["layer_ms"], rep["chosen"]
    assert rep["budget_kind"] == "latency" and rep["budget_params"] is None
    assert chosen["dense_ms"] == pytest.approx(sum(c["dense_ms"] for c in costs.values()))
    assert rep["budget_ms"] == pytest.approx(0.9 * chosen["dense_ms"])
    want = sum(costs[n]["rank_ms"][r] if n in chosen["ranks"] else costs[n]["dense_ms"] for n, r in
               [(n, chosen["ranks"].get(n)) for n in costs])
    assert chosen["latency_ms"] == pytest.approx(want) and chosen["meets_budget"] and want <= rep["budget_ms"]
    for n, r in chosen["ranks"].items():  # a rank whose pair is slower than the dense layer is never taken
        assert costs[n]["rank_ms"][r] < costs[n]["dense_ms"]


@pytest.mark.timing
def test_a_cut_that_saves_parameters_but_no_time_is_warned_about(base, tmp_path, monkeypatch):
    _priced(monkeypatch, lambda d_out, d_in, r: 1.0 if r is None else 2.0)  # every factor pair is slower
    res = cli("reduce", base, "--layer", "*:mlp", "--rank", "params:0.5", "--store", "factored",
              "--out", tmp_path / "red")
    assert res.exit_code == 0, res.output
    said = [line for line in res.output.splitlines() if "saves parameters but no time" in line]
    red = json.loads((tmp_path / "red" / "reduce.json").read_text())
    assert len(said) == len(red["layers"]) and all("export --format dense" in line for line in said)
    assert not any("no time" in w for w in red["warnings"])  # a measurement of now: said, not recorded
    res = cli("search", base, "--budget", "params:0.6", "--layers", "*:mlp", "--ranks", "params:0.5",
              "--report", tmp_path / "s.json", "--no-compose")
    assert res.exit_code == 0 and "saves parameters but no time" in res.output
    _priced(monkeypatch, lambda d_out, d_in, r: 1.0 if r is None else 0.5)   # every pair faster: no warning
    res = cli("reduce", base, "--layer", "*:mlp", "--rank", "params:0.5", "--store", "factored",
              "--out", tmp_path / "red2")
    assert res.exit_code == 0 and "no time" not in res.output
