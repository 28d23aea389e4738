"""Your own model: `--arch python:MODULE:FUNCTION` calls FUNCTION(num_classes=, image_size=, channels=,
**arch_args) from MODULE and uses the nn.Module it returns. Its Linear layers are found by the same
rules as every model's (surgery.slots).

MODULE must be importable as it stands (installed, or on PYTHONPATH: `PYTHONPATH=. laser-tool ...` for a
my_models.py beside you). The working directory is never searched on its own: a .py shipped beside
received runs would otherwise be imported by `compare .`. And a factory is called only if you named it
(trust.py): never because a run's config.json or a study's plan.json says so."""
import importlib

import torch.nn as nn

from ..errors import UserError
from . import trust


def factory_parts(arch: str):
    """('pkg.mod', 'fn') of 'python:pkg.mod:fn'."""
    _, _, rest = arch.partition(":")
    module, _, function = rest.rpartition(":")
    if not module or not function:
        raise UserError(f"--arch {arch!r}: write python:MODULE:FUNCTION, e.g. python:my_models:small_vit")
    return module, function


def load_factory(arch: str):
    """The one place a factory is loaded: refused unless the user named it (trust.check), before any import."""
    module, function = factory_parts(arch)
    trust.check(arch)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises, one line naming it
        raise UserError(f"--arch {arch}: cannot import {module} ({type(e).__name__}: {str(e)[:120]}); "
                        f"make it importable, e.g. PYTHONPATH=DIR for DIR/{module.replace('.', '/')}.py (the "
                        f"working directory is not searched)") from None
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
