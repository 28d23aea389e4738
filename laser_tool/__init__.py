"""laser-tool: train small from the start, or train full and cut after? Measure it."""
from .checkpoint import load_run
from .errors import UserError
from .models import ModelSpec, build_model, count_params

__all__ = ["load_run", "UserError", "ModelSpec", "build_model", "count_params"]
