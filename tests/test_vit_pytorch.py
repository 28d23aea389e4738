"""lucidrains' vit-pytorch `ViT`, the most common small-ViT class, as a user brings it: built by their own
factory (`--arch python:MODULE:FUNCTION`), trained in their own plain loop, imported with its own state
dict (no key remapping: its layers are found in place, to_out = Sequential(Linear, Dropout) and
FeedForward.net = Sequential(LayerNorm, Linear, GELU, Dropout, Linear, Dropout)), cut, and exported dense
into vit-pytorch's own class with strict=True."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from laser_tool import load_run
from laser_tool.data import load_dataset
from conftest import cli, user_factory
from synthetic import write_tiny_mnist

vit_pytorch = pytest.importorskip("vit_pytorch")

SIZES = dict(patch_size=7, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)
FACTORY = f'''
from vit_pytorch import ViT

def vit(num_classes, image_size, channels):
    return ViT(image_size=image_size, num_classes=num_classes, channels=channels, **{SIZES!r})
'''


@pytest.fixture
def arch(tmp_path, monkeypatch):
    return user_factory(tmp_path, monkeypatch, "their_vit", FACTORY) + ":vit"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"), n_train=400, n_test=100)


def their_model(data_dir):
    """vit-pytorch's ViT trained a few steps in a plain loop, as its users train it."""
    torch.manual_seed(0)
    model = vit_pytorch.ViT(image_size=28, num_classes=10, channels=1, **SIZES)
    data = load_dataset("mnist", data_dir, val_size=100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for i in range(0, 200, 50):
        x, y = data.train_x[i:i + 50].float().div(255), data.train_y[i:i + 50]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data.test_x[:32].float().div(255)


def test_vit_pytorch_layers_are_found_in_place(arch):
    res = cli("info", "--arch", arch, "--image-size", 28, "--channels", 1, "--json")
    assert res.exit_code == 0, res.output
    names = [r["name"] for r in json.loads(res.output)["layers"]]
    assert names == ["embed"] + [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.out", "ffn.in",
                                                                              "ffn.out")] + ["head"]


def test_their_weights_import_as_they_are_and_the_dense_export_loads_into_their_class(arch, data_dir, tmp_path):
    ref, x = their_model(data_dir)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "theirs.safetensors"))
    res = cli("import", "--arch", arch, "--weights", tmp_path / "theirs.safetensors", "--dataset", "mnist",
              "--data-dir", data_dir, "--val-size", 100, "--out", tmp_path / "imported")
    assert res.exit_code == 0, res.output
    model, _ = load_run(tmp_path / "imported")
    assert set(model.state_dict()) == set(ref.state_dict())  # their own keys, nothing remapped
    with torch.no_grad():
        want = ref(x)
        assert torch.equal(model(x), want)
    res = cli("reduce", tmp_path / "imported", "-l", "*:all=params:0.5", "--store", "factored",
              "--out", tmp_path / "cut", "--device", "cpu")
    assert res.exit_code == 0, res.output
    cut, _ = load_run(tmp_path / "cut")
    assert type(cut.transformer.layers[0][0].to_out[0]).__name__ == "FactoredLinear"
    assert type(cut.transformer.layers[1][1].net[4]).__name__ == "FactoredLinear"
    res = cli("export", tmp_path / "cut", "--format", "dense", "--out", tmp_path / "dense.safetensors")
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file
    theirs = vit_pytorch.ViT(image_size=28, num_classes=10, channels=1, **SIZES).eval()
    theirs.load_state_dict(load_file(str(tmp_path / "dense.safetensors")), strict=True)
    with torch.no_grad():
        assert torch.allclose(theirs(x), cut(x), atol=1e-5)
        assert not torch.allclose(theirs(x), want, atol=1e-3)  # the cut changed the function it exports
