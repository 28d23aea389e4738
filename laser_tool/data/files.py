"""Datasets: finding and reading the files, and the train/val/test split.

Four datasets: cifar10, cifar100, fashion-mnist, mnist, plus folder:PATH, an image folder (folder.py,
which load_dataset hands it to; the splitting below is shared). We read the standard on-disk files
ourselves (CIFAR python pickles, (Fashion-)MNIST IDX) instead of going through torchvision's Dataset classes:
the whole set becomes one uint8 tensor that lives on the GPU (loader.py), and each batch is cropped and
flipped there in a few tensor ops (augment.py) rather than per image with PIL in worker processes.

Where we look, in order; the first folder holding every file wins:
  1. data_dir (--data-dir; it must exist unless downloading) itself, then the subfolders torchvision writes into it
     (DIR/cifar-10-batches-py, DIR/cifar-100-python, DIR/FashionMNIST/raw, DIR/MNIST/raw) and the
     plain names DIR/fashion-mnist, DIR/mnist.
  2. The same subfolders (not the roots themselves: MNIST and Fashion-MNIST share file names)
     under DEFAULT_ROOTS: ./data (torchvision's examples use it) and ~/.torch/datasets.
  3. System packages: /usr/share/datasets/fashion-mnist (Debian's `dataset-fashion-mnist`).
With download=True and nothing found, torchvision downloads into data_dir (or ./data), and we then
read what it wrote with the readers here, so both paths give identical tensors.

Determinism: the validation split is a pure function of the seed (the shuffle order and every
augmentation draw of (seed, epoch, step), loader.py), so a resumed run sees exactly its batches.
"""
import gzip
import hashlib
import math
import pickle
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import folder


@dataclass(frozen=True)
class _Info:
    num_classes: int
    channels: int
    image_size: int
    subdirs: tuple  # where torchvision (or a plain unpack) puts the files under a root
    tv_class: str  # torchvision.datasets class used by download=True
    hint: str  # how to get the files, for the not-found message


_CIFAR_HINT = ("pass --data-dir DIR where DIR/{} came from unpacking {} (https://www.cs.toronto.edu/~kriz/), "
               "or add --download")
_IDX_HINT = ("pass --data-dir DIR holding {train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte "
             "(raw or .gz), or add --download")
DATASETS = {
    "cifar10": _Info(10, 3, 32, ("cifar-10-batches-py",), "CIFAR10",
                     _CIFAR_HINT.format("cifar-10-batches-py", "cifar-10-python.tar.gz")),
    "cifar100": _Info(100, 3, 32, ("cifar-100-python",), "CIFAR100",
                      _CIFAR_HINT.format("cifar-100-python", "cifar-100-python.tar.gz")),
    "fashion-mnist": _Info(10, 1, 28, ("FashionMNIST/raw", "fashion-mnist"), "FashionMNIST",
                           "run `apt-get install dataset-fashion-mnist`, or " + _IDX_HINT),
    "mnist": _Info(10, 1, 28, ("MNIST/raw", "mnist"), "MNIST", _IDX_HINT),
}
_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist"}

DEFAULT_ROOTS = ["data", "~/.torch/datasets"]  # searched after data_dir; relative to the cwd
DOWNLOAD_ROOT = "data"  # where download=True writes when no data_dir is given
SYSTEM_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"]}
DEFAULT_VAL_SIZE = 5000  # held out of the training set, for every dataset

CIFAR_FILES = {  # (train files, test files)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": (["train"], ["test"]),
}
# Official md5s, as in torchvision/datasets/cifar.py. Checked before unpickling, because unpickling
# a file can run arbitrary code. Tests replace this dict to load small files they wrote.
CIFAR_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
IDX_FILES = {  # split -> (images, labels); each may also be gzipped (name + ".gz")
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # magic: uint8 data with 3 / 1 dims


@dataclass
class Splits:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_indices: list  # sorted indices into the original training set
    num_classes: int
    channels: int
    image_size: int
    name: str
    source: str  # folder the files were read from


def canonical_name(name: str) -> str:
    if folder.is_folder(name):
        return folder.canonical(name)  # folder:PATH, PATH made absolute (folder.py)
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or folder:PATH "
                        f"(PATH/train/CLASS/*.png, PATH/test/CLASS/*.png)")
    return key


# ---------------------------------------------------------------- finding the files

def _file(folder: Path, base: str):
    """The file for `base` in folder: raw if present (faster), else gzipped, else None."""
    for p in (folder / base, folder / (base + ".gz")):
        if p.is_file():
            return p
    return None


def _present(name: str, folder: Path, base: str) -> bool:
    # CIFAR batches are read as they come out of the tarball; IDX files may also be gzipped.
    return (folder / base).is_file() if name in CIFAR_FILES else _file(folder, base) is not None


