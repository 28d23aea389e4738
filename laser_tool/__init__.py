"""laser-tool: train small from the start, or train full and cut after? Measure it."""
from .checkpoint import load_run
from .errors import UserError
from .models import ModelSpec, build_model, count_params

__all__ = ["load_run", "UserError", "ModelSpec", "build_model", "count_params"]

# Notebook API for comparisons. `compare` deliberately takes the name of its submodule, so that
# `laser_tool.compare(runs)` is the function; code wanting the module uses importlib or `from .compare import`.
from .compare import compare  # noqa: E402
from .report import plot as plot_comparison  # noqa: E402

__all__ += ["compare", "plot_comparison"]
