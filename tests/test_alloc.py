"""Allocated post-hoc rows (svd-alloc, whiten-alloc): per-layer ranks chosen by `search` on validation under
the uniform cut's parameter budget; they meet it, and the study's row is exactly `search --apply`'s model."""
import json
import shlex

import pytest
import torch
from safetensors.torch import load_file

from laser_tool import study
from laser_tool.errors import UserError
from laser_tool.posthoc import search as searcher
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run, run_data
from laser_tool.posthoc.search import SearchSettings, parse_budget, search_budgets, search_run
from laser_tool.runs.checkpoint import load_run
from laser_tool.study import frontier
from laser_tool.study.allocated import SEARCH
from conftest import cli, hashes, make_run

pytestmark = pytest.mark.usefixtures("isolated", "one_thread_per_module")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


def layer_params_after(run) -> int:
    return sum(l["params_after"] for l in json.loads((run / "reduce.json").read_text())["layers"])


def test_uniform_budget_is_the_uniform_cuts_parameters_and_is_met(base, tmp_path):
    """uniform:F is what `reduce --layer SEL=params:F --store factored` leaves in the selected layers (hand
    count from the uniform run itself); the search's choice stays at or under it, in the model too."""
    before = hashes(base)
    reps = search_budgets(base, {k: f"uniform:{k}" for k in (0.5, 0.25)},
                          SearchSettings(layers=["*:all"], compose=False, batch_size=50), apply=True,
                          outs={k: tmp_path / f"alloc-{k}" for k in (0.5, 0.25)}, write_reports=False)
    for keep, rep in reps.items():
        uniform = reduce_run(base, [f"*:all=params:{keep}"], ReduceSettings(store="factored"), out=tmp_path / f"uniform-{keep}")
        assert rep["budget_params"] == layer_params_after(uniform)
        assert rep["chosen"]["meets_budget"] and rep["chosen"]["params"] <= rep["budget_params"]
        alloc = tmp_path / f"alloc-{keep}"
        # the applied run's selected layers hold what the report counts (reduced ones factored, the rest whole)
        untouched = sum(rep["layer_params"][n] for n in rep["layers"] if n not in rep["chosen"]["ranks"])
        assert layer_params_after(alloc) + untouched == rep["chosen"]["params"]
        finals = [json.loads((r / "final.json").read_text()) for r in (alloc, uniform)]
        assert finals[0]["params"] <= finals[1]["params"]  # equal-or-fewer parameters than the uniform row
        assert rep["chosen"]["test_acc"] == finals[0]["test_acc"]  # test evaluated once, by the reduction
    assert reps[0.25]["budget_params"] < reps[0.5]["budget_params"]
    assert hashes(base) == before


def test_budget_parse_errors():
    assert parse_budget("uniform:0.25") == ("uniform", 0.25) and parse_budget(" params:0.5") == ("params", 0.5)
    for bad in ("0.5", "rho:0.5", "uniform:1.5", "uniform:x"):
        with pytest.raises(UserError):
            parse_budget(bad)


def test_search_chooses_on_validation_only(base, tmp_path, monkeypatch):
    """The sweep, the allocation and the compose see validation images only (the first val_images of
    them); the test set is touched once, for the report."""
    _, cfg = load_run(base)
    splits = run_data(cfg)
    seen = []
    real = searcher.evaluate

    def evaluate(model, images, labels, *a, **k):
        seen.append(len(images) if images.data_ptr() != splits.test_x.data_ptr() else "test")
        return real(model, images, labels, *a, **k)
    monkeypatch.setattr(searcher, "evaluate", evaluate)
    monkeypatch.setattr(searcher, "run_data", lambda *a, **k: splits)
    real_sweep = searcher.sweep
    monkeypatch.setattr(searcher, "sweep", lambda m, n, s, images, labels, *a: (
        seen.append(("sweep", images.data_ptr() == splits.val_x.data_ptr(), len(images))), real_sweep(
            m, n, s, images, labels, *a))[1])
    rep = search_run(base, "uniform:0.5", SearchSettings(layers=["*:mlp"], val_images=30, batch_size=50),
                     report=tmp_path / "r.json")
    assert seen[-1] == "test" and seen.count("test") == 1
    assert ("sweep", True, 30) in seen and all(s == 30 for s in seen if isinstance(s, int))
    assert rep["val_images"] == 30


