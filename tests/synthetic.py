"""A tiny learnable dataset written as real (gzipped) MNIST IDX files, for training tests.

Class c is a bright 5x5 square at one of ten cells of a 3x4 grid (8 pixels apart, so the training
augmentation's 2-pixel shifts never confuse two classes) plus noise: a small ViT learns it in a
few dozen steps, so "the loss falls" is a real test, not a coin flip.
"""
import gzip
import struct

import numpy as np


def _write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_images(n, seed, size=28):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, size, size))
    for i, c in enumerate(y):
        r, col = 2 + (c // 4) * 9, 2 + (c % 4) * 7
        x[i, r:r + 5, col:col + 5] += 180
    return x.clip(0, 255), y


def write_tiny_mnist(folder, n_train=1200, n_test=300, seed=0):
    """MNIST-format files in `folder`; returns the folder (use as --data-dir with dataset mnist)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = make_images(n, s)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", x, 0x803)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y, 0x801)
    return folder
