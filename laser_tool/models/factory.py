"""Your own model: `--arch python:MODULE:FUNCTION` calls FUNCTION(num_classes=, image_size=, channels=,
**arch_args) from MODULE (importable, or a MODULE.py in the working directory) and uses the nn.Module
it returns. Its Linear layers are found by the same rules as every model's (surgery.slots)."""
import importlib
import os
import sys

import torch.nn as nn

from ..errors import UserError


def factory_parts(arch: str):
    """('pkg.mod', 'fn') of 'python:pkg.mod:fn'."""
    _, _, rest = arch.partition(":")
    module, _, function = rest.rpartition(":")
    if not module or not function:
        raise UserError(f"--arch {arch!r}: write python:MODULE:FUNCTION, e.g. python:my_models:small_vit")
    return module, function


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise
    sys.path.insert(0, os.getcwd())  # the user's file beside the command, as `python -m` would see it
    return importlib.import_module(module)


def load_factory(arch: str):
    module, function = factory_parts(arch)
    try:
        mod = _import(module)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises, one line naming it
        raise UserError(f"--arch {arch}: cannot import {module} ({type(e).__name__}: {str(e)[:120]}); "
                        f"make it importable (or run from the folder holding {module.replace('.', '/')}.py)") from None
    fn = getattr(mod, function, None)
    if not callable(fn):
        raise UserError(f"--arch {arch}: {module} has no function {function!r}")
    return fn


def build_factory(s) -> nn.Module:
    """The user's model for a spec: sizes from the dataset, `s.arch_args` as extra keyword arguments."""
    fn = load_factory(s.arch)
    try:
        model = fn(num_classes=s.num_classes, image_size=s.image_size, channels=s.channels, **s.arch_args)
    except Exception as e:  # noqa: BLE001 - the user's code: one line, not its traceback
        raise UserError(f"--arch {s.arch}: the factory failed ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                        f"it is called with num_classes, image_size, channels and the --arch-arg values") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {s.arch}: the factory returned {type(model).__name__}, not a torch nn.Module")
    return model
