"""The decoded-image cache of folder datasets: one safetensors file (uint8 x, int64 y) per split.

Where: $LASER_TOOL_CACHE, else $XDG_CACHE_HOME/laser-tool, else ~/.cache/laser-tool, under folders/.
Not inside the user's data folder: laser-tool never writes where it was only asked to read (the folder
may be read-only, shared, or under version control), and one per-user cache serves every run and
study that reads the folder, wherever their --out is.

Key: a hash of everything the tensor depends on: the split's files (paths relative to the dataset
root, sizes, mtimes in ns), the class list, the image size, channels, whether bad files are skipped,
and RESIZE_VERSION (bump it when decode_image changes its pixels). Any change is a new key, so a
stale file is never read; old files are simply not used again (delete the folder to reclaim space).
"""
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..errors import UserError
from ..fileio import atomic_write_bytes, deferred_commit, safetensors_header

RESIZE_VERSION = 1  # folder.decode_image: shorter side -> S bilinear, centre crop, Pillow convert L/RGB


def cache_dir() -> Path:
    base = os.environ.get("LASER_TOOL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "laser-tool"
    return Path(base).expanduser() / "folders"


def split_key(root: Path, split: str, entries: tuple, classes: tuple, size: int, channels: int, skip_bad: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([RESIZE_VERSION, split, list(classes), size, channels, bool(skip_bad)]).encode())
    for rel, label in entries:
        st = os.stat(root / rel)
        h.update(f"\n{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return f"{root.name[:40]}-{split}-{h.hexdigest()[:24]}"


def path_of(key: str) -> Path:
    return cache_dir() / f"{key}.safetensors"


def read(key: str):
    """(x, y, files skipped) from the cache, or None if absent or unreadable (then it is decoded again)."""
    path = path_of(key)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        t = load(blob)
        meta = safetensors_header(blob).get("__metadata__", {})
        x, y = t["x"], t["y"]
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
            return None
        return x, y, int(meta.get("skipped", 0))
    except (SafetensorError, KeyError, ValueError, RuntimeError):
        return None


def write_all(decoded: dict, root: Path, log=print) -> None:
    """{key: (x, y, skipped)} into the cache, all landing together; a cache that cannot be written is
    said once and the run goes on (it only costs the decode next time)."""
    if not decoded:
        return
    try:
        with deferred_commit():
            for key, (x, y, skipped) in decoded.items():
                blob = save({"x": x.contiguous(), "y": y.contiguous()},
                            {"skipped": str(skipped), "root": str(root)})
                atomic_write_bytes(path_of(key), blob)
    except UserError as e:
        log(f"warning: decoded images not cached ({e}); set LASER_TOOL_CACHE to a writable folder")
