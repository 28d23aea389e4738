"""The state of a study's steps, read from their run directories, and the table that shows it.

A step is done when the run reader says its run is complete; a train step that has begun holds metrics.jsonl (one
line per finished epoch) and config.json (its epoch count), which give its progress and an ETA.
The runner adds what only it knows (running, waiting, failed, a Slurm job id); `study --status`
reads the same files from another terminal.
"""
import sys
import time
from pathlib import Path

from ..runs.reader import finished_run
from ..runs.schema import metrics_path, read_config, read_metrics


def progress(run: Path):
    """(epochs done, epochs planned, seconds per epoch) of a train run that has begun, else None."""
    config, why = read_config(run)
    rows, problem = read_metrics(run)
    if why or problem or not metrics_path(run).exists():
        return None
    try:
        epochs = config["train"]["epochs"]
    except (KeyError, TypeError):
        return None
    secs = [r.seconds if r.seconds is not None else 0.0 for r in rows]
    return len(rows), epochs, (sum(secs) / len(secs) if secs else None)


def _minutes(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{max(s, 0) / 60:.1f} min"


def row_detail(state: str, run: Path, extra: str = "") -> str:
    """One row's detail: accuracy when done, epoch and ETA while running."""
    if state == "done":
        done = finished_run(run)
        return f"test acc {done.acc:.4f}" if done is not None else ""
    p = progress(run)
    if p is None:
        return extra
    done, total, per = p
    eta = f", ETA {_minutes(per * (total - done))}" if per and state == "running" else ""
    return f"epoch {done}/{total}{eta}" + (f" ({extra})" if extra else "")


class Table:
    """Rows: done, running (epoch, ETA), waiting, failed. On a TTY it redraws in place; elsewhere
    the runner's plain log lines are the record and render() is printed only on request."""

    ORDER = ("running", "queued", "waiting", "failed", "done")

    def __init__(self, steps, runs: Path, stream=None):
        self.steps, self.runs = steps, runs
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._drawn, self._last = 0, 0.0

    def lines(self, states: dict, all_rows=False) -> list:
        """states: {step name: (state, extra)}; steps absent from it count as waiting."""
        counts = {k: 0 for k in self.ORDER}
        rows = []
        for st in self.steps:
            state, extra = states.get(st.name, ("waiting", ""))
            counts[state] = counts.get(state, 0) + 1
            if all_rows or state in ("running", "queued", "failed"):
                rows.append((self.ORDER.index(state) if state in self.ORDER else 9, st.kind, st.name, state,
                             row_detail(state, self.runs / st.name, extra)))
        head = "  ".join(f"{k} {counts[k]}" for k in self.ORDER)
        width = max([len(r[2]) for r in rows] + [4])
        return [f"study: {head}"] + [f"  {s:<8} {k:<6} {n:<{width}}  {d}".rstrip()
                                     for _, k, n, s, d in sorted(rows, key=lambda r: r[0])]

    def draw(self, states: dict, force=False) -> None:
        """Redraw in place on a TTY (at most once a second unless forced)."""
        if not self.live or (not force and time.time() - self._last < 1.0):
            return
        out = self.lines(states)
        erase = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.stream.write(erase + "\n".join(out) + "\n")
        self.stream.flush()
        self._drawn, self._last = len(out), time.time()

    def forget(self) -> None:
        """Erase the table (on a TTY) so a log line takes its place; the next draw puts it back below."""
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self.stream.flush()
        self._drawn, self._last = 0, 0.0
