"""Calibration of the activation-aware cuts: original vs sequential (`reduce --calibrate`), and what
whitening guarantees per layer."""
import json

import pytest
import torch

from laser_tool.models.layers import FactoredLinear, dense_weight
from laser_tool.models.surgery import slots
from laser_tool.posthoc.calibration import calibrate_sequentially, calibration_batches, collect_calibration
from laser_tool.posthoc.decompose import Decomposition
from laser_tool.posthoc.ranks import resolve_rank, select
from laser_tool.posthoc.reduce import ReduceSettings, forward_order, reduce_run, run_data
from laser_tool.runs.checkpoint import load_run
from conftest import cli, hashes, make_run, one_line_error

pytestmark = pytest.mark.usefixtures("isolated", "one_thread_per_module")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


def plan(model, keep=0.25):
    """{name: (module's dense weight, rank)} for the attention and FFN layers at params:keep, forward order."""
    chosen = select(model, [f"*:all=params:{keep:g}"], None)
    out = {}
    for n in forward_order(model, chosen):
        W = dense_weight(chosen[n][0].module).detach()
        out[n] = (W, resolve_rank(chosen[n][1], *W.shape, torch.linalg.svdvals(W.double()), n))
    return out


def setup(base, n_batches=2):
    model, cfg = load_run(base)
    batches = calibration_batches(run_data(cfg), n_batches, cfg.get("seed", 0))
    return model, batches, plan(model)


def output_error(W, Wr, G):
    D = (W - Wr).double()
    return float(torch.trace(D @ G @ D.T).sqrt())


def test_sequential_equals_original_for_the_first_layer_and_differs_after(base):
    model, batches, p = setup(base)
    names = list(p)
    original = collect_calibration(model, names, batches, "whiten")
    by_name = {s.name: s for s in slots(model)}

    def cut(name, calib):
        W, r = p[name]
        by_name[name].set(FactoredLinear(*Decomposition(W, "whiten", calib).factors(r), by_name[name].module.bias))
    seq = calibrate_sequentially(model, names, batches, "whiten", cut)
    assert len(names) >= 4
    first, later = names[0], names[1:]
    assert torch.equal(seq[first].xtx, original[first].xtx) and seq[first].tokens == original[first].tokens
    for n in later:   # every later layer sees the cut layers' outputs, so its statistics move
        rel = float((seq[n].xtx - original[n].xtx).norm() / original[n].xtx.norm())
        assert rel > 1e-4, (n, rel)


def test_whitened_output_error_is_at_most_svds_on_the_calibration_inputs(base):
    """Per layer, on the very inputs it is calibrated on: ||(W - W_r) X^T|| of whiten <= svd's (whitening's
    truncation is optimal for that norm at each rank)."""
    model, batches, _ = setup(base)
    for keep in (0.5, 0.25, 0.1):
        p = plan(model, keep)
        calib = collect_calibration(model, list(p), batches, "whiten")
        for n, (W, r) in p.items():
            G = calib[n].xtx
            e = {m: output_error(W, (lambda U, V: U.double() @ V.double())(*Decomposition(W, m, calib[n] if m != "svd"
                                 else None).factors(r)), G) for m in ("svd", "whiten")}
            assert e["whiten"] <= e["svd"] * (1 + 1e-6), (keep, n, e)


def test_reduce_sequential_keeps_the_first_layer_and_recalibrates_the_rest(base, tmp_path):
    kw = dict(rank="params:0.25", method="whiten", store="factored", calib_batches=2)
    a = reduce_run(base, ["*:all"], ReduceSettings(**kw), out=tmp_path / "orig")
    b = reduce_run(base, ["*:all"], ReduceSettings(calibrate="sequential", **kw), out=tmp_path / "seq")
    rep = json.loads((b / "reduce.json").read_text())
    assert rep["calib"]["mode"] == "sequential" and "mode" not in json.loads((a / "reduce.json").read_text())["calib"]
    assert json.loads((b / "config.json").read_text())["reduction"][-1]["calibrate"] == "sequential"
    ma, mb = ({s.name: s.module for s in slots(load_run(r)[0])} for r in (a, b))
    names = forward_order(load_run(base)[0], [l["name"] for l in rep["layers"]])
    same = [torch.equal(ma[n].U, mb[n].U) and torch.equal(ma[n].V, mb[n].V) for n in names]
    assert same[0] and not any(same[1:]), same

def test_calibrate_sequential_with_svd_is_one_line_and_writes_nothing(base, tmp_path):
    before = hashes(base)
    res = cli("reduce", base, "--layer", "*:all", "--rank", "params:0.5", "--calibrate", "sequential",
              "--out", tmp_path / "x")
    one_line_error(res, "--calibrate sequential", "svd", "--method whiten")
    assert not (tmp_path / "x").exists() and hashes(base) == before
    res = cli("reduce", base, "--layer", "*:all", "--rank", "params:0.5", "--calibrate", "nope")
    assert res.exit_code != 0 and "original" in res.output


def test_sequential_budgets_in_one_call_equal_one_call_each(base, tmp_path):
    """Sharing a call across budgets must not share sequential calibration: each budget's later layers see
    its own earlier cuts."""
    from laser_tool.posthoc.reduce import reduce_run_budgets
    sel = {k: [f"*:all=params:{k}"] for k in (0.5, 0.1)}
    settings = ReduceSettings(method="whiten", store="factored", calib_batches=1, calibrate="sequential")
    both = reduce_run_budgets(base, sel, settings, outs={k: tmp_path / f"both{k}" for k in sel})
    for k in sel:
        one = reduce_run(base, sel[k], settings, out=tmp_path / f"one{k}")
        ma, mb = ({s.name: s.module for s in slots(load_run(r)[0])} for r in (both[k], one))
        assert all(torch.equal(ma[n].U, mb[n].U) and torch.equal(ma[n].V, mb[n].V)
                   for n in ma if isinstance(ma[n], FactoredLinear))


def test_study_steps_keep_original_calibration_and_its_fingerprint():
    from pathlib import Path
    from laser_tool.study import frontier
    from laser_tool.study.record import fingerprint
    from laser_tool.study.steps import reduce_step
    st = reduce_step(Path("runs"), "base", "whiten-k50", ["*:all=params:0.5"], "whiten", 0)
    assert "--calibrate" not in st.command and st.calibrate == "original" == frontier.CALIBRATION
    assert fingerprint(st) == json.dumps(["reduce", "base", ["*:all=params:0.5"], "whiten"], sort_keys=True)
    seq = reduce_step(Path("runs"), "base", "whiten-k50", ["*:all=params:0.5"], "whiten", 0, calibrate="sequential")
    assert "--calibrate sequential" in seq.command and fingerprint(seq) != fingerprint(st)
