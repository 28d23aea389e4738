"""`laser-tool export RUN --format dense|onnx --out FILE`: a finished run's model as a deployable file.

    export_run("runs/base-reduced-svd-1a2b3c4d", "dense", "model.safetensors")
    export_run("runs/lowrank", "onnx", "lowrank.onnx", measure_latency=True)

- dense: a safetensors state dict that the original constructor loads with strict=True, every reduced
  or structured layer multiplied out (dense.py); its metadata holds the original spec, so
  `laser_tool.load_run(FILE)` rebuilds it too.
- onnx: the model as it is, factored layers as two matmuls (onnx.py), checked under onnxruntime.
  `--measure-latency` also times it and its dense multiply-out in shared rounds (latency.py) and records
  the figures in RUN/export/latency.json.

Every check comes before any work: the format's packages, a finished run, an --out that is not inside the
run and, if it exists, was written by this command (anything else is never overwritten). Each export is
checked against the run's own model (max abs difference of the logits <= 1e-4) and written atomically
under a lock, so a failed check or a kill leaves nothing half-written.
"""
from pathlib import Path

import torch

from ..errors import UserError, is_positive_int
from ..fileio import atomic_write_bytes, check_output_file
from ..lock import output_lock
from ..models import ModelSpec
from ..runs.checkpoint import load_run, read_header, save_tensors
from ..runs.latency import latency_path, write_latency
from ..runs.reader import finished_run, read_run
from ..vocab import EXPORT_FORMATS as FORMATS
from .dense import dense_model
from .latency import measure
from .onnx import TOLERANCE, example_images, import_onnx, onnx_bytes, written_by_laser_tool

SUFFIXES = {"dense": ".safetensors", "onnx": ".onnx"}  # a file named for the other format is refused


def dense_written_by_laser_tool(path) -> bool:
    """True when `path` is a dense export of this command (a laser-tool checkpoint with an export record)."""
    try:
        _, config = read_header(path)
    except UserError:
        return False
    return isinstance(config.get("export"), dict) and config.get("written_by") == "laser-tool"


def check_request(run, fmt: str, out, measure_latency: bool, keep_bias: bool = False):
    """(run directory, output path) after every check that needs no model; one UserError otherwise."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose dense or onnx")
    if fmt == "onnx":
        import_onnx()
        if keep_bias:
            raise UserError("--keep-bias applies to --format dense (the ONNX export keeps every bias as it is)")
    elif measure_latency:
        raise UserError("--measure-latency times the ONNX model under onnxruntime: add --format onnx")
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"export: {run} is not a run directory; pass the directory `train` or `reduce` wrote")
    if finished_run(run) is None:
        r = read_run(run)
        raise UserError(f"export: {run} is not a finished run ({r.status}: {r.reason}); export a run whose "
                        f"training or reduction completed")
    if out is None:
        raise UserError("export needs --out FILE: where to write the exported model")
    check_suffix(Path(out), fmt)
    out = check_output_file(out, inputs=[run], what="--out", ours=exported_by_laser_tool)
    return run, out


def exported_by_laser_tool(path) -> bool:
    return dense_written_by_laser_tool(path) or written_by_laser_tool(path)


def check_suffix(out: Path, fmt: str) -> None:
    """--out named for the other format (model.onnx holding a state dict) is refused; other names are the user's."""
    other = next(f for f in FORMATS if f != fmt)
    if out.suffix.lower() == SUFFIXES[other]:
        raise UserError(f"--out {out} ends in {SUFFIXES[other]}, the suffix of --format {other}, but --format is {fmt}; name it "
                        f"{out.with_suffix(SUFFIXES[fmt]).name} or pass --format {other}")


def check_ours(out: Path) -> None:
    """An existing --out is replaced only if this command wrote it (a dense or an ONNX export)."""
    if out.exists() and not exported_by_laser_tool(out):
        raise UserError(f"--out {out} exists and was not written by laser-tool export; it is never overwritten: "
                        f"pick another path or remove it yourself")


def lock_target(out: Path) -> Path:
    """What the output lock is taken on: a name beside --out (the lock guards directories, and --out is a
    file that may exist), so its lock file is PARENT/.FILE.export.lock."""
    return out.with_name(out.name + ".export")


def export_dense(model, config: dict, run: Path, out: Path, keep_bias: bool) -> dict:
    spec = ModelSpec.from_dict(config["model"])
    orig, orig_spec, converted = dense_model(model, spec, keep_bias)
    x = example_images(spec.resolved(), 5)
    with torch.no_grad():
        diff = float((orig(x) - model(x)).abs().max())
    if not diff <= TOLERANCE:
        raise UserError(f"the dense export's logits differ from the run's model by {diff:.2e} > {TOLERANCE:g}; "
                        f"nothing was written")
    info = dict(format="dense", run=str(run), source_model=config["model"], multiplied_out=converted,
                max_abs_diff=diff, checked_batch=len(x))
    save_tensors(out, orig.state_dict(), dict(config, model=orig_spec.to_dict(), written_by="laser-tool", export=info))
    return info


def export_onnx(model, config: dict, run: Path, out: Path, measure_latency: bool, threads: int, reps: int) -> dict:
    spec = ModelSpec.from_dict(config["model"]).resolved()
    data, check = onnx_bytes(model, spec, meta=dict(run=str(run), model=config["model"]))
    atomic_write_bytes(out, data)
    info = dict(format="onnx", run=str(run), **check)
    if measure_latency:
        lat = measure(model, ModelSpec.from_dict(config["model"]), threads=threads, reps=reps)
        with output_lock(latency_path(run).parent):  # the lock (RUN/.export.lock) guards a directory
            info["latency_file"] = str(write_latency(run, dict(format="onnx", file=str(out.resolve()), **lat)))
        info["latency"] = lat
    return info


def export_run(run, fmt: str, out, measure_latency: bool = False, threads: int = 2, reps: int = 20,
               keep_bias: bool = False) -> dict:
    """Export a finished run (see the module docstring); returns what was written and checked."""
    if measure_latency and not is_positive_int(threads):
        raise UserError(f"--threads {threads!r} must be an integer >= 1")
    if measure_latency and not is_positive_int(reps):
        raise UserError(f"--reps {reps!r} must be an integer >= 1")
    run, out = check_request(run, fmt, out, measure_latency, keep_bias)
    with output_lock(lock_target(out)):
        check_ours(out)  # again under the lock: another writer may have finished meanwhile
        model, config = load_run(run)
        if fmt == "dense":
            return dict(export_dense(model, config, run, out, keep_bias), out=str(out))
        return dict(export_onnx(model, config, run, out, measure_latency, threads, reps), out=str(out))
