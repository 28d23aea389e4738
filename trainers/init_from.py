"""`train --init-from RUN`: start a run from another run's weights and structure.

The new run keeps the source's model exactly (its train-time variant and any post-hoc factored layers),
gets a fresh optimizer and its own schedule, and must use the source's data split: a different split
seed or validation size would put the source's training images into the new run's validation set.
Healing a post-hoc reduced run is this with a few epochs at a small learning rate.
"""
import hashlib
from pathlib import Path

from laser_tool.runs.checkpoint import check_checkpoint, checkpoint_path, load_model
from laser_tool.errors import UserError
from laser_tool.runs.reader import check_input_run

# Settings that fix which images are training, validation and test images.
# skip_bad_images: a folder dataset's unreadable files left out (absent from configs made before it: False).
SPLIT_KEYS = ("dataset", "val_size", "seed", "train_subset", "skip_bad_images")


def source_config(path) -> dict:
    """The config of the run (or checkpoint file) to start from, checked against the file's header
    (one clear error for a file without a usable model spec); the tensors are read once, later."""
    check_input_run(path, "--init-from")
    return check_checkpoint(checkpoint_path(Path(path)))[1]


def split_of(config: dict) -> dict:
    """The split settings of a run's config (a reduced or healed run carries its source's)."""
    train = config.get("train") if isinstance(config.get("train"), dict) else config
    return {k: train.get(k, False if k == "skip_bad_images" else None) for k in SPLIT_KEYS}


def check_split(cfg, source: dict, path) -> None:
    want, got = split_of(source), {k: getattr(cfg, k) for k in SPLIT_KEYS}
    diff = [k for k in SPLIT_KEYS if want[k] != got[k]]
    if diff:
        pairs = ", ".join(f"{k} {got[k]} vs {want[k]}" for k in diff)
        raise UserError(f"--init-from {path}: the new run's data split differs from the source's ({pairs}); "
                        f"use the source's settings so no validation image was a training image")


def load_init_weights(model, path) -> dict:
    """Load the source checkpoint into `model` (with load_model's checks: shapes, strict keys, finite
    weights); returns what config.json records about the source."""
    ckpt = checkpoint_path(Path(path))
    source, config = load_model(ckpt)
    model.load_state_dict(source.state_dict())
    return {"run": str(path), "checkpoint": str(ckpt), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
            "config": {k: v for k, v in config.items() if k != "split"}}


def inherited(source: dict, cfg) -> dict:
    """config.json entries a run started from `source` carries over: its reductions (the model holds
    those factored layers) and, when the source was cut post hoc, a `heal` entry, so `compare` files
    the run as that reduction healed."""
    out = {}
    if source.get("reduction"):
        out["reduction"] = source["reduction"]
        out["heal"] = {"epochs": cfg.epochs, "lr": cfg.lr, "from_run": str(cfg.init_from)}
    return out

