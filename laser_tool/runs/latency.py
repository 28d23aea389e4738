"""RUN/export/latency.json: the inference latency of a run's exported model, measured under onnxruntime.

`laser-tool export RUN --format onnx --measure-latency` writes it (laser_tool/export/), for the user; `compare`
times every row itself, all rows in shared rounds (analysis/speed.py). It is the one file laser-tool adds to
a finished run: in its own folder, beside (never in place of) the files final.json vouches for, so the
run's digests stay valid. Its form:

    {"written_by": "laser-tool", "format": "onnx", "file": "...", "processor": "...", "threads": 2,
     "onnxruntime": "1.32.0", "reps": 20, "runtime": "onnxruntime 1.32.0 CPU",
     "batches": {"1": {"ms": 0.41, "ms_per_image": 0.41, "median_ms": 0.41, "iqr_ms": 0.02}, "64": {...}},
     "dense": {"runtime": ..., "batches": {...}}}     (dense: the dense multiply-out, where there is one)
"""
from pathlib import Path

from ..fileio import atomic_write_json
from .schema import LATENCY

LATENCY_FILE = Path(LATENCY)


def latency_path(run_dir) -> Path:
    return Path(run_dir) / LATENCY_FILE


def write_latency(run_dir, doc: dict) -> Path:
    """Write the record atomically (the caller holds the lock on it)."""
    path = latency_path(run_dir)
    atomic_write_json(path, dict(doc, written_by="laser-tool"))
    return path
