"""The registries make a layer family and a post-hoc method one file plus one registration: a toy family
and a toy method, registered from inside this test (no library file touched), go through every command
a built-in one does: info counts it, train trains it, reduce cuts it, export multiplies it out, compare
groups and labels it."""
import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from laser_tool.analysis.compare import compare_runs
from laser_tool.cli import main
from laser_tool.export.run import export_run
from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.models.budget import choose, dense_params
from laser_tool.models.families import FAMILIES, names, register_family, unregister_family
from laser_tool.models.surgery import find_slot, named_linears
from laser_tool.posthoc.methods import METHODS, Method, register_method, unregister_method
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run
from laser_tool.runs.checkpoint import load_run
from synthetic import write_tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_params(d_in, d_out, rank, bias):
    return rank * (d_in + d_out) + min(d_in, d_out) + (d_out if bias else 0)


class DiagPlusLowRank(nn.Module):
    """W = D + U V: a diagonal (on the leading square) plus a rank-r product. The toy family."""
    kind = "toy-dlr"
    description = "diagonal plus low rank (a test's toy family)"
    flags = ()

    def __init__(self, d_in, d_out, rank=1, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        self.diag = nn.Parameter(torch.ones(min(d_in, d_out)))
        self.V = nn.Parameter(torch.randn(rank, d_in) / d_in ** 0.5)
        self.U = nn.Parameter(torch.randn(d_out, rank) / rank ** 0.5)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def dense_weight(self):
        k = self.diag.numel()
        pad = (0, self.in_features - k, 0, self.out_features - k)
        return self.U @ self.V + nn.functional.pad(torch.diag(self.diag), pad)

    def forward(self, x):
        y = x @ self.dense_weight().T
        return y if self.bias is None else y + self.bias

    @classmethod
    def build(cls, d_in, d_out, bias, rank=1, **_):
        return cls(d_in, d_out, rank, bias)

    @staticmethod
    def settings(d_in, d_out, bias):
        return [({"rank": r}, toy_params(d_in, d_out, r, bias)) for r in range(1, min(d_in, d_out) + 1)]

    def setting(self):
        return {"rank": self.rank}

    def factor_fans(self):
        return {"V": (self.in_features, self.rank), "U": (self.rank, self.out_features)}

    @staticmethod
    def run_tag(spec):
        return "r1"

    @staticmethod
    def label(spec):
        return "r=1"


def column_sum(W64, calib, alpha, info):
    """The toy method: scale each input column by its norm (no calibration), like a cheap whitening."""
    scale = W64.norm(dim=0).clamp_min(1e-12)
    info["toy"] = True
    return W64 / scale, None, ("diag", 1 / scale)


@pytest.fixture
def toy():
    register_family(DiagPlusLowRank)
    register_method(Method("toy-cols", column_sum))
    yield DiagPlusLowRank
    unregister_family(DiagPlusLowRank.kind)
    unregister_method("toy-cols")


SPEC = dict(arch="vit-tiny", dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64, patch_size=7, image_size=28,
            channels=1)


def train_run(tmp_path, data_dir, **model):
    from trainers.config import TrainConfig
    from trainers.train import train
    cfg = TrainConfig(model=ModelSpec(**SPEC, **model), dataset="mnist", data_dir=str(data_dir), val_size=200,
                      epochs=1, augment=False, batch_size=100, lr=3e-3, warmup_epochs=0.5, device="cpu",
                      out=str(tmp_path / "runs"))
    return train(cfg, progress=False)


def test_the_toy_registers_and_leaves(toy):
    assert "toy-dlr" in names() and "toy-cols" in METHODS
    with pytest.raises(ValueError, match="already registered"):
        register_family(type("Other", (DiagPlusLowRank,), {}))


def test_the_registry_is_clean_without_the_toy():
    assert "toy-dlr" not in FAMILIES and "toy-cols" not in METHODS


def test_info_counts_the_toy_at_its_budget(toy):
    sizes = [f"--{k.replace('_', '-')}={v}" for k, v in SPEC.items()]
    res = CliRunner().invoke(main, ["info", "--variant", "toy-dlr", "--target", "ffn", "--keep", "0.5", "--json",
                                    *sizes])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["layers"]}
    fin = rows["blocks.0.ffn.in"]                 # 32 -> 64
    got = choose(toy, 32, 64, True, 0.5)
    assert fin["kind"] == "toy-dlr" and fin["params"] == got["params"] == toy_params(32, 64, got["rank"], True)
    assert abs(fin["params"] / dense_params(32, 64, True) - 0.5) < 0.05


def test_a_toy_family_trains_reduces_exports_and_compares(toy, tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist", n_train=600, n_test=200)
    base = train_run(tmp_path, data_dir)
    run = train_run(tmp_path, data_dir, variant="toy-dlr", targets=["ffn"], keep=0.5, param="structured")
    assert run.name == "vit-tiny-mnist-toy-dlr-ffn-k0.5-structured-mlp64-seed0"
    config = json.loads((run / "config.json").read_text())
    layer = config["structure"]["layers"]["blocks.0.ffn.in"]
    assert layer["kind"] == "toy-dlr" and layer["rank"] == choose(toy, 32, 64, True, 0.5)["rank"]
    assert set(layer["lr_multipliers"]) == {"V", "U"}          # the structured rule read its factor fans
    final = json.loads((run / "final.json").read_text())
    assert final["status"] == "complete" and 0 <= final["test_acc"] <= 1

    model, _ = load_run(run)                                   # rebuilt from config.json through the registry
    assert type(find_slot(model, "blocks.0.ffn.in").module) is toy

    cut = reduce_run(run, ["*.ffn.*"], ReduceSettings(rank="params:0.5", method="toy-cols", store="factored"),
                     out=tmp_path / "runs" / "cut")
    cut_model, _ = load_run(cut)
    kinds = {r["name"]: r["kind"] for r in named_linears(cut_model)}
    assert kinds["blocks.0.ffn.in"] == kinds["blocks.0.ffn.out"] == "factored"
    assert count_params(cut_model) < count_params(model)

    out = tmp_path / "dense"
    export_run(run, "dense", out)
    dense, _ = load_run(out)
    assert all(r["kind"] in ("linear", "sn-linear") for r in named_linears(dense))   # multiplied out
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(dense.eval()(x), model.eval()(x), atol=1e-5)
    assert count_params(dense) == count_params(build_model(ModelSpec(**SPEC)))

    rows = {r["label"]: r for r in compare_runs([tmp_path / "runs"], speed=False).rows}
    assert set(rows) == {"baseline", "toy-dlr ffn keep=0.5 structured",
                         "toy-dlr ffn keep=0.5 structured -> toy-cols ffn-in+ffn-out r=10"}
    row = rows["toy-dlr ffn keep=0.5 structured"]
    assert row["family"] == "train-time" and row["baseline"] == "baseline" and row["n"] == 1
    assert row["params"] == count_params(model) and abs(row["keep"] - 0.5) < 0.05   # counted against the baseline
