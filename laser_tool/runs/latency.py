"""RUN/export/latency.json: the inference latency of a run's exported model, measured under onnxruntime.

`laser-tool export RUN --format onnx --measure-latency` writes it (laser_tool/export/); `compare` reads it
through `read_latency` and shows the figures where a run has them. It is the one file laser-tool adds to
a finished run: in its own folder, beside (never in place of) the files final.json vouches for, so the
run's digests stay valid. Its form:

    {"written_by": "laser-tool", "format": "onnx", "file": "...", "processor": "...", "threads": 2,
     "onnxruntime": "1.32.0", "batches": {"1": {"ms": 0.41, "ms_per_image": 0.41}, "64": {...}}}
"""
import json
from pathlib import Path

from ..fileio import atomic_write_json
from .schema import LATENCY

LATENCY_FILE = Path(LATENCY)


def latency_path(run_dir) -> Path:
    return Path(run_dir) / LATENCY_FILE


def read_latency(run_dir):
    """The run's latency record, or None where there is none or it does not parse (a missing figure is
    a blank cell, never an error)."""
    path = latency_path(run_dir)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("written_by") != "laser-tool" or not isinstance(doc.get("batches"), dict):
        return None
    return doc


def batch_ms(doc, batch: int):
    """Median milliseconds of one batch of `batch` images in a latency record, or None."""
    entry = (doc or {}).get("batches", {}).get(str(batch))
    ms = entry.get("ms") if isinstance(entry, dict) else None
    return float(ms) if isinstance(ms, (int, float)) and not isinstance(ms, bool) else None


def write_latency(run_dir, doc: dict) -> Path:
    """Write the record atomically (the caller holds the lock on it)."""
    path = latency_path(run_dir)
    atomic_write_json(path, dict(doc, written_by="laser-tool"))
    return path
