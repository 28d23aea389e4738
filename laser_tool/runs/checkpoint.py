"""Checkpoints: safetensors files whose metadata holds the run's config as JSON.

A checkpoint alone rebuilds its model (the config's "model" entry is a ModelSpec). Pickles are
refused: they can run code when loaded.
"""
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import UserError
from ..fileio import atomic_write_bytes, safetensors_header
from ..models import ModelSpec, build_model
from .schema import MODEL, model_path

META_KEY = "laser_tool_config"
ALIASES_KEY = "laser_tool_aliases"  # {name: the name it is tied to}: a tied tensor is written once
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


def tensors_bytes(tensors: dict, metadata: dict) -> bytes:
    """safetensors bytes of `tensors` with `metadata`. Names that are one tensor (tied weights: one storage,
    offset, shape and strides) are written once and the others named in the metadata (ALIASES_KEY), for
    `with_aliases` to re-tie on reading; other tensors that share memory are copied, since safetensors
    refuses shared memory."""
    first, storages, flat, aliases = {}, set(), {}, {}
    for k, v in tensors.items():
        v = v.detach()
        storage = (str(v.device), v.untyped_storage().data_ptr())
        ident = (*storage, v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and ident in first:
            aliases[k] = first[ident]
            continue
        first.setdefault(ident, k)
        flat[k] = v.contiguous().cpu().clone() if storage in storages and v.numel() else v.contiguous().cpu()
        storages.add(storage)
    return st_save(flat, metadata=dict(metadata, **({ALIASES_KEY: json.dumps(aliases)} if aliases else {})))


def with_aliases(named: dict, metadata: dict) -> dict:
    """`named` (tensors or header entries) with every tied name written once by tensors_bytes filled in."""
    for k, src in json.loads((metadata or {}).get(ALIASES_KEY, "{}")).items():
        if src in named:
            named[k] = named[src]
    return named


def save_tensors(path, tensors: dict, config: dict) -> None:
    """Write tensors + config atomically."""
    atomic_write_bytes(path, tensors_bytes(tensors, {META_KEY: json.dumps(config)}))


def save_model(path, model: torch.nn.Module, config: dict) -> None:
    save_tensors(path, model.state_dict(), config)


def read_header(path):
    """(header {tensor name: {dtype, shape, data_offsets}}, config) of a safetensors file, reading only
    its header; one clear UserError for anything that is not a laser-tool checkpoint."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{path} looks like a pickle checkpoint; laser-tool reads only .safetensors "
                        f"(pickles can run code when loaded): convert it with safetensors first")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory or a .safetensors file")
    try:
        header = safetensors_header(path)
        meta = header.pop("__metadata__", None) or {}
        for k, h in header.items():
            if not (isinstance(h, dict) and isinstance(h.get("shape"), list)
                    and all(isinstance(d, int) and d >= 0 for d in h["shape"])):
                raise ValueError(f"tensor {k!r} has no valid shape")
        header = with_aliases(header, meta if isinstance(meta, dict) else {})
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file (corrupt or truncated: {str(e)[:100]}); "
                        f"re-create it or point at another checkpoint") from None
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise UserError(f"{path} has no laser-tool config in its metadata; it was not written by laser-tool")
    try:
        config = json.loads(meta[META_KEY])
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: its laser-tool config does not parse ({str(e)[:80]}); the file is corrupt") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{path}: its laser-tool config has no model spec; the file is corrupt")
    return header, config


def spec_of(config: dict, path) -> ModelSpec:
    try:
        spec = ModelSpec.from_dict(config["model"])
        spec.resolved()
        return spec
    except UserError as e:
        raise UserError(f"{path}: its config's model spec is invalid: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{path}: its config's model spec is invalid ({type(e).__name__}: {str(e)[:80]})") from None


def check_checkpoint(path):
    """Header and config only, no tensor data: the shapes the config's model would have must be the
    file's. A lying header fails here in milliseconds (the model is built on the meta device, which
    allocates nothing) instead of as a huge allocation. Returns (header, config)."""
    header, config = read_header(path)
    spec = spec_of(config, path)
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    except UserError as e:
        raise UserError(f"{path}: its config's model cannot be built: {e}") from None
    except Exception as e:  # noqa: BLE001 - any failure to build from metadata is a corrupt file to the user
        raise UserError(f"{path}: its config's model cannot be built ({type(e).__name__}: {str(e)[:80]})") from None
    got = {k: tuple(h["shape"]) for k, h in header.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [f"{k} {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {unexpected[:3]}"] if unexpected
                                                                   else []) + ([f"shapes {wrong[:2]}"] if wrong else [])
        raise UserError(f"{path} does not match the model its config describes ({'; '.join(parts)}); "
                        f"the file is inconsistent")
    return header, config


def load_tensors(path):
    """(tensors, config) from a safetensors file; one clear UserError for anything else."""
    path = Path(path)
    _, config = read_header(path)
    try:
        tensors = with_aliases(st_load(path.read_bytes()), safetensors_header(path).get("__metadata__"))
    except (ValueError, SafetensorError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable safetensors file (corrupt or truncated: {str(e)[:100]}); "
                        f"re-create it or point at another checkpoint") from None
    return tensors, config


def load_model(path, device="cpu"):
    """(model, config) rebuilt from a checkpoint file, in eval mode. The shapes are checked against
    the config before anything is built or read, and non-finite weights are refused."""
    check_checkpoint(path)
    tensors, config = load_tensors(path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}); "
                        f"it cannot be used: pick an earlier checkpoint of that run")
    model = build_model(spec_of(config, path))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path} does not match the model its config describes "
                        f"({str(e).splitlines()[0][:120]}); the file is inconsistent") from None
    return model.to(device).eval(), config


def checkpoint_path(run) -> Path:
    """A run directory's selected checkpoint (best by validation), or the file itself."""
    run = Path(run)
    if run.is_dir():
        f = model_path(run)
        if not f.exists():
            raise UserError(f"run {run} has no {MODEL}; it has not finished an epoch yet")
        return f
    return run


def load_run(path, device="cpu"):
    """`laser_tool.load_run(path) -> (model, config)` for a run directory or a checkpoint file."""
    return load_model(checkpoint_path(path), device)
