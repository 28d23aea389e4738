"""Models from outside: timm's (`--arch timm:NAME`, built offline), a user's factory
(`--arch python:MODULE:FUNCTION`), and trained weights brought in (`laser-tool import`).

Checked against timm's own code: its parameter count, its layers as the tool names them, its logits
after a round trip through `import`, and a full-rank reduction of the imported run."""
import json

import pytest
import torch
from safetensors.torch import save_file

from laser_tool import load_run
from laser_tool.data import load_dataset
from laser_tool.models import ModelSpec, build_model
from laser_tool.fileio import safetensors_header
from laser_tool.models.surgery import named_linears, slots
from laser_tool.runs.checkpoint import read_header
from laser_tool.runs.state import read_state
from conftest import cli, one_line_error, user_factory
from synthetic import write_tiny_mnist

timm = pytest.importorskip("timm")

# A ViT of timm's registry, shrunk to 28x28 one-channel images: 16 patches, width 32, two blocks.
TIMM_ARGS = dict(patch_size=7, embed_dim=32, depth=2, num_heads=2)
ARCH = "timm:vit_tiny_patch16_224"
CLI_ARCH = ["--arch", ARCH] + [x for k, v in TIMM_ARGS.items() for x in ("--arch-arg", f"{k}={v}")]


def timm_vit(num_classes=10):
    """The same model built by timm's own code."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, in_chans=1,
                             num_classes=num_classes, **TIMM_ARGS)


def spec(**kw):
    return ModelSpec(arch=ARCH, image_size=28, channels=1, num_classes=10, arch_args=dict(TIMM_ARGS), **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"), n_train=400, n_test=100)


def images(data_dir, n=32):
    return load_dataset("mnist", data_dir, val_size=100).test_x[:n].float().div(255)


# ------------------------------------------------------------------ building and naming


def test_info_counts_timms_parameters_and_names_its_layers():
    res = cli("info", *CLI_ARCH, "--image-size", 28, "--channels", 1, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["params"] == sum(p.numel() for p in timm_vit().parameters())  # timm's own count
    names = [r["name"] for r in out["layers"]]
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.out", "ffn.in", "ffn.out")] \
        + ["head"]
    # each name is the timm module of that role, found by type
    model = build_model(spec())
    by_name = {s.name: s.module for s in slots(model)}
    assert by_name["blocks.1.attn.qkv"] is model.blocks[1].attn.qkv and by_name["head"] is model.head
    assert by_name["blocks.0.ffn.out"] is model.blocks[0].mlp.fc2
    # the sizes the spec reads off timm's model
    s = spec().resolved()
    assert (s.dim, s.depth, s.heads, s.dim_head, s.mlp_dim, s.patch_size) == (32, 2, 2, 16, 128, 7)


def test_lowrank_variant_at_full_rank_is_the_dense_model():
    """Spectral init at full rank factors each dense FFN layer exactly: same logits as timm's dense model."""
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(1)
    dense = build_model(spec()).eval()
    torch.manual_seed(1)
    low = build_model(spec(variant="lowrank", targets=["ffn"], scale=1.25, init="spectral")).eval()
    rows = {r["name"]: r for r in named_linears(low)}
    assert rows["blocks.0.ffn.in"]["kind"] == "lowrank" and low.blocks[0].mlp.fc1.rank == 32
    assert rows["blocks.0.attn.qkv"]["kind"] == "linear"
    with torch.no_grad():
        assert torch.allclose(low(x), dense(x), atol=1e-5)


def test_narrower_widths_reach_timms_arguments():
    """mlp_dim and dim_head (a narrower row) become timm's mlp_ratio and attention head width."""
    model = build_model(spec(mlp_dim=64, dim_head=8))
    assert model.blocks[0].mlp.fc1.out_features == 64 and model.blocks[0].attn.qkv.out_features == 3 * 2 * 8
    assert model.blocks[1].attn.proj.in_features == 16


# ------------------------------------------------------------------ the pipeline on a timm model