def _required(name: str) -> list:
    if name in CIFAR_FILES:
        train, test = CIFAR_FILES[name]
        return train + test
    return [base for pair in IDX_FILES.values() for base in pair]


def _candidates(name: str, data_dir) -> list:
    subdirs = DATASETS[name].subdirs
    dirs = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        dirs += [d] + [d / s for s in subdirs]
    for root in DEFAULT_ROOTS:
        dirs += [Path(root).expanduser() / s for s in subdirs]
    dirs += [Path(p) for p in SYSTEM_DIRS.get(name, [])]
    return dirs


def _locate(name: str, data_dir):
    """(folder or None, places searched, notes about incomplete copies)."""
    searched, partial = [], []
    needed = _required(name)
    for d in _candidates(name, data_dir):
        missing = [b for b in needed if not _present(name, d, b)]
        if not missing:
            return d, searched, partial
        searched.append(str(d))
        if len(missing) < len(needed):
            partial.append(f"{d} lacks {', '.join(missing)}")
    return None, searched, partial


def _download(name: str, data_dir) -> None:
    root = Path(data_dir if data_dir is not None else DOWNLOAD_ROOT).expanduser()
    try:
        import torchvision  # only needed here, so a plain run never imports it
    except ImportError as e:
        raise UserError("--download needs torchvision; `pip install torchvision`, "
                        "or fetch the files by hand and pass --data-dir") from e
    cls = getattr(torchvision.datasets, DATASETS[name].tv_class)
    try:
        cls(str(root), train=True, download=True)  # one call fetches train and test for all four
    except Exception as e:  # URLError, RuntimeError, OSError, ... depending on where it broke
        why = " ".join(str(e).split())[:300]
        raise UserError(f"downloading {name} into {root} failed ({type(e).__name__}: {why}); "
                        f"check the network, or fetch the files by hand and pass --data-dir") from e


# ---------------------------------------------------------------- readers

def _read_cifar(name: str, folder: Path):
    train_files, test_files = CIFAR_FILES[name]
    expected = CIFAR_MD5[name]
    blobs = {}
    for f in train_files + test_files:  # verify every file before unpickling any of them
        path = folder / f
        blob = path.read_bytes()  # hash and unpickle the same bytes, so nothing can swap the file
        got = hashlib.md5(blob, usedforsecurity=False).hexdigest()
        if got != expected.get(f):
            raise UserError(f"{path} has md5 {got}, expected {expected.get(f)}: it is corrupt or not the "
                            f"official file, and is not unpickled; delete {folder} and re-download {name}")
        blobs[f] = blob
    key = b"fine_labels" if name == "cifar100" else b"labels"

    def load(files):
        xs, ys = [], []
        for f in files:
            d = pickle.loads(blobs.pop(f), encoding="bytes")  # "bytes": the files are Python 2 pickles
            x = np.asarray(d[b"data"], dtype=np.uint8)
            y = np.asarray(d[key], dtype=np.int64)
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
                raise UserError(f"{folder / f}: data {x.shape} with {len(y)} labels is not CIFAR's (N, 3072) "
                                f"with N; re-download {name}")
            xs.append(x.reshape(-1, 3, 32, 32))  # rows are the R, G, B planes one after another
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return load(train_files), load(test_files)


