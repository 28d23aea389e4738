"""STUDY/study.json: every invocation of a study, logged when it starts and kept up to date as its steps
finish, so the report's wall time and run counts stay true when an invocation is killed (a killed one
counts until the last moment it was seen, with the runs it had finished by then)."""
import json
import os
import time
from pathlib import Path

from ..fileio import atomic_write_json

FILE = "study.json"


def read(out: Path) -> list:
    try:
        calls = json.loads((Path(out) / FILE).read_text())["invocations"]
        return calls if isinstance(calls, list) else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write(out: Path, calls: list) -> None:
    atomic_write_json(Path(out) / FILE, {"invocations": calls})


def start(out: Path, request: dict) -> int:
    """Log this invocation as started; returns its index."""
    calls = read(out)
    now = time.time()
    calls.append(dict(started=time.strftime("%Y-%m-%d %H:%M:%S"), t0=now, last_seen=now, pid=os.getpid(),
                      finished=None, seconds=None, runs_made=0, request=request))
    _write(out, calls)
    return len(calls) - 1


def update(out: Path, index: int, more_runs: int = 0, **changes) -> None:
    """Mark this invocation seen now, with `changes`, and `more_runs` more runs made."""
    calls = read(out)
    if 0 <= index < len(calls):
        c = calls[index]
        c.update(last_seen=time.time(), runs_made=int(c.get("runs_made") or 0) + more_runs)
        c.update(changes)
        _write(out, calls)


def step_done(out: Path, index: int) -> None:
    """One more run made by this invocation."""
    update(out, index, more_runs=1)


def end(out: Path, index: int, seconds: float, work: int) -> None:
    update(out, index, finished=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(seconds, 1), runs_made=work)


def totals(calls: list) -> dict:
    """Wall seconds over every invocation (a killed one: until it was last seen), how many were
    interrupted, and the runs they made."""
    def seconds(c):
        if isinstance(c.get("seconds"), (int, float)):
            return c["seconds"]
        t0, seen = c.get("t0"), c.get("last_seen")
        return max(0.0, seen - t0) if isinstance(t0, (int, float)) and isinstance(seen, (int, float)) else 0.0
    return dict(seconds=sum(seconds(c) for c in calls), invocations=len(calls),
                interrupted=sum(c.get("finished", "") is None for c in calls),
                runs_made=sum(int(c.get("runs_made") or 0) for c in calls))
