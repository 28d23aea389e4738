"""A user's weights, brought in (`laser-tool import`): a safetensors file, or a torch file read with
`weights_only=True` (tensors and plain containers only; a pickle that needs code to load is refused,
never executed), matched key by key and shape by shape against the model it is meant for."""
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UserError

# Where training scripts commonly nest the state dict inside a torch file.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < path.stat().st_size and head[8:9] == b"{"


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (a legacy one: a pickle, whose protocol byte is 0x80)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _state_dict(obj, path):
    """The {name: tensor} inside a loaded torch file (the top level or one nested state dict)."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for k in NESTED_KEYS:
            if k in obj:
                return _state_dict(obj[k], path)
    raise UserError(f"{path} holds no state dict (a mapping of names to tensors, at the top or under "
                    f"{'/'.join(NESTED_KEYS)}); save model.state_dict()")


def read_weights(path) -> tuple:
    """({name: tensor}, format) of a weights file; one clear line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist")
    if _is_safetensors(path):
        try:
            return dict(load_file(str(path))), "safetensors"
        except (SafetensorError, ValueError, OSError) as e:
            raise UserError(f"--weights {path} is not a readable safetensors file ({str(e)[:100]})") from None
    if not _is_torch_file(path):
        raise UserError(f"--weights {path} is neither a safetensors nor a torch file; save the model's "
                        f"state_dict with safetensors.torch.save_file or torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it pickles Python objects such as {found[1]}" if found else "it holds more than tensors"
        raise UserError(f"--weights {path} cannot be read with weights_only=True ({what}; laser-tool never runs a "
                        f"pickle's code): re-save just the tensors, torch.save(model.state_dict(), F) or "
                        f"safetensors.torch.save_file") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"--weights {path} is neither a safetensors nor a torch file ({type(e).__name__}: "
                        f"{str(e)[:100]})") from None
    return dict(_state_dict(obj, path)), "torch"


def mismatch(expected: dict, got: dict, skip=()) -> list:
    """What stops `got` ({name: tensor}) loading into a model whose state dict is `expected`: the first
    three missing keys, unexpected keys and wrong shapes, as phrases; [] when it fits."""
    keys = [k for k in expected if k not in skip]
    missing = [k for k in keys if k not in got]
    unexpected = [k for k in got if k not in expected and k not in skip]
    wrong = [f"{k} {tuple(got[k].shape)} (model {tuple(expected[k].shape)})" for k in keys
             if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    out = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            out.append(f"{len(items)} {what}: {', '.join(items[:3])}{more}")
    return out
