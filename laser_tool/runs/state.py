"""RUN/state.safetensors, a training run's resume point: model, optimizer, scaler, RNG and counters in
ONE file, written atomically, so a crash can never leave a model from one step beside an optimizer from
another. Tensors go in the tensor section, everything else in the JSON metadata; no pickles.

Tensors: `model.<state_dict key>`, `opt.<param index>.<state name>`, `rng.cpu` and, on a GPU, `rng.cuda`;
with `train --ema`, the average of the weights as `ema.<state_dict key>` (trainers/ema.py).
Metadata (each a JSON string): `counters` (epoch, step_in_epoch, global_step, best_val_acc, best_epoch,
history: the metrics rows so far, partial: an interrupted epoch's totals, a progressive run's plan, and
with --ema ema_start: the step the average last (re)started at),
`param_groups` (the optimizer's), `scaler` (the AMP grad scaler's state, {} without one) and `config`
(config.json as it was written). trainers/state.py maps a model and optimizer to and from it.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load as st_load

from ..errors import UserError
from ..fileio import atomic_write_bytes, safetensors_header
from .checkpoint import tensors_bytes, with_aliases
from .schema import STATE

# The counters every resume point holds (a progressive run's plan and a heal's init_val_acc are extra).
COUNTERS = ("epoch", "step_in_epoch", "global_step", "best_val_acc", "best_epoch", "history")


@dataclass
class ResumePoint:
    tensors: dict         # {name: tensor}; empty when read with tensors=False
    counters: dict
    param_groups: list
    scaler: dict
    config: dict


def state_path(run_dir) -> Path:
    return Path(run_dir) / STATE


def write_state(path, point: ResumePoint) -> None:
    meta = {"counters": json.dumps(point.counters), "param_groups": json.dumps(point.param_groups),
            "scaler": json.dumps(point.scaler), "config": json.dumps(point.config)}
    atomic_write_bytes(path, tensors_bytes(point.tensors, meta))


def read_state(path, tensors: bool = True) -> ResumePoint:
    """The resume point at `path` (tensors=False: its metadata only, the tensors are not read); one
    UserError, with its fix, for a file that is not one."""
    try:
        if tensors:
            data = Path(path).read_bytes()
            meta = safetensors_header(data)["__metadata__"]
            loaded = with_aliases(st_load(data), meta)
        else:
            meta, loaded = safetensors_header(path)["__metadata__"], {}
        point = ResumePoint(loaded, *(json.loads(meta[k]) for k in ("counters", "param_groups", "scaler")),
                            json.loads(meta.get("config", "{}")))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise UserError(f"cannot read the resume point {path} ({e}); start afresh with --overwrite") from None
    return point
