"""folder:PATH datasets: real Fashion-MNIST written as PNG folders decodes to the IDX pixels, the cache
(hit, invalidation, unwritable), val/, every bad input through the CLI, --skip-bad-images, a tiny study."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from laser_tool import load_run
from laser_tool.cli import main
from laser_tool.data import files as data
from laser_tool.data import folder
from laser_tool.errors import UserError
from laser_tool.study import frontier
from trainers import presets
from conftest import one_line_error

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = {
    "model": dict(arch="vit-tiny", dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, patch_size=7,
                  dropout=0.0, emb_dropout=0.0),
    "dataset": "fashion-mnist", "epochs": 1, "batch_size": 50, "lr": 1e-3, "weight_decay": 0.0,
    "warmup_epochs": 0.0, "grad_clip": 1.0, "val_size": 50,
}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LASER_TOOL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "folders"


@pytest.fixture(scope="module")
def fashion():
    """400 real Fashion-MNIST images (t10k, the smaller file) and their labels, via the IDX reader."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    x = data.read_idx(FASHION / "t10k-images-idx3-ubyte.gz", 0x803)[:400].numpy()
    y = data.read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", 0x801)[:400].numpy()
    return x, y


def write_pngs(root, x, y, splits=(("train", 0, 300), ("test", 300, 400))):
    """ImageFolder layout: SPLIT/cLABEL/INDEX.png, so within a class the files sort in index order."""
    labels = set(y[:max(hi for *_, hi in splits)].tolist())
    for split, lo, hi in splits:
        for k in labels:  # every split has every class folder, even one a few images leave empty
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(lo, hi):
            d = root / split / f"c{y[i]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i:05d}.png")
    return root


def test_png_folders_decode_to_the_idx_pixels_and_labels(tmp_path, fashion):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y)
    name = f"folder:{root}"
    assert folder.folder_defaults(name) == (28, 1)  # the images' own size, and greyscale
    splits, classes = folder.load_folder(name, 28, 1)
    assert classes == tuple(f"c{k}" for k in range(10))
    for split, lo, hi in (("train", 0, 300), ("test", 300, 400)):
        got_x, got_y = splits[split]
        # the folder's order is class by class; within a class, index order: the IDX images in that order
        order = sorted(range(lo, hi), key=lambda i: (y[i], i))
        assert got_x.shape == (hi - lo, 1, 28, 28) and got_x.dtype == torch.uint8
        assert np.array_equal(got_y.numpy(), y[order])
        for k, i in enumerate(order):  # image by image, every pixel
            assert np.array_equal(got_x[k, 0].numpy(), x[i]), (split, i)
    s = data.load_dataset(name, val_size=30, image_size=28, channels=1)
    got = (len(s.train_x), len(s.val_x), len(s.test_x), s.num_classes, s.channels, s.image_size)
    assert got == (270, 30, 100, 10, 1, 28)
    assert s.name == name and s.val_indices == sorted(s.val_indices)


def test_a_second_load_reads_the_cache_and_a_changed_file_is_decoded_again(tmp_path, fashion, cache, monkeypatch):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 60), ("test", 60, 80)))
    name = f"folder:{root}"
    first, _ = folder.load_folder(name, 16, 3)  # resized and made RGB
    assert first["train"][0].shape == (60, 3, 16, 16) and len(list(cache.glob("*.safetensors"))) == 2
    assert not any(p.name.startswith(".") for p in cache.iterdir())  # written atomically, no debris
    assert sum(1 for _ in root.rglob("*")) == 80 + 2 * 10 + 2  # nothing added to the user's folder

    calls = []
    real = folder.decode_image
    monkeypatch.setattr(folder, "decode_image", lambda *a: calls.append(a[0]) or real(*a))
    again, _ = folder.load_folder(name, 16, 3)
    assert calls == [] and all(np.array_equal(again[s][0], first[s][0]) for s in first)

    victim = next((root / "train").rglob("*.png"))
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(victim)  # new pixels, new size and mtime
    changed, _ = folder.load_folder(name, 16, 3)
    assert len(calls) == 60  # only the train split is decoded again
    k = sorted(str(p.relative_to(root)) for p in (root / "train").rglob("*.png")).index(str(victim.relative_to(root)))
    assert (changed["train"][0][k] == 255).all() and not (first["train"][0][k] == 255).all()
    folder.load_folder(name, 16, 1)  # other settings: another cache entry
    assert len(calls) == 60 + 80


def test_a_val_folder_is_the_validation_split(tmp_path, fashion):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 100), ("val", 100, 140), ("test", 140, 160)))
    s = data.load_dataset(f"folder:{root}", seed=3, train_subset=80)
    assert (len(s.train_x), len(s.val_x), len(s.test_x), s.val_indices) == (80, 40, 20, [])
    assert sorted(s.val_y.tolist()) == sorted(y[100:140].tolist())
    with pytest.raises(UserError, match="own val/ folder"):
        data.load_dataset(f"folder:{root}", val_size=10)


