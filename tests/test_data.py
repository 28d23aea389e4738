"""Data loading: file readers on small files written in the real formats, splits, loader, augmentation."""
import gzip
import hashlib
import importlib.util
import pickle
import re
import struct
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from laser_tool.data import files as data
from laser_tool.data import Augment, BatchLoader, load_dataset
from laser_tool.data.augment import augment, default_augment
from laser_tool.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    # Only data_dir is searched unless a test says otherwise: ./data or a system package on this
    # machine must not leak into the tests.
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar(folder, name, n_per_file, monkeypatch, seed=0):
    """Write CIFAR batches as the real files are (dict, bytes keys, (N, 3072) uint8) and register md5s."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train, test = data.CIFAR_FILES[name]
    key = b"fine_labels" if name == "cifar100" else b"labels"
    classes = data.DATASETS[name].num_classes
    md5s, written = {}, {}
    for f in train + test:
        x = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, n_per_file).tolist()
        (folder / f).write_bytes(pickle.dumps({b"data": x, key: y, b"batch_label": b"x"}, protocol=2))
        md5s[f], written[f] = md5(folder / f), (x, y)
    monkeypatch.setitem(data.CIFAR_MD5, name, md5s)
    return written


def idx_bytes(arr, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_idx(folder, n_train=30, n_test=7, gz=False, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = data.IDX_FILES[split]
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for base, arr, magic in ((images, x, 0x803), (labels, y, 0x801)):
            blob = idx_bytes(arr, magic)
            if gz:
                (folder / (base + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / base).write_bytes(blob)
        out[split] = (x, y)
    return out


# ---------------------------------------------------------------- CIFAR

def test_cifar10_real_format(tmp_path, monkeypatch):
    written = write_cifar(tmp_path / "cifar-10-batches-py", "cifar10", 4, monkeypatch)
    s = load_dataset("cifar10", data_dir=tmp_path, val_size=5, seed=1)
    assert s.source == str(tmp_path / "cifar-10-batches-py")
    assert (s.num_classes, s.channels, s.image_size, s.name) == (10, 3, 32, "cifar10")
    assert s.train_x.shape == (15, 3, 32, 32) and s.val_x.shape == (5, 3, 32, 32)
    assert s.test_x.shape == (4, 3, 32, 32)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    all_x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    all_y = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # Pixel layout: each row is the R plane, then G, then B.
    assert np.array_equal(s.val_x.numpy(), all_x[s.val_indices])
    assert s.val_y.tolist() == [all_y[i] for i in s.val_indices]
    rest = sorted(set(range(20)) - set(s.val_indices))
    assert np.array_equal(s.train_x.numpy(), all_x[rest])
    assert np.array_equal(s.test_x.numpy(), written["test_batch"][0].reshape(-1, 3, 32, 32))


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    written = write_cifar(tmp_path / "cifar-100-python", "cifar100", 12, monkeypatch)
    s = load_dataset("cifar-100", data_dir=tmp_path / "cifar-100-python", val_size=2)
    assert s.num_classes == 100 and s.train_x.shape == (10, 3, 32, 32)
    assert s.test_y.tolist() == written["test"][1]


class _Payload:
    """Unpickling this creates `path`: a stand-in for a pickle that runs code."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_md5_mismatch_refused_without_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, "cifar10", 2, monkeypatch)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control))).close()
    assert control.exists()  # the payload does work when unpickled
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Payload(marker)}))
    with pytest.raises(UserError, match="data_batch_3.*re-download"):
        load_dataset("cifar10", data_dir=tmp_path, val_size=1)
    assert not marker.exists()


def test_official_md5s_match_torchvision():
    # Read torchvision's source rather than import it (importing costs seconds).
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        pytest.skip("torchvision not installed")
    src = (Path(spec.origin).parent / "datasets" / "cifar.py").read_text()
    pairs = dict(re.findall(r'\["(data_batch_\d|test_batch|train|test)", "([0-9a-f]{32})"\]', src))
    assert pairs == {**data.CIFAR_MD5["cifar10"], **data.CIFAR_MD5["cifar100"]}


def fake_torchvision(monkeypatch, cls):
    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(MNIST=cls)
    monkeypatch.setitem(sys.modules, "torchvision", tv)


