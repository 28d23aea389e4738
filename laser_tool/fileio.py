"""Atomic file writes: write to a temp file in the same folder, fsync, then rename.

A crash at any point leaves either the old file or the new one, never a torn file. Temp files are
named `.NAME.XXXXXXXX.tmp`; `remove_debris` clears those a killed writer left behind. Files get the
user's umask (mkstemp alone would make them 0600). `deferred_commit()` groups several writes so that
they land together: every file is written to its temp first, and only when all of them are on disk
are they renamed into place, so a full disk leaves the previous set whole and consistent.

`check_output_file` / `check_output_dir` vet an output path before any work is done: never inside
an input, never a device, directory or symlink where a file is meant, and writable.

`safetensors_header` is the one parser of a safetensors file's header (checkpoints, resume points,
predictions and the folder-dataset cache all read theirs through it).
"""
import contextlib
import errno
import json
import os
import re
import shutil
import stat
import struct
import tempfile
from pathlib import Path

from .errors import UserError

# Write failures the user can fix; anything else (a bug, a simulated crash) propagates unchanged.
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
               errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
_pending = None  # list of (tmp, path) while a deferred_commit() is open


def umask() -> int:
    """The process umask, read from /proc without changing it where possible."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new file, as open() would make it: 0o666 minus the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new directory, as mkdir would make it: 0o777 minus the umask."""
    return 0o777 & ~umask()


def write_error(path, e: OSError, size: int = None) -> UserError:
    """One line for a write that failed for a reason the user can fix."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(Path(path).parent).free:,} bytes free there"
        except OSError:
            free = "free space unknown"
        need = f"{size:,} bytes needed for it" if size is not None else "size unknown"
        return UserError(f"no space left writing {path} ({need}, {free}); the files written before are kept "
                         f"and agree with each other: free some space and run the same command again")
    return UserError(f"cannot write {path}: {e.strerror or e}; pick a writable place")


def _refuse_special(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise write_error(path, e) from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else \
            "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise UserError(f"{path} is {what}; laser-tool writes only regular files, pick another path")


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    _refuse_special(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if _pending is not None:
            _pending.append((tmp, path))
            return
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in USER_ERRNOS:
            raise write_error(path, e, len(data)) from None
        raise


@contextlib.contextmanager
def deferred_commit():
    """Writes inside land together at the end, in the order they were made (see module docstring)."""
    global _pending
    if _pending is not None:  # nested: the outer group commits
        yield
        return
    _pending = []
    try:
        yield
        for tmp, path in _pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in _pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _pending = None


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def safetensors_header(source) -> dict:
    """The JSON header of a safetensors file, given its path (only the header is read) or its bytes:
    {tensor name: {dtype, shape, data_offsets}} plus "__metadata__" ({str: str}) where the writer gave
    one. ValueError (OSError for an unreadable path) when it is not a safetensors header."""
    if isinstance(source, (bytes, bytearray)):
        return _parse_header(source[:8], lambda n: source[8:8 + n], len(source))
    with open(source, "rb") as f:
        return _parse_header(f.read(8), f.read, os.fstat(f.fileno()).st_size)


def _parse_header(head: bytes, read, size: int) -> dict:
    """A safetensors file starts with its header's length (8 bytes, little-endian), then the header."""
    if len(head) < 8:
        raise ValueError(f"{len(head)} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise ValueError(f"header length {n} exceeds the file size {size}")
    header = json.loads(read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


# ---------------------------------------------------------------------------------------------
# Debris of killed writers


# mkstemp/mkdtemp put 8 characters of [a-z0-9_] between our prefix and suffix.
_TMP_FILE = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")
_TMP_DIR = re.compile(r"\.(.+)\.(?:tmp|old)-[a-z0-9_]{8}")


def is_debris(p: Path, names=None) -> bool:
    """A temp file of atomic_write_bytes (`.NAME.XXXXXXXX.tmp`) or a temp run directory of
    reduce.write_run / an interrupted --overwrite (`.NAME.tmp-XXXXXXXX`, `.NAME.old-XXXXXXXX`).
    With `names`, only debris of those names counts."""
    if p.is_symlink():
        return False
    m = _TMP_FILE.fullmatch(p.name) if p.is_file() else _TMP_DIR.fullmatch(p.name) if p.is_dir() else None
    return m is not None and (names is None or m.group(1) in names)


def remove_debris(folder, names=None) -> list:
    """Remove what killed writers left in `folder` (see is_debris); returns the removed paths.
    Call it only while holding the lock on what is written there."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_debris(p, names):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# Vetting output paths before the work


def _resolved(path: Path) -> Path:
    """path.resolve(), with a symbolic link loop (RuntimeError before Python 3.13, OSError after) one line."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as e:
        raise UserError(f"{path} cannot be resolved ({e}); fix the symbolic links on its way or pick another path") from None


def inside(path: Path, inputs) -> Path:
    """The input `path` lies in (or is), or None."""
    rp = _resolved(path)
    for i in inputs:
        if i is None:
            continue
        ri = _resolved(Path(i))
        if rp == ri or (ri.is_dir() and ri in rp.parents):
            return Path(i)
    return None


def check_path_length(path: Path, what: str) -> None:
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise UserError(f"{what} {path}: the path is too long (4096 bytes at most); pick a shorter one")
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise UserError(f"{what} {path}: the name {part[:40]}... is longer than 255 bytes; pick a shorter one")


def check_writable_dir(folder: Path, what: str) -> None:
    """The nearest existing ancestor of `folder` is a directory we can create files in."""
    p = Path(folder).absolute()
    while not p.exists() and not p.is_symlink():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{what}: {p} is not a directory; pick another place")
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".laser-tool-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what}: cannot write in {p} ({e.strerror or e}); pick a writable place") from None


def check_output_file(path, inputs=(), what="--out", replace=False, ours=None) -> Path:
    """Refuse an output file path before any work: inside an input run, an existing non-regular
    file (device, directory, symlink), too long, or in a place we cannot write; and an existing file
    unless `replace` (the command's --overwrite) or `ours(path)` says laser-tool wrote it (a command
    without --overwrite gives `ours`: what it wrote before, it may write again)."""
    path = Path(path)
    check_path_length(path, what)
    hit = inside(path, inputs)
    if hit is not None:
        raise UserError(f"{what} {path} is inside the input {hit}; inputs are never modified, pick another path")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a directory" if path.is_dir() and not path.is_symlink() else \
            "a symbolic link" if path.is_symlink() else "not a regular file"
        raise UserError(f"{what} {path} is {kind}; give the path of a regular file to write")
    if not replace and path.exists() and not (ours is not None and ours(path)):
        if ours is not None:
            raise UserError(f"{what} {path} exists and was not written by laser-tool; it is never overwritten: "
                            f"pick another path or remove it yourself")
        raise UserError(f"{what} {path} already exists and may not be laser-tool's; pass --overwrite to replace "
                        f"it, or pick another path")
    check_writable_dir(path.parent, what)
    return path


def check_output_dir(path, inputs=(), what="--out") -> Path:
    """Refuse an output directory path before any work (it must not exist yet: runs are new)."""
    path = Path(path)
    check_path_length(path, what)
    hit = inside(path, inputs)
    if hit is not None:
        raise UserError(f"{what} {path} is inside the input run {hit}; the input is never modified, pick another place")
    if path.is_symlink() or path.exists():
        raise UserError(f"{path} already exists; pass another --out or remove it")
    check_writable_dir(path.parent, what)
    return path
