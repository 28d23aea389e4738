"""Checkpoints: safetensors files whose metadata holds the run's config as JSON.

A checkpoint alone rebuilds its model (the config's "model" entry is a ModelSpec). Pickles are
refused: they can run code when loaded.
"""
import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import UserError
from .fileio import atomic_write_bytes
from .models import ModelSpec, build_model

META_KEY = "laser_tool_config"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


def save_tensors(path, tensors: dict, config: dict) -> None:
    """Write tensors + config atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat, metadata={META_KEY: json.dumps(config)}))


def save_model(path, model: torch.nn.Module, config: dict) -> None:
    save_tensors(path, model.state_dict(), config)


def load_tensors(path):
    """(tensors, config) from a safetensors file; one clear UserError for anything else."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{path} looks like a pickle checkpoint; laser-tool reads only .safetensors "
                        f"(pickles can run code when loaded): convert it with safetensors first")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory or a .safetensors file")
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        tensors = st_load(data)
    except (struct.error, ValueError, SafetensorError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable safetensors file (corrupt or truncated: {e}); "
                        f"re-create it or point at another checkpoint") from None
    meta = header.get("__metadata__") or {}
    if META_KEY not in meta:
        raise UserError(f"{path} has no laser-tool config in its metadata; it was not written by laser-tool")
    return tensors, json.loads(meta[META_KEY])


def load_model(path, device="cpu"):
    """(model, config) rebuilt from a checkpoint file, in eval mode."""
    tensors, config = load_tensors(path)
    model = build_model(ModelSpec.from_dict(config["model"]))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match the model its config describes "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the file is inconsistent")
    return model.to(device).eval(), config


def checkpoint_path(run) -> Path:
    """A run directory's selected checkpoint (best by validation), or the file itself."""
    run = Path(run)
    if run.is_dir():
        f = run / "model.safetensors"
        if not f.exists():
            raise UserError(f"run {run} has no model.safetensors; it has not finished an epoch yet")
        return f
    return run


def load_run(path, device="cpu"):
    """`laser_tool.load_run(path) -> (model, config)` for a run directory or a checkpoint file."""
    return load_model(checkpoint_path(path), device)