def test_download_failure_is_user_error(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")
    fake_torchvision(monkeypatch, offline)
    with pytest.raises(UserError, match="downloading mnist.*URLError.*Temporary failure in name") as e:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "\n" not in str(e.value)


def test_download_then_read_with_our_readers(tmp_path, monkeypatch):
    calls = []

    def fetch(root, train, download):  # writes where torchvision's MNIST would
        calls.append(root)
        write_idx(Path(root) / "MNIST" / "raw", gz=True)
    fake_torchvision(monkeypatch, fetch)
    s = load_dataset("mnist", data_dir=tmp_path, download=True, val_size=3)
    assert calls == [str(tmp_path)] and s.source == str(tmp_path / "MNIST" / "raw")
    load_dataset("mnist", data_dir=tmp_path, download=True, val_size=3)
    assert len(calls) == 1  # found on disk: no second download


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    written = write_idx(tmp_path / "MNIST" / "raw", gz=gz)
    s = load_dataset("mnist", data_dir=tmp_path, val_size=4, seed=3)
    assert (s.channels, s.image_size, s.num_classes) == (1, 28, 10)
    x, y = written["train"]
    assert np.array_equal(s.val_x[:, 0].numpy(), x[s.val_indices])
    assert s.val_y.tolist() == y[s.val_indices].tolist()
    assert np.array_equal(s.test_x[:, 0].numpy(), written["test"][0])
    assert s.train_x.shape == (26, 1, 28, 28)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_refused(tmp_path, gz):
    write_idx(tmp_path, gz=gz)
    base = "train-images-idx3-ubyte" + (".gz" if gz else "")
    blob = (tmp_path / base).read_bytes()
    (tmp_path / base).write_bytes(blob[: len(blob) - 50])
    with pytest.raises(UserError, match=base):
        load_dataset("fashion-mnist", data_dir=tmp_path, val_size=1)


def test_bad_magic_refused(tmp_path):
    write_idx(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 0x803) + path.read_bytes()[4:])
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*magic"):
        load_dataset("mnist", data_dir=tmp_path, val_size=1)


def test_missing_data_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [str(tmp_path / "root")])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": [str(tmp_path / "sys")]})
    (tmp_path / "mine" / "FashionMNIST" / "raw").mkdir(parents=True)
    write_idx(tmp_path / "root" / "fashion-mnist")  # an incomplete copy gets named too
    (tmp_path / "root" / "fashion-mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    msg = str(e.value)
    assert "\n" not in msg
    for place in ("mine", "mine/FashionMNIST/raw", "root/FashionMNIST/raw", "root/fashion-mnist", "sys"):
        assert str(tmp_path / place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    assert "lacks t10k-labels-idx1-ubyte" in msg
    with pytest.raises(UserError, match="not a folder"):
        load_dataset("mnist", data_dir=tmp_path / "typo")


def test_unknown_dataset():
    with pytest.raises(UserError, match="cifar10"):
        load_dataset("imagenet")


# ---------------------------------------------------------------- splits

def test_val_split_deterministic_disjoint_sized(tmp_path):
    write_idx(tmp_path, n_train=100)
    a = load_dataset("mnist", data_dir=tmp_path, val_size=20, seed=5)
    b = load_dataset("mnist", data_dir=tmp_path, val_size=20, seed=5)
    c = load_dataset("mnist", data_dir=tmp_path, val_size=20, seed=6)
    assert a.val_indices == b.val_indices and torch.equal(a.train_x, b.train_x)
    assert a.val_indices != c.val_indices
    assert len(a.val_indices) == 20 and len(set(a.val_indices)) == 20 and len(a.train_x) == 80
    # Disjoint: every training image is distinct random noise, so compare pixels.
    train_rows = {bytes(t.numpy()) for t in a.train_x}
    assert not any(bytes(v.numpy()) in train_rows for v in a.val_x)
    sub = load_dataset("mnist", data_dir=tmp_path, val_size=20, seed=5, train_subset=10)
    assert len(sub.train_x) == 10 and sub.val_indices == a.val_indices
    assert {bytes(t.numpy()) for t in sub.train_x} <= train_rows
    with pytest.raises(UserError, match="val_size"):
        load_dataset("mnist", data_dir=tmp_path, val_size=100)
    with pytest.raises(UserError, match="train_subset"):
        load_dataset("mnist", data_dir=tmp_path, val_size=20, train_subset=81)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason=f"{DEBIAN_FASHION} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": [str(DEBIAN_FASHION)]})
    s = load_dataset("fashion-mnist")
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (55000, 5000, 10000)
    assert s.num_classes == 10 and s.train_x.shape[1:] == (1, 28, 28)
    assert set(s.test_y.tolist()) == set(range(10)) and s.source == str(DEBIAN_FASHION)


# ---------------------------------------------------------------- loader

def toy(n=50, c=3, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g), torch.arange(n)