def _train(tmp_path, root, *extra):
    return CliRunner().invoke(main, ["train", "--preset", "quick", "--dataset", f"folder:{root}", "--device", "cpu",
                                     "--out", str(tmp_path / "runs"), *extra])


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "quick", TINY)


def test_bad_folders_are_one_line_errors_and_write_nothing(tmp_path, fashion, cache, tiny):
    x, y = fashion
    cases = {}
    root = write_pngs(tmp_path / "notest", x, y, (("train", 0, 40),))
    cases["no test/ folder"] = root
    root = write_pngs(tmp_path / "classes", x, y, (("train", 0, 40), ("test", 40, 50)))
    (root / "test" / "c3").rename(root / "test" / "sandals")
    cases["only in train/: c3; only in test/: sandals"] = root
    root = write_pngs(tmp_path / "corrupt", x, y, (("train", 0, 40), ("test", 40, 60)))
    (root / "test" / "c1" / "broken.png").write_bytes(b"\x89PNG not really")
    cases["cannot read test/c1/broken.png"] = root
    root = write_pngs(tmp_path / "notes", x, y, (("train", 0, 40), ("test", 40, 60)))
    (root / "train" / "c0" / "notes.txt").write_text("labels checked by hand\n")
    cases["cannot read train/c0/notes.txt"] = root
    root = tmp_path / "one"
    write_pngs(root, x, np.zeros_like(y), (("train", 0, 20), ("test", 20, 30)))
    cases["train/ has 1 class folder(s) (c0); a classifier needs at least two"] = root
    cases["no such folder"] = tmp_path / "typo"
    for msg, root in cases.items():
        before = sorted(tmp_path.rglob("*"))
        res = _train(tmp_path, root, "--image-size", "28")
        one_line_error(res, msg)
        assert sorted(tmp_path.rglob("*")) == before  # nothing written (no run folder either), nothing moved
    assert not cache.exists()
    res = _train(tmp_path, tmp_path / "mixed", "--dataset", "imagenet")
    assert res.exit_code == 2 and "folder:PATH" in res.output


def test_mixed_sizes_need_image_size(tmp_path, fashion):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 20), ("test", 20, 30)))
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(next((root / "test").rglob("*.png")))
    with pytest.raises(UserError, match="2 different sizes .*pass --image-size"):
        folder.folder_defaults(f"folder:{root}")
    assert folder.folder_defaults(f"folder:{root}", 24) == (24, 1)
    assert folder.load_folder(f"folder:{root}", 24, 1)[0]["test"][0].shape == (10, 1, 24, 24)


def test_skip_bad_images_trains_without_them_and_says_how_many(tmp_path, fashion, tiny):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 150), ("test", 150, 200)))
    for rel in ("train/c0/bad.png", "train/c2/bad.jpg", "test/c5/empty.png"):
        (root / rel).write_bytes(b"")
    res = _train(tmp_path, root, "--skip-bad-images", "--val-size", "50")
    assert res.exit_code == 0, res.output
    assert "skipped 3 unreadable file(s)" in res.output
    run = Path(res.stdout.strip().splitlines()[-1])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"] == f"folder:{root}" and cfg["skip_bad_images"] is True
    assert run.name.startswith("vit-tiny-folder-fm")
    assert (cfg["model"]["image_size"], cfg["model"]["channels"], cfg["model"]["num_classes"]) == (28, 1, 10)
    # a later command re-opens the same folder from the run's config, whatever the cwd
    res = CliRunner().invoke(main, ["reduce", str(run), "--layer", "*.ffn.*", "--rank", "4",
                                    "--out", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["dataset"] == f"folder:{root}"
    assert "test_acc" in json.loads((tmp_path / "cut" / "final.json").read_text())


def test_a_tiny_frontier_study_runs_on_a_folder(tmp_path, fashion, tiny, monkeypatch):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 200), ("test", 200, 260)))
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "svd")))
    res = CliRunner().invoke(main, ["study", "--preset", "quick", "--out", str(tmp_path / "st"), "--device", "cpu",
                                    "--dataset", f"folder:{root}", "--image-size", "14"])
    assert res.exit_code == 0, res.output
    report = (tmp_path / "st" / "report.md").read_text()
    assert f"--dataset {root}" in report.replace("folder:", "") and "--image-size 14" in report
    rows = json.loads((tmp_path / "st" / "results.json").read_text())["rows"]
    assert {r["family"] for r in rows} >= {"baseline", "narrower", "post-hoc"}
    cfg = json.loads((tmp_path / "st" / "runs" / "baseline-s0" / "config.json").read_text())
    assert (cfg["dataset"], cfg["model"]["image_size"]) == (f"folder:{root}", 14)


