"""The resume point of a run: model, optimizer, scaler, RNG and counters in ONE safetensors file.

One file, written atomically, so a crash can never leave a model from one step beside an optimizer
from another. Tensors go in the tensor section, everything else in the JSON metadata; no pickles.
"""
import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from laser_tool.errors import UserError
from laser_tool.fileio import atomic_write_bytes


def save_state(path, model, optimizer, scaler, counters: dict, config: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"opt.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "counters": json.dumps(counters),
        "param_groups": json.dumps(opt["param_groups"]),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}),
        "config": json.dumps(config),
    }
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat, metadata=meta))


def load_state(path, model, optimizer, scaler, device) -> dict:
    """Restore everything saved by save_state; returns the counters."""
    try:
        data = open(path, "rb").read()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len])["__metadata__"]
    except Exception as e:  # any unreadable file is the same problem to the user
        raise UserError(f"cannot read the resume point {path} ({e}); start afresh with --overwrite") from None
    try:  # a resume point from another model or a hand-edited file: one line, not a traceback
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.to(device) if name != "step" else v
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        scaler_state = json.loads(meta["scaler"])
        if scaler is not None and scaler_state:
            scaler.load_state_dict(scaler_state)
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        counters = json.loads(meta["counters"])
        for key in ("epoch", "step_in_epoch", "global_step", "best_val_acc", "best_epoch", "history"):
            counters[key]
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"the resume point {path} does not belong to this run ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:100] if str(e) else ''}); start afresh with --overwrite") from None
    return counters
