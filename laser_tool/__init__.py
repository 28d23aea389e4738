"""laser-tool: train small from the start, or train full and cut after? Measure it."""
from .checkpoint import load_run
from .errors import UserError
from .models import ModelSpec, build_model, count_params

__all__ = ["load_run", "UserError", "ModelSpec", "build_model", "count_params"]

# Notebook API for comparisons: `laser_tool.compare_rows(runs)` (one dict per table row) and
# `laser_tool.plot_comparison(rows, path)`. The module that holds them stays `laser_tool.compare`,
# so the function and its module have distinct names.
from .compare import compare_rows  # noqa: E402
from .report import plot as plot_comparison  # noqa: E402

__all__ += ["compare_rows", "plot_comparison"]