def test_an_unwritable_cache_is_said_once_and_the_data_still_loads(tmp_path, fashion, monkeypatch):
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 30), ("test", 30, 40)))
    (tmp_path / "plain-file").write_text("not a folder\n")
    monkeypatch.setenv("LASER_TOOL_CACHE", str(tmp_path / "plain-file"))
    lines = []
    splits, _ = folder.load_folder(f"folder:{root}", 28, 1, log=lines.append)
    assert len(splits["train"][1]) == 30 and len(lines) == 1 and "not cached" in lines[0]
    with pytest.raises(UserError, match="--channels 2"):
        folder.load_folder(f"folder:{root}", 28, 2)


def test_a_two_family_frontier_study_on_a_timm_model_and_a_folder(tmp_path, fashion, tiny, monkeypatch):
    """`study --arch timm:NAME --arch-arg ... --dataset folder:PATH`: the preset's recipe, timm's model
    (sizes its own, not the preset's vit-tiny ones), the folder's images; narrower against svd cuts."""
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y, (("train", 0, 200), ("test", 200, 260)))
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "all", ("narrower", "svd")))
    timm = ["--arch", "timm:vit_tiny_patch16_224", "--arch-arg", "patch_size=7", "--arch-arg", "embed_dim=32",
            "--arch-arg", "depth=1", "--arch-arg", "num_heads=2"]
    res = CliRunner().invoke(main, ["study", "--preset", "quick", "--out", str(tmp_path / "st"), "--device", "cpu",
                                    "--dataset", f"folder:{root}", *timm])
    assert res.exit_code == 0, res.output
    runs = tmp_path / "st" / "runs"
    base = json.loads((runs / "baseline-s0" / "config.json").read_text())["model"]
    assert base["arch"] == "timm:vit_tiny_patch16_224" and base["arch_args"]["embed_dim"] == 32
    assert base["image_size"] == 28 and base["channels"] == 1
    (model, _), (narrow, _) = (load_run(runs / n) for n in ("baseline-s0", "narrower-k0.5-s0"))
    assert type(model).__module__.startswith("timm") and len(model.blocks) == 1 and model.embed_dim == 32
    assert (model.blocks[0].mlp.fc1.out_features, narrow.blocks[0].mlp.fc1.out_features) == (128, 64)
    rows = json.loads((tmp_path / "st" / "results.json").read_text())["rows"]
    assert {r["family"] for r in rows} >= {"baseline", "narrower", "post-hoc"}
    report = (tmp_path / "st" / "report.md").read_text()
    assert "--arch timm:vit_tiny_patch16_224" in report and "--arch-arg embed_dim=32" in report


def test_import_scores_weights_on_an_image_folder_at_its_own_size(tmp_path, fashion):
    """`import --dataset folder:DIR` (refused before): weights trained elsewhere are scored on the user's own
    images, decoded at the folder's own size and channels, and the run then reduces like any other."""
    from safetensors.torch import save_file
    from laser_tool.models import ModelSpec, build_model
    x, y = fashion
    root = write_pngs(tmp_path / "fm", x, y)
    sizes = dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, patch_size=7)
    torch.manual_seed(0)
    ref = build_model(ModelSpec(arch="vit-tiny", image_size=28, channels=1, num_classes=10, **sizes)).eval()
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
    res = CliRunner().invoke(main, ["import", "--arch", "vit-tiny", *flags, "--weights", str(tmp_path / "w.safetensors"),
                                    "--dataset", f"folder:{root}", "--val-size", "50", "--out", str(tmp_path / "imp")])
    assert res.exit_code == 0, res.output
    model, cfg = load_run(tmp_path / "imp")
    assert cfg["dataset"] == f"folder:{root.resolve()}" and cfg["split"]["test"] == 100 and cfg["split"]["val"] == 50
    assert (cfg["model"]["image_size"], cfg["model"]["channels"]) == (28, 1)  # the folder's own, not the default 32x3
    splits = data.load_dataset(f"folder:{root}", val_size=50, image_size=28, channels=1)
    with torch.no_grad():
        want = ref(splits.test_x.float() / 255).argmax(-1)
        assert torch.equal(model(splits.test_x.float() / 255).argmax(-1), want)
    final = json.loads((tmp_path / "imp" / "final.json").read_text())
    assert final["test_acc"] == pytest.approx((want == splits.test_y).float().mean().item())
    res = CliRunner().invoke(main, ["reduce", str(tmp_path / "imp"), "-l", "*:mlp=rho:1", "--store", "factored",
                                    "--device", "cpu", "--out", str(tmp_path / "full")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "full" / "final.json").read_text())["test_acc"] == pytest.approx(final["test_acc"])
