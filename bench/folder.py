"""Folder datasets: 64x64 PNGs decoded into the cache (images/s); an epoch from it vs the IDX path.

Decoding a folder of 64x64 PNGs into the cache, and an epoch from the cache against the same images
through the in-memory IDX path.

    .venv/bin/python bench/folder.py [--n 10000] [--batch-size 256] [--out bench/results/folder.json]
    .venv/bin/python bench/folder.py --tiny --out FILE   # smoke test, seconds

Writes N 64x64 RGB PNGs (10 classes; smooth random colour fields plus noise, so they compress like
photographs rather than like flat colour) into a temporary folder, PATH/train/CLASS and PATH/test/CLASS,
and the same train images as an IDX file. Then:
  decode   load_folder with an empty cache: scan, stat, decode (threads), one safetensors file per
           split; images/s over all N (goal: >= 1,000 on the 2-core dev machine).
  hit      the same load again, from the cache.
  epoch    one BatchLoader epoch (the Fashion-MNIST augmentation: shift + flip) over the train split,
           from the folder path (load_dataset, cache hit) and from the IDX path (read_idx, the same
           pixels); each is load + epoch, the paths taking turns, best of --repeats; ratio = folder / idx
           (goal: <= 1.05). On a shared machine all of it reads slow: load_average_1m_before_decode says how busy.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from PIL import Image  # noqa: E402

from laser_tool.data import BatchLoader, default_augment, load_dataset  # noqa: E402
from laser_tool.data import folder  # noqa: E402
from laser_tool.device import cpu_name  # noqa: E402
from laser_tool.data.files import read_idx  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "folder.json"
TINY = dict(n=200, batch_size=50, repeats=1)
SIZE, CLASSES = 64, 10


def write_images(root: Path, n: int, seed: int = 0):
    """n PNGs, 80% train / 20% test; returns the train images (N, 3, 64, 64) in the folder's order."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    coarse = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    n_train = n * 4 // 5
    train = {}
    for i in range(n):
        field = np.kron(coarse[i], np.ones((8, 8, 1), np.float32))  # 8x8 blocks of colour
        img = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        split = "train" if i < n_train else "test"
        d = root / split / f"class{labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:06d}.png")
        if split == "train":
            train[(labels[i], i)] = img.transpose(2, 0, 1)
    for split in ("train", "test"):
        for k in range(CLASSES):
            (root / split / f"class{k}").mkdir(parents=True, exist_ok=True)
    order = sorted(train)  # the folder's order: class by class, then file name
    return np.stack([train[k] for k in order]), np.array([k[0] for k in order])


def write_idx(path: Path, x: np.ndarray, magic: int):
    path.write_bytes(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in x.shape) + x.tobytes())


def epoch_seconds(x, y, batch_size):
    loader = BatchLoader(x, y, batch_size, shuffle=True, drop_last=True, augment=default_augment("fashion-mnist"))
    t = time.perf_counter()
    n = 0
    for xb, _ in loader.epoch(0):
        n += len(xb)
    return time.perf_counter() - t, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="PNGs written (80%% train, 20%% test)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="epochs per path, best kept")
    ap.add_argument("--out", help=f"results file (default {RESULTS})")
    args = tiny.parse(ap, argv, TINY, str(RESULTS))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["LASER_TOOL_CACHE"] = str(tmp / "cache")  # an empty cache of our own
        t = time.perf_counter()
        train_x, train_y = write_images(tmp / "pngs", args.n)
        write_seconds = time.perf_counter() - t
        write_idx(tmp / "x.idx", train_x.reshape(len(train_x), -1), 0x00000802)  # 2 dims: rows of pixels
        write_idx(tmp / "y.idx", train_y.astype(np.uint8), 0x00000801)
        name = f"folder:{tmp / 'pngs'}"

        load_avg = os.getloadavg()[0]  # other work on a shared machine slows the decode
        t = time.perf_counter()
        splits, _ = folder.load_folder(name, SIZE, 3, log=lambda s: None)
        decode = time.perf_counter() - t
        assert np.array_equal(splits["train"][0].numpy(), train_x), "the folder does not decode to its pixels"
        t = time.perf_counter()
        folder.load_folder(name, SIZE, 3)
        hit = time.perf_counter() - t

        def from_folder():  # the trainer's path: load_dataset (cache hit), every train image kept
            s = load_dataset(name, val_size=0, image_size=SIZE, channels=3)
            return s.train_x, s.train_y

        def from_idx():
            x = read_idx(tmp / "x.idx", 0x00000802).view(-1, 3, SIZE, SIZE)
            return x, read_idx(tmp / "y.idx", 0x00000801).long()

        timings = {}
        for _ in range(args.repeats):  # the two paths take turns, so a busy spell on a shared machine hits both
            for label, load in (("folder", from_folder), ("idx", from_idx)):
                t = time.perf_counter()
                x, y = load()
                loaded = time.perf_counter() - t
                ep, seen = epoch_seconds(x, y, args.batch_size)
                best = timings.get(label)
                if best is None or loaded + ep < best["load_s"] + best["epoch_s"]:
                    timings[label] = dict(load_s=round(loaded, 4), epoch_s=round(ep, 4), images=seen)
    total = {k: v["load_s"] + v["epoch_s"] for k, v in timings.items()}
    doc = {
        "about": __doc__.split("\n")[0], "tiny": args.tiny, "machine": cpu_name(),
        "cpus": os.cpu_count(), "load_average_1m_before_decode": round(load_avg, 2),
        "torch": torch.__version__, "images": args.n, "size": f"{SIZE}x{SIZE}x3",
        "write_png_s": round(write_seconds, 2),
        "decode_into_cache": {"seconds": round(decode, 3), "images_per_s": round(args.n / decode, 1),
                              "goal_images_per_s": 1000},
        "cache_hit_s": round(hit, 4),
        "epoch": {**timings, "ratio_folder_over_idx": round(total["folder"] / total["idx"], 4),
                  "ratio_epoch_only": round(timings["folder"]["epoch_s"] / timings["idx"]["epoch_s"], 4),
                  "goal_ratio": 1.05, "batch_size": args.batch_size},
    }
    out = Path(args.out) if args.out else RESULTS
    atomic_write_json(out, doc)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
