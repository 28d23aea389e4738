"""The run directory's safety rules: what `--name`, `--overwrite` and `--resume` may do.

- `--name` is one plain path component: no '/', no '.', '..', no absolute path, no control characters,
  at most 255 bytes.
- `--overwrite` deletes only a directory laser-tool wrote: a real directory (never a symlink) whose
  config.json is a laser-tool run config. The directory is first renamed to a hidden `.NAME.old-*`
  and then removed, so a kill halfway leaves debris the next run clears, never a half-deleted run.
- `--resume` needs a run to resume; it keeps the saved settings and names every given setting it
  ignores (see settle_run_dir in trainers/train.py).
"""
import functools
import inspect
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from ..errors import UserError
from ..fileio import check_path_length, check_writable_dir, inside, remove_debris
from ..lock import output_lock
from .reader import read_run
from .schema import config_path, final_path, read_config

# Written into every config.json the trainer makes; runs from before it are recognised by shape.
WRITER = "laser-tool"


def check_name(name: str) -> str:
    """A run name is a single plain directory name."""
    if name is None:
        return name
    bad = (not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name
           or (os.altsep and os.altsep in name) or name.startswith("-"))
    if bad:
        raise UserError(f"--name {name!r} is not a plain directory name (no '/', '.', '..', absolute paths "
                        f"or leading '-'); use --out for the parent folder and --name for the run")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # a newline or escape in a name garbles every listing
        raise UserError(f"--name {name!r} holds a control character (newline, tab, escape); use printable "
                        f"characters only")
    if len(os.fsencode(name)) > 255:
        raise UserError(f"--name is {len(os.fsencode(name))} bytes long; a directory name holds at most 255")
    return name


def is_laser_run(run_dir: Path) -> bool:
    """True for a real directory whose config.json (a regular file) laser-tool wrote."""
    try:
        if not stat.S_ISDIR(os.lstat(run_dir).st_mode):
            return False
        if not stat.S_ISREG(os.lstat(config_path(run_dir)).st_mode):
            return False
    except OSError:
        return False
    d, why = read_config(run_dir)
    if why or not isinstance(d, dict):
        return False
    if d.get("written_by") == WRITER:
        return True
    # Older runs: the trainer's or a reduction's config shape.
    return isinstance(d.get("model"), dict) and (isinstance(d.get("train"), dict) or "reduction" in d)


def remove_run(run_dir: Path, what="--overwrite") -> None:
    """Delete a laser-tool run directory (see module docstring); UserError for anything else."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise UserError(f"{what}: {run_dir} is a symbolic link; laser-tool never deletes through links, "
                        f"remove it yourself or pick another --name")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{what}: {run_dir} is a file, not a run directory; remove it yourself or pick another --name")
    if not is_laser_run(run_dir):
        if config_path(run_dir).exists() or any(run_dir.iterdir()):
            raise UserError(f"{what}: {run_dir} is not a laser-tool run (its config.json was not written by "
                            f"laser-tool), so it is not deleted; remove it yourself or pick another --name")
        run_dir.rmdir()  # an empty directory: nothing of anyone's to lose
        return
    trash = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.old-"))
    os.rename(run_dir, trash / "run")
    shutil.rmtree(trash)


def prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Checks before any data is read; call with the lock held. Creates run_dir, clears debris."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if run_dir.is_symlink():
        raise UserError(f"{run_dir} is a symbolic link; laser-tool writes runs only into real directories")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; pick another --name or --out")
    remove_debris(run_dir.parent, {run_dir.name})
    if resume and not config_path(run_dir).is_file():
        raise UserError(f"--resume: there is no run at {run_dir} to resume; drop --resume to start it")
    if overwrite:
        remove_run(run_dir)
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not config_path(run_dir).exists():
        stray = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]
        if stray:
            raise UserError(f"{run_dir} exists and is not a laser-tool run (it holds {', '.join(sorted(stray)[:3])}); "
                            f"pick another --name or --out")
    check_writable_dir(run_dir, "--out")  # created by the first write, once the data has loaded
    remove_debris(run_dir)


def finished(run_dir: Path) -> bool:
    """The run reader says complete. A final.json that does not vouch for the files beside it is refused;
    anything else with a final.json (torn, not complete) is recomputed from the saved state."""
    run = read_run(run_dir)
    if run.status == "complete":
        return True
    if run.status == "mismatch":  # its files are not the ones it vouches for: nothing to recompute from
        raise UserError(f"{run_dir}: {run.reason}")
    if final_path(run_dir).exists():
        print(f"warning: {final_path(run_dir)} is unreadable or not complete ({run.reason}); recomputing it "
              f"from the saved state", file=sys.stderr)
    return False


def guarded(run_dir_of):
    """Decorator for train(cfg, resume=..., overwrite=...): validate the settings and the name, take
    the run directory's lock (rank 0 of a DDP job) and `prepare` it, all before the body reads data."""
    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(cfg, *args, **kwargs):
            bound = sig.bind(cfg, *args, **kwargs)
            bound.apply_defaults()
            cfg.validate()
            check_name(cfg.name)
            run_dir = run_dir_of(cfg)
            check_path_length(run_dir, "--out/--name")
            source = inside(run_dir, [cfg.init_from]) if cfg.init_from else None
            if source is not None:
                raise UserError(f"--out/--name {run_dir} is inside the --init-from run {source}; the run a "
                                f"training starts from is never written into: pick another --out")
            if cfg.tensorboard:  # before any work, not after the data is loaded
                check_writable_dir(run_dir / "tb", "--tensorboard (RUN/tb)")
            if int(os.environ.get("RANK", "0")) != 0:
                return fn(cfg, *args, **kwargs)
            with output_lock(run_dir):
                prepare(run_dir, bool(bound.arguments.get("resume")), bool(bound.arguments.get("overwrite")))
                return fn(cfg, *args, **kwargs)
        return wrapper
    return deco
