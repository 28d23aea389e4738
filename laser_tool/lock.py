"""One writer per output: an exclusive lock beside the directory a command writes.

    with output_lock(run_dir):      # PARENT/.NAME.lock, holding "pid host" of the writer
        ...write run_dir...

The lock is an flock on PARENT/.NAME.lock (beside, not inside, so `--overwrite` can delete the
directory and a reduction can lock a directory that does not exist yet). The kernel drops an flock
when its process dies, even by kill -9, so a lock file left by a dead writer on this host is taken
over (with a message). A lock file left on another host cannot be checked from here: it is refused
with the command that removes it, unless it records this very Slurm job (SLURM_JOB_ID), i.e. a
requeued job whose earlier run died with its node. A second live writer gets one line and no work is done.
`holder(target)` tells another process who holds a lock right now (`study --status`).
"""
import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError


_made = {}  # fd -> folders acquire() created


def lock_path(target) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _holder(text: str):
    """(pid, host) recorded in a lock file, or (None, None)."""
    parts = text.split()
    try:
        return int(parts[0]), parts[1]
    except (IndexError, ValueError):
        return None, None


def _slurm_job(text: str):
    """The Slurm job id a lock file records ("job=ID"), or None."""
    return next((p[4:] for p in text.split() if p.startswith("job=")), None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(target, path, pid, where, since) -> str:
    who = f"process {pid} on {where}" if pid else "another process"
    return f"{target} is being written by {who} (lock {path}); wait for it to finish or stop it, then run again"


def _since(text: str):
    return next((p[6:] for p in text.split() if p.startswith("since=")), None)


def holder(target):
    """{pid, host, since} of the live process holding `target`'s lock, or None when nobody holds it."""
    try:
        fd = os.open(lock_path(target), os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        text = os.pread(fd, 200, 0).decode(errors="replace")
        pid, where = _holder(text)
        return {"pid": pid, "host": where, "since": _since(text)}
    finally:
        os.close(fd)


def acquire(target, log=lambda s: print(s, file=sys.stderr), busy=_busy) -> int:
    """Take the lock for writing `target`; returns the open file descriptor (pass it to release).
    `busy(target, lock file, pid, host, since)` words the refusal when a live process holds it."""
    path, host = lock_path(target), socket.gethostname()
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        kind = "a symbolic link" if target.is_symlink() else "a file"
        raise UserError(f"{target} is {kind}, not a directory laser-tool can write; pick another output")
    made = []  # folders made for the lock, removed again at release if still empty
    p = path.parent.absolute()
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path.parent} ({e.strerror or e}); pick a writable place") from None
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock file {path} ({e.strerror or e}); pick a writable place") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 200, 0).decode(errors="replace")
            os.close(fd)
            pid, where = _holder(text)
            raise UserError(busy(target, path, pid, where, _since(text))) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released and unlinked it while we opened it: take the new file
            os.close(fd)
            continue
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:  # a writer died without releasing
            pid, where = _holder(text)
            job = os.environ.get("SLURM_JOB_ID")
            if where is not None and where != host and job and _slurm_job(text) == job:
                log(f"note: taking over the lock {path} of this Slurm job's earlier run on {where} (requeued)")
            elif where is not None and where != host:
                os.close(fd)
                raise UserError(f"{target} is locked by process {pid} on host {where} ({path}); if that "
                                f"process is gone, delete {path} and run again")
            elif pid is not None and pid != os.getpid() and _alive(pid):
                log(f"note: lock {path} names process {pid}, which no longer holds it; taking it over")
            else:
                log(f"note: taking over the stale lock {path} of process {pid} (no longer running)")
        os.ftruncate(fd, 0)
        job = os.environ.get("SLURM_JOB_ID")
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.pwrite(fd, f"{os.getpid()} {host}{f' job={job}' if job else ''} since={since}\n".encode(), 0)
        os.fsync(fd)
        _made[fd] = made
        return fd
    raise UserError(f"could not take the lock {path}: it keeps changing; is another writer starting?")


def release(target, fd: int) -> None:
    """Unlink then unlock: a waiter that opened the old file notices (inode check) and retries.
    Folders made only to hold the lock go again if the command left nothing in them (a failed
    command leaves no empty --out behind)."""
    made = _made.pop(fd, [])
    try:
        os.unlink(lock_path(target))
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def output_lock(target, log=lambda s: print(s, file=sys.stderr), busy=_busy):
    fd = acquire(target, log, busy)
    try:
        yield
    finally:
        release(target, fd)
