"""A model, optimizer and scaler to and from a run's resume point (laser_tool/runs/state.py holds the
file's schema, reader and writer)."""
import torch

from laser_tool.errors import UserError
from laser_tool.runs.state import COUNTERS, ResumePoint, read_state, write_state


def save_state(path, model, optimizer, scaler, counters: dict, config: dict, ema=None) -> None:
    """`ema` (trainers/ema.py, --ema): its tensors go in too, as `ema.<state_dict key>`."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update(ema.state_tensors())
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"opt.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}
    write_state(path, ResumePoint(tensors, counters, opt["param_groups"], scaler_state, config))


def load_state(path, model, optimizer, scaler, device, ema=None) -> dict:
    """Restore everything saved by save_state; returns the counters."""
    point = read_state(path)
    tensors = point.tensors
    try:  # a resume point from another model or a hand-edited file: one line, not a traceback
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:  # strict: a resume point without the average is not this run's
            ema.load_tensors(tensors)
        state = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.to(device) if name != "step" else v
        optimizer.load_state_dict({"state": state, "param_groups": point.param_groups})
        if scaler is not None and point.scaler:
            scaler.load_state_dict(point.scaler)
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        counters = point.counters
        for key in COUNTERS:
            counters[key]
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"the resume point {path} does not belong to this run ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:100] if str(e) else ''}); start afresh with --overwrite") from None
    return counters