def test_timm_vit_trains_lowrank_is_reduced_searched_and_compared(data_dir, tmp_path, one_thread):
    common = ["--dataset", "mnist", "--data-dir", data_dir, "--val-size", 100, "--epochs", 1, "--batch-size", 50,
              "--no-augment", "--device", "cpu", "--out", tmp_path / "runs"]
    res = cli("train", *CLI_ARCH, *common, "--name", "base")
    assert res.exit_code == 0, res.output
    res = cli("train", *CLI_ARCH, "--variant", "lowrank", "--target", "ffn", "--keep", 0.5, *common, "--name", "low")
    assert res.exit_code == 0, res.output
    low, cfg = load_run(tmp_path / "runs" / "low")
    assert type(low).__module__.startswith("timm") and type(low.blocks[0].mlp.fc1).__name__ == "LowRankLinear"
    assert cfg["structure"]["fraction"] == pytest.approx(0.5, abs=0.05)
    base = tmp_path / "runs" / "base"
    res = cli("reduce", base, "-l", "*:mlp=params:0.5", "--store", "factored", "--out", tmp_path / "runs" / "cut",
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    cut, _ = load_run(tmp_path / "runs" / "cut")
    assert type(cut.blocks[1].mlp.fc2).__name__ == "FactoredLinear"
    res = cli("search", base, "--budget", "params:0.5", "--device", "cpu", "--ranks", "params:0.25,params:0.5",
                 "--report", tmp_path / "search.json")
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "search.json").read_text())["chosen"]["ranks"]) >= {"blocks.0.ffn.in", "head"}
    res = cli("compare", tmp_path / "runs", "--no-speed", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    labels = {r["label"] for r in rows}
    assert "baseline" in labels and any(l.startswith("lowrank ffn") for l in labels) and len(rows) == 3


def test_progressive_cut_of_a_timm_vit(data_dir, tmp_path, one_thread):
    res = cli("train", *CLI_ARCH, "--dataset", "mnist", "--data-dir", data_dir, "--val-size", 100, "--epochs", 1,
                 "--batch-size", 50, "--no-augment", "--device", "cpu", "--out", tmp_path, "--name", "prog",
                 "--reduce-at", 0.5, "--reduce-to", "params:0.5", "--reduce-layer", "*:mlp")
    assert res.exit_code == 0, res.output
    model, cfg = load_run(tmp_path / "prog")
    assert type(model.blocks[1].mlp.fc1).__name__ == "FactoredLinear" and cfg["model"]["layers"]
    assert type(model.blocks[1].attn.qkv).__name__ == "Linear"


# ------------------------------------------------------------------ import


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_import_reproduces_timms_logits_and_a_full_rank_reduce_does_too(data_dir, tmp_path, fmt):
    torch.manual_seed(3)
    ref = timm_vit().eval()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    save_file(ref.state_dict(), str(path)) if fmt == "safetensors" else torch.save(ref.state_dict(), path)
    res = cli("import", *CLI_ARCH, "--weights", path, "--dataset", "mnist", "--data-dir", data_dir,
                 "--val-size", 100, "--out", tmp_path / "imported")
    assert res.exit_code == 0, res.output
    final = json.loads((tmp_path / "imported" / "final.json").read_text())  # what it measured, said at once
    assert res.output.startswith(f"{tmp_path / 'imported'}: test acc {100 * final['test_acc']:.2f}%, val acc "
                                 f"{100 * final['val_acc']:.2f}%") and "floats in [0, 1]" in res.output
    model, cfg = load_run(tmp_path / "imported")
    x = images(data_dir)
    with torch.no_grad():
        want = ref(x)
        assert torch.equal(model(x), want)
    assert cfg["import"]["format"] == fmt
    res = cli("spectrum", tmp_path / "imported", "--format", "json", "--layers", "blocks.1.*")
    assert res.exit_code == 0, res.output
    assert [r["layer"] for r in json.loads(res.output)] == [f"blocks.1.{n}" for n in ("attn.qkv", "attn.out",
                                                                                     "ffn.in", "ffn.out")]
    final = json.loads((tmp_path / "imported" / "final.json").read_text())
    assert final["test_acc"] == pytest.approx((want.argmax(-1) == load_dataset("mnist", data_dir, val_size=100)
                                               .test_y[:32]).float().mean().item(), abs=1) and final["val_acc"] >= 0
    # every layer the tool can cut, at full rank: the same function
    res = cli("reduce", tmp_path / "imported", "-l", "*:all=rho:1", "--store", "factored",
                 "--out", tmp_path / "full", "--device", "cpu")
    assert res.exit_code == 0, res.output
    full, _ = load_run(tmp_path / "full")
    assert type(full.blocks[0].attn.qkv).__name__ == "FactoredLinear"
    with torch.no_grad():
        assert torch.allclose(full(x), want, atol=1e-4)
    if fmt == "torch":  # the study's other post-hoc family calibrates on the imported run's training split
        res = cli("reduce", tmp_path / "imported", "-l", "*:all=params:0.5", "--method", "whiten",
                     "--store", "factored", "--out", tmp_path / "whiten", "--device", "cpu", "--calib-batches", 1)
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "whiten" / "reduce.json").read_text())["calib"]["images"] > 0


