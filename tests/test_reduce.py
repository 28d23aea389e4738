"""Post-hoc reduction: rank SPECs, truncation methods, selectors, the reduce command and its errors.

A tiny vit-tiny is trained for a few steps on synthetic class-template images written as MNIST IDX
files, so accuracies are non-trivial and the real data path is exercised.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from laser_tool.data import files as data
from laser_tool.runs.checkpoint import load_run, save_model
from laser_tool.errors import UserError
from laser_tool.models.budget import fraction_rank
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run
from laser_tool.posthoc.ranks import select
from laser_tool.posthoc.decompose import Calib, Decomposition, relative_error, singular_values, truncate
from laser_tool.posthoc.spectrum import mp_threshold
from laser_tool.posthoc.ranks import parse_spec, resolve_rank
from conftest import cli, hashes, make_run, one_line_error


pytestmark = pytest.mark.usefixtures("isolated", "one_thread_per_module")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root)


def images(run, n=64):
    cfg = json.loads((run / "config.json").read_text())
    sp = data.load_dataset("mnist", cfg["data_dir"], False, 100, 0, None)
    return sp.test_x[:n].float() / 255


def logits(run, x):
    model, _ = load_run(run)
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------ rank SPECs

def test_parse_spec_forms():
    assert parse_spec("64").kind == "int" and parse_spec("64").value == 64
    assert (parse_spec("rho:0.1").kind, parse_spec("rho:0.1").value) == ("rho", 0.1)
    assert parse_spec("params:0.5").kind == "params"
    assert parse_spec("energy:0.9").kind == "energy"
    for bad in ("rho:abc", "foo:0.5", "0.5", "-3", "0", "rho:1.5", "energy:0", ""):
        with pytest.raises(UserError):
            parse_spec(bad)


def test_params_half_is_the_seeds_fraction_rank():
    # vit-tiny and xt-vit layer shapes at the seed's sizes, plus the tiny model's.
    shapes = [(512, 240), (1152, 512), (512, 384), (256, 512), (512, 256), (10, 512), (256, 48), (384, 256),
              (256, 384), (1024, 256), (256, 1024), (10, 256), (96, 32), (64, 32), (32, 64)]
    for d_out, d_in in shapes:
        r = resolve_rank("params:0.5", d_out, d_in)
        assert r == fraction_rank(d_in, d_out, 0.5) == int(0.5 * d_out * d_in / (d_out + d_in))


def test_rho_and_energy_ranks():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])
    assert resolve_rank("rho:0.5", 4, 6, s) == 2
    assert resolve_rank("energy:0.7", 4, 6, s) == 1          # energies 16, 4, 1, 1 of 22
    assert resolve_rank("energy:0.8", 4, 6, s) == 2
    assert resolve_rank("energy:1.0", 4, 6, s) == 4
    with pytest.raises(UserError, match="above the maximum 4"):
        resolve_rank("5", 4, 6, s)
    with pytest.raises(UserError, match="below 1"):
        resolve_rank("rho:0.1", 4, 6, s)


# ------------------------------------------------------------------ truncation methods

def test_truncated_svd_error_is_the_dropped_singular_values():
    torch.manual_seed(0)
    W = torch.randn(40, 30, dtype=torch.float64)
    s = torch.linalg.svdvals(W)
    for r in (1, 5, 17, 29):
        U, V = truncate(W, r)
        err = torch.linalg.matrix_norm(W - U.double() @ V.double())
        assert torch.isclose(err, s[r:].norm(), rtol=1e-5), (r, err, s[r:].norm())
        assert relative_error(W, U, V) == pytest.approx(float(s[r:].norm() / s.norm()), rel=1e-5)


def test_full_rank_reproduces_the_matrix():
    torch.manual_seed(1)
    W = torch.randn(24, 36)
    X = torch.randn(500, 36)
    for method in ("svd", "whiten", "asvd"):
        U, V = truncate(W, 24, method, calib=X)
        assert torch.allclose(U @ V, W, atol=1e-5, rtol=1e-5), method


def test_whiten_beats_svd_on_output_error_with_correlated_inputs():
    torch.manual_seed(2)
    d_in, d_out, r = 48, 64, 8
    mix = torch.randn(d_in, d_in) * torch.logspace(0, -3, d_in)[:, None]  # strongly correlated features
    X = torch.randn(2000, d_in) @ mix
    W = torch.randn(d_out, d_in)
    out = {}
    for method in ("svd", "whiten", "asvd"):
        U, V = truncate(W, r, method, calib=X)
        out[method] = float(torch.linalg.matrix_norm(X @ (W - U @ V).T))
    assert out["whiten"] < out["svd"] * 0.9, out
    assert out["asvd"] < out["svd"], out


def test_whiten_survives_rank_deficient_inputs_and_fisher_weights_rows():
    torch.manual_seed(3)
    W = torch.randn(16, 32)
    d = Decomposition(W, "whiten", Calib.from_inputs(torch.randn(8, 32)))  # 8 tokens < 32 features
    assert d.info["cholesky_shift"] > 0
    U, V = d.factors(4)
    assert torch.isfinite(U).all() and torch.isfinite(V).all()
    rows = torch.ones(16)
    rows[:4] = 1e4                                          # the loss cares about rows 0..3
    U, V = Decomposition(W, "fisher", Calib(row_fisher=rows)).factors(4)
    Us, Vs = truncate(W, 4)
    assert (W - U @ V)[:4].norm() < (W - Us @ Vs)[:4].norm()
    with pytest.raises(UserError, match="calibration"):
        Decomposition(W, "whiten")


def test_mp_threshold_separates_signal_from_noise():
    torch.manual_seed(4)
    noise = torch.randn(200, 300)
    assert int((singular_values(noise) > mp_threshold(singular_values(noise), noise.shape)).sum()) <= 1
    signal = noise + 8 * torch.randn(200, 3) @ torch.randn(3, 300)
    s = singular_values(signal)
    assert int((s > mp_threshold(s, signal.shape)).sum()) == 3


# ------------------------------------------------------------------ selectors

def test_selectors(base):
    model, _ = load_run(base)
    names = lambda sel: list(select(model, sel, "2"))  # noqa: E731
    assert names(["blocks.1.ffn.in"]) == ["blocks.1.ffn.in"]
    assert names(["*.ffn.in"]) == ["blocks.0.ffn.in", "blocks.1.ffn.in"]
    assert names(["1:fc_in"]) == ["blocks.1.ffn.in"]
    assert names(["*:mlp"]) == ["blocks.0.ffn.in", "blocks.0.ffn.out", "blocks.1.ffn.in", "blocks.1.ffn.out"]
    assert names(["0:attn"]) == ["blocks.0.attn.qkv", "blocks.0.attn.out"]
    assert len(names(["*:all"])) == 8 and len(names(["*"])) == 10
    chosen = select(model, ["*:mlp", "blocks.0.ffn.in=rho:0.5"], "params:0.5")
    assert str(chosen["blocks.0.ffn.in"][1]) == "rho:0.5" and str(chosen["blocks.1.ffn.in"][1]) == "params:0.5"
    for bad, msg in (("0:q", "use type qkv"), ("5:mlp", "block"), ("0:fc", "unknown layer type"),
                     ("blocks.0.ffn.inn", "did you mean blocks.0.ffn.in")):
        with pytest.raises(UserError, match=msg):
            select(model, [bad], "2")
    with pytest.raises(UserError, match="no rank"):
        select(model, ["head"])


# ------------------------------------------------------------------ reduce_run

def test_full_rank_reduce_changes_no_output(base, tmp_path):
    before = hashes(base)
    x = images(base)
    out = reduce_run(base, ["*"], ReduceSettings(rank="energy:1.0"), out=tmp_path / "full")
    assert torch.allclose(logits(out, x), logits(base, x), atol=1e-4, rtol=1e-4)
    rep = json.loads((out / "reduce.json").read_text())
    assert rep["val_acc_after"] == rep["val_acc_before"] and rep["test_acc_after"] == rep["test_acc_before"]
    assert hashes(base) == before


def test_factored_equals_dense_with_fewer_params(base, tmp_path):
    sel = ["*:mlp", "blocks.1.attn.qkv=6", "head=4"]
    dense = reduce_run(base, sel, ReduceSettings(rank="params:0.3", store="dense"), out=tmp_path / "d")
    fact = reduce_run(base, sel, ReduceSettings(rank="params:0.3", store="factored"), out=tmp_path / "f")
    x = images(base)
    a, b = logits(dense, x), logits(fact, x)
    assert float((a - b).norm() / a.norm()) < 1e-5
    fd, ff = (json.loads((p / "final.json").read_text()) for p in (dense, fact))
    assert ff["params"] < fd["params"] == json.loads((base / "final.json").read_text())["params"]
    assert ff["kind"] == "post-hoc" and ff["status"] == "complete" and ff["parent"] == str(base)
    assert ff["eval_precision"] == "fp32"  # scored as its parent was (autocast only on CUDA)
    rep = json.loads((fact / "reduce.json").read_text())
    layer = next(l for l in rep["layers"] if l["name"] == "blocks.0.ffn.in")
    assert layer["rank_after"] == int(0.3 * 64 * 32 / 96) and layer["params_after"] == layer["rank_after"] * 96 + 64
    assert {"shape", "method", "rank_before", "params_before", "rel_frobenius_error", "energy_kept_weight",
            "energy_kept_truncated"} <= set(layer)
    cfg = json.loads((fact / "config.json").read_text())
    assert cfg["model"]["layers"]["blocks.0.ffn.in"] == {"kind": "factored", "rank": 6, "bias": True}
    _, meta_cfg = load_run(fact)
    assert meta_cfg == cfg


def test_reductions_compose(base, tmp_path):
    one = reduce_run(base, ["*:mlp"], ReduceSettings(rank="params:0.5", store="factored"), out=tmp_path / "one")
    two = reduce_run(one, ["blocks.0.ffn.in=4", "blocks.1.attn.out=3"],
                     ReduceSettings(method="whiten", store="factored"), out=tmp_path / "two")
    cfg = json.loads((two / "config.json").read_text())
    assert [s["parent"] for s in cfg["reduction"]] == [str(base), str(one)]
    assert cfg["model"]["layers"]["blocks.0.ffn.in"]["rank"] == 4
    assert cfg["model"]["layers"]["blocks.1.ffn.out"]["rank"] == 10          # kept from step one
    assert cfg["reduction"][1]["calib"]["split"] == "train"
    rep = json.loads((two / "reduce.json").read_text())
    assert rep["layers"][0]["rank_before"] == 10 and rep["layers"][0]["rank_after"] == 4
    model, _ = load_run(two)
    assert model.blocks[0]["ffn"].fc_in.rank == 4


def test_structured_layer_reduces_to_linear(tmp_path):
    run = make_run(tmp_path, steps=0, variant="lowrank", targets=["ffn-in"], scale=0.9)
    out = reduce_run(run, ["0:fc_in=3", "0:qkv=5"], out=tmp_path / "r")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["layers"] == {"blocks.0.ffn.in": {"kind": "linear", "bias": True}}  # SN layer keeps its type
    model, _ = load_run(out)
    assert type(model.blocks[0]["ffn"].fc_in) is torch.nn.Linear
    assert torch.linalg.matrix_rank(model.blocks[0]["ffn"].fc_in.weight) == 3


def test_saves_nothing_warning_compares_with_the_replaced_layer(tmp_path, capsys):
    """A low-rank layer stored dense grows even at a rank far below the dense break-even rank."""
    run = make_run(tmp_path, steps=0, variant="lowrank", targets=["ffn-in"], scale=0.5)
    reduce_run(run, ["0:fc_in=4"], ReduceSettings(store="dense"), out=tmp_path / "dense")
    err = capsys.readouterr().err
    assert "blocks.0.ffn.in" in err and "saves nothing" in err and "lowrank layer it replaces" in err
    reduce_run(run, ["0:fc_in=4"], ReduceSettings(store="factored"), out=tmp_path / "fact")   # smaller than the low-rank layer
    assert "saves nothing" not in capsys.readouterr().err


# ------------------------------------------------------------------ the command and its errors

def test_cli_reduce_and_warning(base, tmp_path):
    res = cli("reduce", base, "--layer", "0:fc_in", "--rank", "30", "--store", "factored", "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    assert "saves nothing" in res.stderr
    assert json.loads((tmp_path / "w" / "reduce.json").read_text())["warnings"]
    res = cli("reduce", base, "--layer", "head", "--rank", "rho:0.5")      # default sibling directory
    assert res.exit_code == 0, res.output
    out = Path(res.stdout.strip().split("wrote ")[-1])
    assert out.parent == base.parent and out.name.startswith("base-reduced-svd-")
    assert cli("reduce", base, "--layer", "head", "--rank", "rho:0.5").exit_code == 2   # exists: refuse


def test_cli_errors_leave_the_input_untouched(base, tmp_path):
    before = hashes(base)
    cases = [
        (["--layer", "blocks.0.ffn.inn", "--rank", "2"], ["did you mean blocks.0.ffn.in"]),
        (["--layer", "blocks.0.ffn.in", "--rank", "100"], ["above the maximum 32"]),
        (["--layer", "blocks.0.ffn.in", "--rank", "0"], ["below 1"]),
        (["--layer", "head", "--rank", "rho:0.01"], ["below 1"]),
        (["--layer", "head", "--rank", "rho:abc"], ["not a number"]),
        (["--layer", "head", "--rank", "0.5"], ["cannot parse"]),
        (["--layer", "head=", "--rank", "2"], ["cannot parse"]),
        (["--layer", "head", "--rank", "2", "--method", "whiten", "--calib-batches", "0"], ["calib"]),
        (["--layer", "head", "--rank", "2", "--out", base / "inside"], ["input run"]),
    ]
    for args, needles in cases:
        one_line_error(cli("reduce", base, *args), *needles)
    assert hashes(base) == before


def test_cli_bad_checkpoints(base, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(base, bad)
    blob = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    one_line_error(cli("reduce", bad, "--layer", "head", "--rank", "2"), "corrupt or truncated")
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    one_line_error(cli("reduce", bad, "--layer", "head", "--rank", "2"), "not a readable safetensors")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not really a pickle")
    one_line_error(cli("reduce", pt, "--layer", "head", "--rank", "2"), "pickle")


def test_cli_missing_calibration_data(base, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["data_dir"] = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    model, _ = load_run(base)
    save_model(moved / "model.safetensors", model, cfg)
    (moved / "config.json").write_text(json.dumps(cfg))
    before = hashes(moved)
    one_line_error(cli("reduce", moved, "--layer", "head", "--rank", "2", "--method", "whiten"), "mnist not found")
    assert hashes(moved) == before
    assert not any(p.name.startswith("moved-") or p.name.startswith(".moved") for p in tmp_path.iterdir())


@pytest.mark.parametrize("method", ["svd", "whiten"])
def test_multi_budget_reduction_equals_one_reduce_per_budget(base, tmp_path, method):
    from laser_tool.runs.predictions import load_predictions
    from laser_tool.posthoc.reduce import reduce_run_budgets
    budgets = {0.5: ["*.ffn.in=params:0.5", "*.ffn.out=params:0.5"], 0.25: ["*.ffn.in=params:0.25"],
               0.1: ["*:all=params:0.1"]}
    settings = ReduceSettings(method=method, store="factored", calib_batches=2)
    shared = reduce_run_budgets(base, budgets, settings, outs={b: tmp_path / f"multi-{b}" for b in budgets})
    assert set(shared) == set(budgets)
    for b, sels in budgets.items():
        one = reduce_run(base, sels, settings, out=tmp_path / f"one-{b}")
        a, _ = load_run(shared[b])
        c, _ = load_run(one)
        sa, sc = a.state_dict(), c.state_dict()
        assert sa.keys() == sc.keys() and all(torch.equal(sa[k], sc[k]) for k in sa)
        fa, fc = (json.loads((d / "final.json").read_text()) for d in (shared[b], one))
        fa.pop("reduce_seconds"), fc.pop("reduce_seconds")
        # config.json (also in the checkpoint's metadata) names its run, so only the predictions' digest agrees
        da, dc = fa.pop("digests"), fc.pop("digests")
        assert da["predictions.safetensors"] == dc["predictions.safetensors"] and da.keys() == dc.keys()
        assert fa == fc
        assert json.loads((shared[b] / "reduce.json").read_text()) == json.loads((one / "reduce.json").read_text())
        ca, cc = (json.loads((d / "config.json").read_text()) for d in (shared[b], one))
        assert {**ca, "name": None} == {**cc, "name": None}
        pa, pc = load_predictions(shared[b])[0], load_predictions(one)[0]
        assert all(torch.equal(pa.tensors[k], pc.tensors[k]) for k in ("test", "val", "test_labels"))
        # the predictions are those of the model written: they reproduce final.json's accuracies
        assert pa.correct("test").float().mean().item() == pytest.approx(fa["test_acc"])
        assert pa.correct("val").float().mean().item() == pytest.approx(fa["val_acc"])
    with pytest.raises(UserError, match="same output directory"):
        reduce_run_budgets(base, budgets, ReduceSettings(method="svd"), outs={b: tmp_path / "same" for b in budgets})


@pytest.mark.parametrize("kind", ["monarch", "btt"])
def test_monarch_and_btt_layers_are_cut_post_hoc_via_their_dense_weight(tmp_path, kind):
    run = make_run(tmp_path, steps=5, variant=kind, targets=["ffn-in"], keep=0.5)
    model, _ = load_run(run)
    W = model.blocks[0]["ffn"].fc_in.dense_weight().detach()
    out = reduce_run(run, ["0:fc_in=4"], ReduceSettings(store="factored"), out=tmp_path / "r")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["layers"] == {"blocks.0.ffn.in": {"kind": "factored", "rank": 4, "bias": True}}
    cut, _ = load_run(out)
    layer = cut.blocks[0]["ffn"].fc_in
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    best = (U[:, :4] * S[:4]) @ Vh[:4]       # the truncated SVD of the structured layer's own matrix
    assert ((layer.dense_weight().detach() - best).norm() / best.norm()).item() < 1e-4
    assert type(cut.blocks[1]["ffn"].fc_in).__name__ == ("MonarchLinear" if kind == "monarch" else "BTTLinear")
