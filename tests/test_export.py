"""`laser-tool export`: a dense state dict the original class loads (strict) and that reproduces the run's
logits, an ONNX model that matches torch under onnxruntime, latency recorded for `compare`, and the bad
inputs refused in one line with nothing written.

Tiny models (dim 32, depth 1) trained a few steps on synthetic images (tests/test_reduce.py's make_run);
an ONNX export takes seconds (the dynamo exporter traces the model), so each is made once per module.
"""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from laser_tool.analysis.compare import compare_runs
from laser_tool.analysis.render import render
from laser_tool.export import onnx as export_onnx
from laser_tool.models import ModelSpec
from laser_tool.models.surgery import slots
from laser_tool.models.vit_tiny import ViTTiny
from laser_tool.models.xt_vit import build_xt_vit
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run
from laser_tool.runs.checkpoint import load_run, read_header
from laser_tool.runs.reader import read_run
from conftest import cli, make_run, one_line_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

STEPS = 3
# name -> (arch, train-time spec settings, post-hoc reduction or None)
CASES = {
    "vit-base": ("vit-tiny", {}, None),
    "vit-lowrank-ffn": ("vit-tiny", dict(variant="lowrank", targets=["ffn"], keep=0.25), None),
    "vit-factored": ("vit-tiny", {}, "factored"),
    "vit-skl": ("vit-tiny", dict(variant="skl", targets=["ffn", "attn"], keep=0.25), None),
    "vit-dyad": ("vit-tiny", dict(variant="dyad", targets=["ffn", "attn"], n_dyad=4), None),
    "vit-monarch": ("vit-tiny", dict(variant="monarch", targets=["ffn", "attn"], keep=0.25), None),
    "vit-btt": ("vit-tiny", dict(variant="btt", targets=["ffn", "attn"], btt_rank=1), None),
    "xt-lowrank-ffn": ("xt-vit", dict(variant="lowrank", targets=["ffn"], keep=0.25), None),
    "xt-factored": ("xt-vit", {}, "factored"),
    "xt-monarch": ("xt-vit", dict(variant="monarch", targets=["ffn", "attn"], keep=0.25), None),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{case: finished run directory}, made on first use."""
    root = tmp_path_factory.mktemp("runs")
    made = {}

    def get(case):
        if case not in made:
            arch, kw, reduce = CASES[case]
            base = make_run(root, case + ("-dense" if reduce else ""), steps=STEPS, arch=arch, depth=1, **kw)
            made[case] = reduce_run(base, ["*"], ReduceSettings(rank="params:0.25", store="factored"), out=root / case) \
                if reduce else base
        return made[case]
    return get


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{run directory: its ONNX export}, made on first use through the command line."""
    root, made = tmp_path_factory.mktemp("onnx"), {}

    def get(run):
        if run not in made:
            out = root / f"{run.name}.onnx"
            res = cli("export", run, "--format", "onnx", "--out", out)
            assert res.exit_code == 0 and "exporter: dynamo" in res.output, res.output
            made[run] = out
        return made[run]
    return get


def images(run, n=7):
    s = ModelSpec.from_dict(json.loads((run / "config.json").read_text())["model"]).resolved()
    return torch.rand(n, s.channels, s.image_size, s.image_size, generator=torch.Generator().manual_seed(3))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_export_loads_into_the_original_class_and_reproduces_the_logits(case, runs, tmp_path):
    run = runs(case)
    out = tmp_path / "dense.safetensors"
    res = cli("export", run, "--format", "dense", "--out", out)
    assert res.exit_code == 0, res.output
    _, meta = read_header(out)
    orig = ModelSpec.from_dict(meta["model"])
    assert orig.variant is None and orig.layers == {} and orig.keep is None and orig.targets == []
    # The original constructor, not laser-tool's builder: the seed's ViTTiny class, x-transformers' wrapper.
    model = ViTTiny(orig.resolved()) if orig.arch == "vit-tiny" else build_xt_vit(orig.resolved())
    model.load_state_dict(load_file(out), strict=True)
    reduced, _ = load_run(run)
    x = images(run)
    assert torch.allclose(logits(model, x), logits(reduced, x), atol=1e-5, rtol=1e-5)
    kinds = {s.name: type(s.module).__name__ for s in slots(reduced)}
    changed = {l["name"] for l in meta["export"]["multiplied_out"]}
    assert changed == {n for n, k in kinds.items() if k not in ("Linear", "SNLinear")}
    assert (case == "vit-base") == (not changed)


def test_a_bias_the_original_has_no_place_for_is_refused_or_kept_as_asked(runs, tmp_path):
    """Low-rank layers carry a bias; vit-tiny's qkv and x-transformers' q/k/v/out have none."""
    run = make_run(tmp_path, "lr-attn", steps=STEPS, depth=1, variant="lowrank", targets=["attn"], keep=0.25)
    out = tmp_path / "dense.safetensors"
    one_line_error(cli("export", run, "--format", "dense", "--out", out), "blocks.0.attn.qkv", "--keep-bias")
    assert not out.exists()
    res = cli("export", run, "--format", "dense", "--out", out, "--keep-bias")
    assert res.exit_code == 0, res.output
    model, meta = load_run(out)
    spec = ModelSpec.from_dict(meta["model"])
    assert spec.variant is None and spec.layers == {f"blocks.{i}.attn.qkv": {"kind": "linear", "bias": True}
                                                    for i in range(1)}
    x = images(run)
    assert torch.allclose(logits(model, x), logits(load_run(run)[0], x), atol=1e-5, rtol=1e-5)


def matmuls(path) -> int:
    return sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("case", ["vit-factored", "vit-lowrank-ffn", "vit-monarch", "xt-factored"])
def test_onnx_export_matches_torch_under_onnxruntime(case, runs, exported):
    run = runs(case)
    sess = ort.InferenceSession(str(exported(run)), providers=["CPUExecutionProvider"])
    for n in (1, 9):  # a dynamic batch axis: neither is the traced batch size
        x = images(run, n)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (n, 10)
        assert np.abs(got - logits(load_run(run)[0], x).numpy()).max() <= 1e-4
    assert export_onnx.written_by_laser_tool(exported(run))


def test_factored_layers_are_two_matmuls_in_the_onnx_graph(runs, exported):
    """xt-vit: its dense layers are plain nn.Linear, one MatMul or Gemm each (vit-tiny's sigmaReparam adds
    the power step's products), so every factored layer adds exactly one."""
    red = runs("xt-factored")
    base = red.parent / "xt-factored-dense"
    layers = slots(load_run(red)[0])
    factored = [s for s in layers if type(s.module).__name__ == "FactoredLinear"]
    assert len(factored) == len(layers) == 10
    assert matmuls(exported(red)) == matmuls(exported(base)) + len(factored)


def test_measured_latency_is_recorded_beside_the_run_with_the_dense_figure(runs, tmp_path):
    red = shutil.copytree(runs("vit-factored"), tmp_path / "runs" / "red")
    res = cli("export", red, "--format", "onnx", "--out", tmp_path / "red.onnx", "--measure-latency", "--reps", "3")
    assert res.exit_code == 0, res.output
    lat = json.loads((red / "export" / "latency.json").read_text())
    assert lat["threads"] == 2 and lat["reps"] == 3 and set(lat["batches"]) == {"1", "64"}
    for doc in (lat, lat["dense"]):  # the factored model as exported, and its dense multiply-out beside it
        assert all(v["ms"] == v["median_ms"] > 0 and v["iqr_ms"] >= 0 for v in doc["batches"].values())
    assert "exported: onnxruntime" in res.output and "dense multiply-out: onnxruntime" in res.output
    assert read_run(red).status == "complete"  # the files final.json vouches for are untouched


def test_onnx_without_onnx_installed_names_the_install_command(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    out = tmp_path / "m.onnx"
    one_line_error(cli("export", runs("vit-base"), "--format", "onnx", "--out", out), "pip install", "onnxruntime")
    assert not out.exists()


def test_a_run_that_is_not_finished_is_refused(runs, tmp_path):
    run = shutil.copytree(runs("vit-base"), tmp_path / "unfinished")
    (run / "final.json").unlink()
    out = tmp_path / "m.safetensors"
    one_line_error(cli("export", run, "--format", "dense", "--out", out), "not a finished run", "incomplete")
    one_line_error(cli("export", tmp_path / "nowhere", "--format", "dense", "--out", out), "not a run directory")
    assert not out.exists()


def test_an_out_the_tool_did_not_write_is_never_overwritten(runs, exported, tmp_path):
    run = runs("vit-factored")
    for fmt, name in (("dense", "m.safetensors"), ("onnx", "m.onnx")):
        foreign = tmp_path / name
        foreign.write_bytes(b"someone's file")
        one_line_error(cli("export", run, "--format", fmt, "--out", foreign), "not written by laser-tool")
        assert foreign.read_bytes() == b"someone's file"
    # One the tool wrote is replaced (exporting again), whatever format it was (a name of neither format's
    # suffix: a dense export named .onnx is refused, test_probe_checks.py).
    ours = shutil.copy(exported(run), tmp_path / "ours")
    assert cli("export", run, "--format", "dense", "--out", ours).exit_code == 0
    assert cli("export", run, "--format", "dense", "--out", ours).exit_code == 0
    one_line_error(cli("export", run, "--format", "dense", "--out", run / "x.safetensors"), "inside the input")
    one_line_error(cli("export", run, "--format", "dense", "--out", tmp_path / "y", "--measure-latency"),
                   "--format onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.safetensors", "ours"]


def test_a_failed_check_writes_nothing(runs, tmp_path, monkeypatch):
    """An export onnxruntime does not reproduce (here: made to differ) is refused, and no file or temp file
    is left; both exporters are tried first."""
    monkeypatch.setattr(export_onnx, "max_difference", lambda *a: 1.0)
    tried = []
    monkeypatch.setattr(export_onnx, "_export", lambda model, x, dynamo: tried.append(dynamo) or b"graph")
    out = tmp_path / "m.onnx"
    one_line_error(cli("export", runs("vit-base"), "--format", "onnx", "--out", out), "nothing was written",
                   "dynamo: onnxruntime differs", "torchscript")
    assert tried == [True, False]
    assert list(tmp_path.iterdir()) == []