def read_idx(path, magic: int) -> torch.Tensor:
    """One IDX file (raw or .gz) of uint8 data, checked against its header; a uint8 tensor."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path} is not a readable gzip file ({e}); it is truncated or corrupt, "
                            f"re-download it") from e
    ndim = magic & 0xFF
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        got = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "nothing"
        raise UserError(f"{path} starts with magic {got}, expected 0x{magic:08x}: not the expected IDX file; "
                        f"re-download it")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise UserError(f"{path} is truncated inside its header ({len(raw)} bytes); re-download it")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    n = math.prod(dims)
    if len(raw) != head + n:
        raise UserError(f"{path} holds {len(raw) - head} data bytes but its header says {dims} = {n}: "
                        f"truncated or corrupt; re-download it")
    return torch.from_numpy(np.frombuffer(raw, np.uint8, n, head).reshape(dims).copy())


def _read_idx_set(name: str, folder: Path):
    size = DATASETS[name].image_size
    out = []
    for split, (images, labels) in IDX_FILES.items():
        x = read_idx(_file(folder, images), _IDX_IMAGES)
        y = read_idx(_file(folder, labels), _IDX_LABELS).long()
        if tuple(x.shape[1:]) != (size, size) or len(x) != len(y):
            raise UserError(f"{folder}: {split} images are {tuple(x.shape)} with {len(y)} labels, expected "
                            f"(N, {size}, {size}) with N labels; these are not {name} files")
        out.append((x.unsqueeze(1), y))  # add the channel dim: (N, 1, H, W)
    return out


# ---------------------------------------------------------------- splits

def load_dataset(name: str, data_dir=None, download: bool = False, val_size=None, seed: int = 0,
                 train_subset=None, image_size=None, channels=None, skip_bad: bool = False) -> Splits:
    """Find, read and split a dataset. Validation is held out of the training set by `seed`;
    `train_subset` keeps the first N of the remaining (shuffled) training images; test is untouched.
    image_size, channels and skip_bad apply to folder:PATH datasets only (folder.py); the built-in
    ones have their own size and channels."""
    name = canonical_name(name)
    if folder.is_folder(name):
        return _load_folder(name, data_dir, download, val_size, seed, train_subset, image_size, channels, skip_bad)
    info = DATASETS[name]
    if data_dir is not None and not download and not Path(data_dir).expanduser().is_dir():
        # Say so rather than quietly fall back to ./data: a typo should not train on other files.
        raise UserError(f"--data-dir {data_dir} is not a folder; fix the path, or add --download to fetch {name} there")
    found, searched, partial = _locate(name, data_dir)
    if found is None and download:
        _download(name, data_dir)
        found, searched, partial = _locate(name, data_dir)
    if found is None:
        incomplete = f" (incomplete: {'; '.join(partial)})" if partial else ""
        raise UserError(f"{name} not found; searched {', '.join(searched)}{incomplete}; {info.hint}")
    reader = _read_cifar if name in CIFAR_FILES else _read_idx_set
    (train_x, train_y), (test_x, test_y) = reader(name, found)
    for y, split in ((train_y, "train"), (test_y, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise UserError(f"{found}: {split} labels span {int(y.min())}..{int(y.max())}, outside "
                            f"0..{info.num_classes - 1}; re-download {name}")
    val_size = DEFAULT_VAL_SIZE if val_size is None else int(val_size)
    train, val, val_idx = _hold_out(name, train_x, train_y, val_size, seed, train_subset)
    return Splits(*train, *val, test_x, test_y, val_idx, info.num_classes, info.channels, info.image_size, name,
                  str(found))


def _load_folder(name, data_dir, download, val_size, seed, train_subset, image_size, channels, skip_bad):
    if data_dir is not None or download:
        raise UserError(f"--dataset {name} reads that folder; drop --data-dir and --download (they are for the "
                        f"built-in datasets)")
    image_size, channels = folder.folder_defaults(name, image_size, channels)
    splits, classes = folder.load_folder(name, image_size, channels, skip_bad)
    train_x, train_y = splits["train"]
    if "val" in splits:  # PATH/val/ is the validation split; train/ is used whole
        if val_size is not None:
            raise UserError(f"--val-size {val_size}: {name} has its own val/ folder, which is the validation "
                            f"split; drop --val-size")
        (train, _, _), val, val_idx = _hold_out(name, train_x, train_y, 0, seed, train_subset), splits["val"], []
    else:  # a tenth of train/, at most the built-in datasets' 5,000
        val_size = min(DEFAULT_VAL_SIZE, max(1, len(train_x) // 10)) if val_size is None else int(val_size)
        train, val, val_idx = _hold_out(name, train_x, train_y, val_size, seed, train_subset)
    return Splits(*train, *val, *splits["test"], val_idx, len(classes), channels, image_size, name,
                  name[len(folder.PREFIX):])


def _hold_out(name, train_x, train_y, val_size, seed, train_subset):
    """((train x, y), (val x, y), val indices): val_size images held out by the seed, then the subset."""
    n = len(train_x)
    if not 0 <= val_size < n:
        raise UserError(f"val_size {val_size} must be in 0..{n - 1} (the {name} training set has {n} images); "
                        f"pick a smaller --val-size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, keep = perm[:val_size].sort().values, perm[val_size:]
    if train_subset is not None:
        if not 0 < train_subset <= len(keep):
            raise UserError(f"train_subset {train_subset} must be in 1..{len(keep)} (training images left after "
                            f"the validation split); pick a smaller --train-subset")
        keep = keep[:train_subset]
    keep = keep.sort().values  # original order; the loader shuffles anyway
    return (train_x[keep], train_y[keep]), (train_x[val_idx], train_y[val_idx]), val_idx.tolist()


def fit_model(spec, dataset):
    """The model's input and output sizes from the dataset (a name or loaded Splits): the one place
    a model is fitted to its data, by the trainer and by every plan that must predict what it builds."""
    if not isinstance(dataset, Splits) and folder.is_folder(dataset):
        # a folder's images are resized to the model's size and channels (folder.py): only the classes are its own
        return replace(spec, num_classes=folder.num_classes(dataset))
    info = dataset if isinstance(dataset, Splits) else DATASETS[canonical_name(dataset)]
    return replace(spec, image_size=info.image_size, channels=info.channels, num_classes=info.num_classes)