def test_import_with_a_new_head_then_heal(data_dir, tmp_path):
    ref = timm_vit(num_classes=5)
    save_file(ref.state_dict(), str(tmp_path / "w5.safetensors"))
    args = [*CLI_ARCH, "--weights", tmp_path / "w5.safetensors", "--dataset", "mnist", "--data-dir", data_dir,
            "--val-size", 100]
    res = cli("import", *args, "--out", tmp_path / "a")
    assert res.exit_code == 2 and "head.weight" in res.output and "--new-head" in res.output
    assert not (tmp_path / "a").exists()
    res = cli("import", *args, "--new-head", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    model, cfg = load_run(tmp_path / "b")
    assert model.head.out_features == 10 and cfg["import"]["fresh_keys"] == ["head.bias", "head.weight"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    res = cli("train", "--init-from", tmp_path / "b", "--epochs", 1, "--batch-size", 50, "--no-augment",
                 "--device", "cpu", "--data-dir", data_dir, "--out", tmp_path, "--name", "healed")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "healed" / "config.json").read_text())["val_size"] == 100
    res = cli("compare", tmp_path / "b", tmp_path / "healed", "--no-speed", "--format", "json")
    assert res.exit_code == 0, res.output
    assert sorted(r["label"] for r in json.loads(res.output)["rows"]) == [
        "imported w5.safetensors", "imported w5.safetensors + 1 more ep (control)"]


# ------------------------------------------------------------------ a user's factory


FACTORY = '''
import torch.nn as nn

class Attn(nn.Module):
    def __init__(s, d):
        super().__init__(); s.qkv = nn.Linear(d, 3 * d); s.proj = nn.Linear(d, d)
    def forward(s, x):
        q, k, v = s.qkv(x).chunk(3, -1)
        return s.proj(((q @ k.transpose(1, 2)) / q.shape[-1] ** 0.5).softmax(-1) @ v)

class Mlp(nn.Module):
    def __init__(s, d, h):
        super().__init__(); s.fc1 = nn.Linear(d, h); s.fc2 = nn.Linear(h, d)
    def forward(s, x):
        return s.fc2(s.fc1(x).relu())

class Net(nn.Module):
    def __init__(s, num_classes, image_size, channels, dim=16, depth=2):
        super().__init__()
        s.p = 7
        s.embed = nn.Linear(channels * s.p * s.p, dim)
        s.attns = nn.ModuleList(Attn(dim) for _ in range(depth))
        s.mlps = nn.ModuleList(Mlp(dim, 2 * dim) for _ in range(depth))
        s.head = nn.Linear(dim, num_classes)
    def forward(s, x):
        b, c, h, w = x.shape
        x = x.unfold(2, s.p, s.p).unfold(3, s.p, s.p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * s.p * s.p)
        x = s.embed(x)
        for a, m in zip(s.attns, s.mlps):
            x = x + a(x); x = x + m(x)
        return s.head(x.mean(1))

def small(num_classes, image_size, channels, dim=16):
    return Net(num_classes, image_size, channels, dim=dim)

def tied(num_classes, image_size, channels):
    net = Net(num_classes, image_size, channels)
    net.mlps[1].fc1 = net.mlps[0].fc1   # one layer used twice: its weight and bias are tied
    return net

def flat(num_classes, image_size, channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size ** 2, 20), nn.Linear(20, num_classes))

def not_a_module(num_classes, image_size, channels):
    return "a model"
'''