def test_study_rows_equal_search_apply_and_show_in_the_table(tiny_study, monkeypatch):
    tmp, calls = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier(
        "quick", (0.5, 0.25), "all", ("svd", "whiten", "svd-alloc", "whiten-alloc")))
    sweeps = []
    real_sweep = searcher.sweep
    monkeypatch.setattr(searcher, "sweep", lambda *a, **k: (sweeps.append(1), real_sweep(*a, **k))[1])
    report = study.run_study(study.StudyRequest("quick", out=tmp / "st", device="cpu", data_dir=tmp / "data"),
                             log=lambda s: None)
    assert len(sweeps) == 2  # one sensitivity sweep per method for both budgets
    runs = tmp / "st" / "runs"
    steps, _ = study.plan("quick", 1, tmp / "st", device="cpu", data_dir=tmp / "data")
    for fam in ("svd-alloc", "whiten-alloc"):
        for keep in (0.5, 0.25):
            name = f"{fam}-k{keep:g}-s0"
            st = next(s for s in steps if s.name == name)
            # the step's own command, run by hand into another directory, makes the same model
            args = shlex.split(st.command)[1:]
            args[args.index("--out") + 1] = str(tmp / "cli" / name)
            res = cli(*args, "--report", tmp / "cli" / f"{name}.json")
            assert res.exit_code == 0, res.output
            mine, by_hand = runs / name, tmp / "cli" / name
            cfgs = [json.loads((r / "config.json").read_text()) for r in (mine, by_hand)]
            assert cfgs[0]["reduction"][-1]["ranks"] == cfgs[1]["reduction"][-1]["ranks"]
            assert cfgs[0]["reduction"][-1]["request"]["search"] == f"uniform:{keep:g}"
            w0, w1 = (load_file(r / "model.safetensors") for r in (mine, by_hand))
            assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
            m0, m1 = load_run(mine)[0].eval(), load_run(by_hand)[0].eval()
            x = torch.rand(8, 1, 28, 28)
            with torch.no_grad():
                assert torch.equal(m0(x), m1(x))
            # at most the uniform row's parameters, in the whole model
            uniform = json.loads((runs / f"{fam.split('-')[0]}-k{keep:g}-s0" / "final.json").read_text())
            assert json.loads((mine / "final.json").read_text())["params"] <= uniform["params"]
            searched = json.loads((mine / "search.json").read_text())
            assert searched["chosen"]["meets_budget"] and searched["val_images"] == min(SEARCH["val_images"], 50)
    rows = json.loads((tmp / "st" / "results.json").read_text())["rows"]
    curves = {r["curve"] for r in rows}
    assert {"post-hoc svd all", "post-hoc whiten all", "post-hoc svd-alloc all", "post-hoc whiten-alloc all"} <= curves
    alloc = [r for r in rows if "-alloc" in r["curve"]]
    assert len({r["label"] for r in alloc}) == 4 and all(r["family"] == "post-hoc" for r in alloc)
    for r in alloc:  # keep counts every layer the search could cut, so it is at most the uniform row's
        uniform_run = r["runs"][0].replace("-alloc", "")
        twin = next(u for u in rows if u["runs"] == [uniform_run])
        assert r["keep"] <= twin["keep"] + 1e-9 and r["params"] <= twin["params"]
    md = report.read_text()
    assert "svd-alloc" in md and "whiten-alloc" in md and "laser-tool search" in md


def test_loss_criterion_ranks_layers_where_accuracy_shows_no_drop():
    """Hand-made table: neither layer's accuracy drops at any rank, so the accuracy threshold takes the
    cheapest rank everywhere (t = 0) and leaves budget unused; the loss threshold spends it on the layer
    whose loss rises most (a, cut to rank 2, rises 0.5; b at rank 1 rises 0.1)."""
    row = lambda rank, params, loss: dict(rank=rank, params=params, val_acc=0.9, val_loss=loss)
    table = {"a": [row(4, 40, 1.1), row(2, 20, 1.5)], "b": [row(2, 20, 1.05), row(1, 10, 1.1)]}
    layer_params = {"a": 100, "b": 50}
    assert searcher.allocate(table, 0.9, layer_params, 60) == (0.0, {"a": 2, "b": 1})  # 30 of 60 used
    t, alloc = searcher.allocate(table, 0.9, layer_params, 60, "loss", base_loss=1.0)
    assert alloc == {"a": 4, "b": 1} and t == pytest.approx(0.1)  # 50 of 60: a keeps rank 4 (+0.1, not +0.5)
    with pytest.raises(UserError, match="criterion"):
        searcher.allocate(table, 0.9, layer_params, 60, "f1")