def batches(loader, epoch, start_step=0):
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start_step)]


AUG = Augment(crop_padding=2, rrc=True, flip_p=0.5)


def test_loader_shapes_and_len():
    x, y = toy()
    keep = BatchLoader(x, y, 16, drop_last=True)
    assert len(keep) == 3 and all(xb.shape == (16, 3, 8, 8) for xb, _ in keep.epoch(0))
    full = BatchLoader(x, y, 16, shuffle=False, drop_last=False)
    got = batches(full, 0)
    assert len(full) == 4 and len(got[-1][1]) == 2
    assert torch.equal(torch.cat([b for _, b in got]), y)  # no shuffle: everything once, in order
    assert torch.allclose(torch.cat([a for a, _ in got]), x.float() / 255)


def test_loader_deterministic_and_epochs_differ():
    x, y = toy()
    a = batches(BatchLoader(x, y, 10, augment=AUG, seed=3), 2)
    b = batches(BatchLoader(x, y, 10, augment=AUG, seed=3), 2)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = batches(BatchLoader(x, y, 10, augment=AUG, seed=3), 3)
    assert not torch.equal(torch.cat([p[1] for p in a]), torch.cat([p[1] for p in c]))
    assert sorted(torch.cat([p[1] for p in a]).tolist()) == list(range(50))


def test_start_step_skips_exactly():
    x, y = toy()
    loader = BatchLoader(x, y, 8, augment=AUG, seed=1)
    whole, tail = batches(loader, 4), batches(loader, 4, start_step=3)
    assert len(tail) == len(whole) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(whole[3:], tail))
    with pytest.raises(UserError, match="start_step"):
        loader.epoch(0, start_step=len(loader) + 1)


@pytest.mark.parametrize("drop_last", [True, False])
def test_ddp_shards_concatenate_to_single_rank(drop_last):
    x, y = toy(n=45)
    one = batches(BatchLoader(x, y, 8, drop_last=drop_last, augment=AUG, seed=7), 1)
    ranks = [batches(BatchLoader(x, y, 4, drop_last=drop_last, augment=AUG, seed=7, rank=r, world_size=2), 1)
             for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for step, (xb, yb) in enumerate(one):
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(2)]), yb)
        assert torch.allclose(torch.cat([ranks[r][step][0] for r in range(2)]), xb, atol=1e-6)


# ---------------------------------------------------------------- augmentation

def test_augment_keeps_shape_and_range():
    x = toy(n=64)[0].float() / 255
    for mode in ("zeros", "reflect"):
        out = augment(x, Augment(crop_padding=3, pad_mode=mode, rrc=True, flip_p=0.5),
                      torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)


def test_flip_one_is_torch_flip_and_off_is_identity():
    x = toy(n=16)[0].float() / 255
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, Augment(flip_p=1.0), g), torch.flip(x, dims=[3]))
    assert torch.equal(augment(x, Augment(), g), x)
    assert torch.equal(augment(x, Augment(crop_padding=0, rrc=False, flip_p=0.0), g), x)


def test_crop_is_a_shift_of_the_padded_image():
    x = toy(n=32, c=1)[0].float()
    out = augment(x, Augment(crop_padding=2), torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is some 8x8 window of its own padded input
        assert any(torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8]) for r in range(5) for c in range(5))


def test_rrc_full_scale_is_identity():
    x = toy(n=8)[0].float() / 255
    out = augment(x, Augment(rrc=True, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0)), torch.Generator())
    assert torch.allclose(out, x, atol=1e-5)


def test_bad_augment_is_user_error():
    with pytest.raises(UserError):
        Augment(flip_p=2)
    with pytest.raises(UserError):
        Augment(pad_mode="mirror")


def test_default_augments():
    assert default_augment("cifar10") == Augment(rrc=True, flip_p=0.3)
    assert default_augment("mnist") == Augment(crop_padding=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batches_match_cpu():
    # Random numbers come from CPU generators, so the device only changes float rounding.
    x, y = toy(n=64, size=32)
    cpu = batches(BatchLoader(x, y, 16, augment=AUG, seed=2), 1)
    gpu = batches(BatchLoader(x, y, 16, augment=AUG, seed=2, device="cuda"), 1)
    for (a, b), (c, d) in zip(cpu, gpu):
        assert c.is_cuda and torch.equal(b, d.cpu()) and torch.allclose(a, c.cpu(), atol=1e-4)


def test_the_vocabulary_names_every_dataset_read():
    from laser_tool import vocab
    assert tuple(data.DATASETS) == vocab.DATASETS