@pytest.fixture(autouse=True)
def own_settings(tmp_path, monkeypatch):
    """A factory named with --arch is remembered in the user's settings (models/trust.py): a temp dir here."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def factory(tmp_path, monkeypatch):
    return user_factory(tmp_path, monkeypatch, "my_models_t", FACTORY)


def test_a_users_factory_is_found_by_the_same_rules(factory, data_dir, tmp_path):
    res = cli("info", "--arch", f"{factory}:small", "--arch-arg", "dim=24", "--image-size", 28, "--channels", 1,
                 "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [r["name"] for r in out["layers"]][:3] == ["embed", "blocks.0.attn.qkv", "blocks.0.attn.out"]
    assert out["layers"][-1]["name"] == "head" and out["layers"][1]["in_features"] == 24
    assert out["params"] == sum(r["params"] for r in out["layers"])  # all its parameters are Linear layers
    res = cli("train", "--arch", f"{factory}:small", "--variant", "lowrank", "--target", "attn", "--dataset",
                 "mnist", "--data-dir", data_dir, "--val-size", 100, "--epochs", 1, "--batch-size", 50,
                 "--no-augment", "--device", "cpu", "--out", tmp_path, "--name", "mine")
    assert res.exit_code == 0, res.output
    model, _ = load_run(tmp_path / "mine")
    assert type(model.attns[1].qkv).__name__ == "LowRankLinear"


def test_tied_weights_are_written_once_and_tied_again_on_load(factory, data_dir, tmp_path):
    res = cli("train", "--arch", f"{factory}:tied", "--dataset", "mnist", "--data-dir", data_dir, "--val-size", 100,
              "--epochs", 1, "--batch-size", 50, "--no-augment", "--device", "cpu", "--out", tmp_path, "--name", "t")
    assert res.exit_code == 0, res.output
    header, _ = read_header(tmp_path / "t" / "model.safetensors")
    raw = safetensors_header(tmp_path / "t" / "model.safetensors")
    assert "mlps.1.fc1.weight" in header and "mlps.1.fc1.weight" not in raw  # written once, named twice
    model, _ = load_run(tmp_path / "t")
    assert model.mlps[1].fc1.weight is model.mlps[0].fc1.weight  # the model ties them; both names load
    weights = tmp_path / "w.safetensors"
    save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, str(weights))  # theirs: two copies
    res = cli("import", "--arch", f"{factory}:tied", "--weights", weights, "--dataset", "mnist",
              "--data-dir", data_dir, "--val-size", 100, "--out", tmp_path / "imported")
    assert res.exit_code == 0, res.output
    res = cli("export", tmp_path / "imported", "--format", "dense", "--out", tmp_path / "d.safetensors")
    assert res.exit_code == 0, res.output
    dense, _ = load_run(tmp_path / "d.safetensors")
    x = images(data_dir)
    with torch.no_grad():
        assert torch.equal(dense(x), model(x))
    point = read_state(tmp_path / "t" / "state.safetensors")  # the resume point holds the tie once too
    tied = [k for k in point.tensors if k.endswith("mlps.1.fc1.weight")]
    assert tied and all(torch.equal(point.tensors[k], point.tensors[k.replace("mlps.1", "mlps.0")]) for k in tied)


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written


def test_bad_archs_are_one_line(factory):
    one_line_error(cli("info", "--arch", "timm:vit_tiny_patch16_22"), "no model named", "timm:vit_tiny_patch16_224")
    one_line_error(cli("info", "--arch", "python:no_such_module_xyz:fn"), "cannot import no_such_module_xyz")
    one_line_error(cli("info", "--arch", f"{factory}:missing"), "no function 'missing'")
    one_line_error(cli("info", "--arch", f"{factory}:not_a_module"), "returned str, not a torch nn.Module")
    one_line_error(cli("info", "--arch", f"{factory}:flat"), "found 0 attention", "1, 2")
    one_line_error(cli("info", *CLI_ARCH, "--dim", 64), "--dim", "--arch-arg")
    one_line_error(cli("info", *CLI_ARCH, "--arch-arg", "num_classes=3"), "comes from the dataset's classes")
    one_line_error(cli("info", *CLI_ARCH, "--arch-arg", "no_such_arg=1"), "cannot build", "no_such_arg")
    one_line_error(cli("info", "--arch", "vit-tiny", "--arch-arg", "x=1"), "--arch-arg applies to")


def test_bad_weights_are_one_line_and_write_nothing(data_dir, tmp_path):
    sd = timm_vit().state_dict()
    wrong = {k.replace("blocks.", "layers."): v for k, v in sd.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    torch.save(timm_vit(), tmp_path / "pickled.pth")  # a whole pickled module: weights_only cannot read it
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    base = [*CLI_ARCH, "--dataset", "mnist", "--data-dir", data_dir, "--val-size", 100, "--out", tmp_path / "out"]
    res = cli("import", *base, "--weights", tmp_path / "wrong.safetensors")
    one_line_error(res, "missing: blocks.0.norm1.weight, blocks.0.norm1.bias, blocks.0.attn.qkv.weight and",
                   "and 21 more; 24 unexpected: layers.0.attn.proj.bias")
    wide = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, in_chans=1, num_classes=10,
                             **{**TIMM_ARGS, "embed_dim": 48})
    save_file(wide.state_dict(), str(tmp_path / "wide.safetensors"))
    line = one_line_error(cli("import", *base, "--weights", tmp_path / "wide.safetensors"),
                          "wrong shape: cls_token (1, 1, 48) (model (1, 1, 32)), pos_embed (1, 17, 48) (model (1, 17, 32))")
    assert "--new-head" not in line  # every tensor differs, so a fresh classifier would not help
    one_line_error(cli("import", *base, "--weights", tmp_path / "pickled.pth"), "weights_only=True", "state_dict")
    one_line_error(cli("import", *base, "--weights", tmp_path / "junk.bin"), "neither a safetensors nor a torch")
    one_line_error(cli("import", *base, "--weights", tmp_path / "none.pt"), "does not exist")
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


# ------------------------------------------------------------------ a frontier study on a timm model


def test_two_family_frontier_study_on_a_timm_model(data_dir, tmp_path, monkeypatch, one_thread):
    """narrower (timm's mlp ratio and head width at the budget) against svd cuts of the timm baseline."""
    from laser_tool import study
    from laser_tool.study import frontier
    from trainers import presets
    preset = {"model": dict(arch=ARCH, arch_args=dict(TIMM_ARGS)), "dataset": "mnist", "epochs": 1,
              "batch_size": 50, "lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0.0, "val_size": 100,
              "augment": False}
    monkeypatch.setitem(presets.PRESETS, "quick", preset)
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "all", ("narrower", "svd")))
    report = study.run_study(study.StudyRequest("quick", out=tmp_path / "st", device="cpu", data_dir=data_dir),
                             log=lambda s: None)
    runs = tmp_path / "st" / "runs"
    narrow, _ = load_run(runs / "narrower-k0.5-s0")
    assert type(narrow).__module__.startswith("timm")
    assert (narrow.blocks[0].mlp.fc1.out_features, narrow.blocks[0].attn.head_dim) == (64, 8)  # 128 and 16 halved
    rows = {r["family"]: r for r in json.loads((tmp_path / "st" / "results.json").read_text())["rows"]}
    assert {"baseline", "narrower", "post-hoc"} <= set(rows)
    assert rows["narrower"]["keep"] == pytest.approx(0.5, abs=0.05) and rows["post-hoc"]["keep"] <= 0.5
    assert "## The answer" in report.read_text()
