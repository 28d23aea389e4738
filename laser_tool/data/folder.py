"""Image-folder datasets: `--dataset folder:PATH` in torchvision's ImageFolder layout.

    PATH/train/CLASS/*.png|jpg|...   required
    PATH/test/CLASS/...              required, the same class folders as train/
    PATH/val/CLASS/...               optional: the validation split; without it, validation is held out
                                     of train/ by the seed, as for the built-in datasets

Classes are the train/ subfolder names in sorted order (label 0 is the first), as in ImageFolder. Every
non-hidden file in a class folder is read as an image, so a stray or broken file is named rather than
silently left out; `--skip-bad-images` leaves such files out and says how many.

Each image is decoded once (Pillow), converted to the model's channels (1: Pillow's "L", 3: "RGB";
alpha dropped), resized so its shorter side is the model's image size (bilinear, antialiased when
shrinking) and centre-cropped to a square. The split becomes one uint8 (N, C, S, S) tensor, cached
(folder_cache.py) so a later run, or the other runs of a study, start from it. After that the pipeline
is the built-in datasets' own: GPU-resident batches, augmentation, seeds.

The image size and channels are the model's (`--image-size`, `--channels`); when not given, the
folder's own: the shorter side if every image has the same size (else an error asking for
--image-size), and 1 channel if most images are greyscale, else 3 (`folder_defaults`).
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from . import folder_cache

PREFIX = "folder:"
SPLITS = ("train", "val", "test")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
CHUNK = 256  # images per decoding task: few enough tasks that thread hand-offs cost nothing


def is_folder(name) -> bool:
    return isinstance(name, str) and name.strip().lower().startswith(PREFIX)


def canonical(name: str) -> str:
    """folder:PATH with PATH absolute, so a later command (reduce on a run) re-opens the same folder."""
    path = name.strip()[len(PREFIX):]
    if not path:
        raise UserError("--dataset folder: needs a path, e.g. folder:~/data/flowers (PATH/train/CLASS/*.png)")
    return PREFIX + str(Path(path).expanduser().resolve())


def root_of(name: str) -> Path:
    return Path(canonical(name)[len(PREFIX):])


def short_name(name: str) -> str:
    """What a run directory name says for this dataset: folder-BASENAME."""
    return "folder-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in root_of(name).name)


@dataclass(frozen=True)
class Layout:
    root: Path
    classes: tuple
    files: dict  # split -> tuple of (path relative to root, label); val only when PATH/val exists


def _class_dirs(folder: Path) -> list:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _differ(a: str, ca: list, b: str, cb: list) -> str:
    only_a, only_b = sorted(set(ca) - set(cb)), sorted(set(cb) - set(ca))
    parts = [f"only in {a}/: {', '.join(only_a)}" * bool(only_a), f"only in {b}/: {', '.join(only_b)}" * bool(only_b)]
    return "; ".join(p for p in parts if p)


def scan(name: str) -> Layout:
    """The folder's classes and files, checked: every problem is one UserError before anything is read."""
    root = root_of(name)
    hint = f"expected {root}/train/CLASS/*.png and {root}/test/CLASS/*.png"
    if not root.is_dir():
        raise UserError(f"--dataset folder:{root}: no such folder; {hint}")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(f"--dataset folder:{root} has no {split}/ folder; {hint}")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    classes = _class_dirs(root / "train")
    if len(classes) < 2:
        raise UserError(f"--dataset folder:{root}: train/ has {len(classes)} class folder(s) "
                        f"({', '.join(classes) or 'none'}); a classifier needs at least two ({hint})")
    for split in splits[1:]:
        other = _class_dirs(root / split)
        if other != classes:
            raise UserError(f"--dataset folder:{root}: class folders differ between train/ and {split}/ "
                            f"({_differ('train', classes, split, other)}); give both the same class folders")
    files = {}
    for split in splits:
        entries = []
        for label, c in enumerate(classes):
            for f in sorted(os.listdir(root / split / c)):
                if not f.startswith(".") and (root / split / c / f).is_file():
                    entries.append((f"{split}/{c}/{f}", label))
        if not entries:
            raise UserError(f"--dataset folder:{root}: {split}/ holds no images; {hint}")
        files[split] = tuple(entries)
    return Layout(root, tuple(classes), files)


def num_classes(name: str) -> int:
    return len(scan(name).classes)


# ---------------------------------------------------------------- the folder's own size and channels

