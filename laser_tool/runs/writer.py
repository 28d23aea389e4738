"""Writing a new run directory whole: built in a hidden temp directory, then renamed into place, so a
run directory appears complete or not at all (post-hoc reductions write this way)."""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_write_bytes, atomic_write_json, check_output_dir, dir_mode
from .checkpoint import save_model
from .schema import CONFIG, FINAL, MODEL, config_path, write_config, write_final


def run_root(run: Path):
    """The run directory holding `run` (itself, or a checkpoint file's folder if that is a run)."""
    if run.is_dir():
        return run
    return run.parent if config_path(run.parent).is_file() else None


def default_out(run: Path, tag: str, args: dict) -> Path:
    """Sibling directory RUN-<tag>-<method>-<hash of the arguments>: one request, one place."""
    h = hashlib.sha1(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = run_root(run) or run.with_suffix("")
    return base.parent / f"{base.name}-{tag}-{args.get('method', 'svd')}-{h}"


def check_out(out: Path, run: Path) -> Path:
    """The new run's place: not inside the input, not existing yet, writable, not too long."""
    return check_output_dir(out, inputs=[run_root(run) or run])


def write_run(out: Path, files: dict, model, config: dict) -> None:
    """Build the run in a hidden temp directory, then rename it into place: no half-written runs.
    `files`: {schema file name: a JSON object, or bytes written as they are}; its final.json (a schema
    Final) is written last, with the digests of the files it summarises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes 0700; a run directory gets the user's umask
        save_model(tmp / MODEL, model, config)
        write_config(tmp, config)
        for name, obj in files.items():  # bytes are written as they are (predictions.safetensors)
            if name not in (CONFIG, FINAL):
                atomic_write_bytes(tmp / name, obj) if isinstance(obj, bytes) else atomic_write_json(tmp / name, obj)
        if FINAL in files:
            write_final(tmp, files[FINAL])
        try:
            os.rename(tmp, out)
        except OSError as e:
            raise UserError(f"cannot move the new run into {out} ({e.strerror or e}); another command wrote "
                            f"there meanwhile? pick another --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
