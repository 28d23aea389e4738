"""laser-tool: train small from the start, or train full and cut after? Measure it.

The notebook API, imported on first use (so `import laser_tool.errors` stays cheap):
  load_run(path) -> (model, config)          runs/checkpoint.py
  ModelSpec, build_model, count_params       models/
  compare_rows(runs) -> [row dict, ...]      analysis/compare.py
  plot_comparison(rows, path)                analysis/plot.py
  UserError                                  errors.py
"""
import importlib

_API = {"load_run": ("runs.checkpoint", "load_run"), "UserError": ("errors", "UserError"),
        "ModelSpec": ("models", "ModelSpec"), "build_model": ("models", "build_model"),
        "count_params": ("models", "count_params"), "compare_rows": ("analysis.compare", "compare_rows"),
        "plot_comparison": ("analysis.plot", "plot")}
__all__ = list(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'laser_tool' has no attribute {name!r}")
    module, attr = _API[name]
    return getattr(importlib.import_module(f".{module}", __name__), attr)