def folder_defaults(name: str, image_size=None, channels=None) -> tuple:
    """(image size, channels): those given, else the folder's own (see the module docstring)."""
    if image_size is not None and channels is not None:
        return image_size, channels
    layout = scan(name)
    listing = tuple((r, *_stat(layout.root / r)) for split in layout.files.values() for r, _ in split)
    sizes, grey = _probe(layout.root, listing)
    if image_size is None:
        if len(sizes) != 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise UserError(f"--dataset folder:{layout.root}: the images have {len(sizes)} different sizes "
                            f"({shown}{', ...' if len(sizes) > 4 else ''}); pass --image-size S to resize "
                            f"them all (shorter side to S, then a centre crop)")
        image_size = min(next(iter(sizes)))
    if channels is None:
        n = sum(len(s) for s in layout.files.values())
        channels = 1 if grey * 2 > n else 3
    return image_size, channels


def _stat(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)  # a study builds one config per run: the folder's headers are read once
def _probe(root: Path, listing: tuple) -> tuple:
    """The set of (width, height) and the number of greyscale images, from the files' headers only."""
    from PIL import Image
    sizes, grey = set(), 0
    for rel, *_ in listing:
        try:
            with Image.open(root / rel) as im:
                sizes.add(im.size)
                grey += im.mode in GREY_MODES
        except Exception:  # UnidentifiedImageError, OSError, ...: the decode names the file (or skips it)
            continue
    return frozenset(sizes), grey


# ---------------------------------------------------------------- decoding

def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): converted, shorter side resized, centre-cropped."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _decode_chunk(root, rels, size, channels, out, start):
    bad = []
    for i, rel in enumerate(rels):
        try:
            out[start + i] = decode_image(root / rel, size, channels)
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            bad.append((start + i, f"{rel} ({type(e).__name__}: {' '.join(str(e).split())[:120]})"))
    return bad


def decode_split(root: Path, entries: tuple, size: int, channels: int, what: str):
    """(x uint8 (N, C, S, S), y int64 (N,), [bad file descriptions]) with threads; bad files left out."""
    n = len(entries)
    out = np.zeros((n, channels, size, size), np.uint8)
    rels = [r for r, _ in entries]
    workers = max(1, min(8, os.cpu_count() or 1))  # Pillow decodes with the GIL released
    bad = []
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=n, desc=f"decoding {what}", unit="img", disable=None, leave=False) as bar:
        jobs = [pool.submit(_decode_chunk, root, rels[i:i + CHUNK], size, channels, out, i)
                for i in range(0, n, CHUNK)]
        for j, job in enumerate(jobs):
            bad += job.result()
            bar.update(min(CHUNK, n - j * CHUNK))
    keep = np.ones(n, bool)
    keep[[i for i, _ in bad]] = False
    y = np.array([label for _, label in entries], np.int64)
    return torch.from_numpy(out[keep]), torch.from_numpy(y[keep]), [b for _, b in bad]


def load_folder(name: str, image_size: int, channels: int, skip_bad: bool = False, log=print) -> tuple:
    """({split: (x, y)}, classes) for the folder's splits, from the cache or decoded (then cached).
    Every split is decoded before any cache file is written, so a bad file leaves nothing half-way."""
    if channels not in (1, 3):
        raise UserError(f"--channels {channels}: a folder dataset's images become 1 (greyscale) or 3 (RGB) channels")
    layout = scan(name)
    found, todo = {}, {}
    for split, entries in layout.files.items():
        key = folder_cache.split_key(layout.root, split, entries, layout.classes, image_size, channels, skip_bad)
        found[split] = folder_cache.read(key)
        if found[split] is None:
            todo[split] = key
    skipped = sum(s for *_, s in (v for v in found.values() if v is not None))
    decoded = {}
    for split, key in todo.items():
        x, y, bad = decode_split(layout.root, layout.files[split], image_size, channels, f"{layout.root.name}/{split}")
        if bad and not skip_bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise UserError(f"--dataset folder:{layout.root}: cannot read {bad[0]}{more}; fix or remove it, "
                            f"or pass --skip-bad-images to leave such files out")
        if len(y) == 0:
            raise UserError(f"--dataset folder:{layout.root}: no readable image in {split}/")
        decoded[split] = (x, y, len(bad))
        skipped += len(bad)
    folder_cache.write_all({todo[s]: v for s, v in decoded.items()}, layout.root, log)
    if skipped:
        log(f"folder:{layout.root}: skipped {skipped} unreadable file(s) (--skip-bad-images)")
    splits = {s: (v[0], v[1]) for s, v in {**found, **decoded}.items() if v is not None}
    return splits, layout.classes
