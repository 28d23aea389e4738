"""A study's report: STUDY/report.md (the answer, the table, the plot, the commands), results.json,
plot.png, and study.json (every invocation with its wall time and the runs it made)."""
import json
import os
import platform
import time
from pathlib import Path

import torch

from ..analysis.answer import markdown as answer_markdown
from ..analysis.compare import compare_runs
from ..analysis.plot import plot
from ..analysis.render import markdown, to_json
from ..device import resolve_device
from ..fileio import atomic_write_json, atomic_write_text


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log_invocation(out: Path, seconds: float, work: int) -> list:
    """Append this invocation to STUDY/study.json; returns them all (a resumed study's wall time is
    the sum over its invocations, so one number alone would understate or overstate it)."""
    f = out / "study.json"
    try:
        runs = json.loads(f.read_text())["invocations"]
    except (OSError, ValueError, KeyError, TypeError):
        runs = []
    runs.append(dict(finished=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(seconds, 1), runs_made=work))
    atomic_write_json(f, {"invocations": runs})
    return runs


def write_report(out: Path, preset: str, seeds: int, steps: list, notes: list, device: str, t_start: float,
                 work: int = 0) -> Path:
    """STUDY/report.md (+ plot.png, results.json, study.json) from the runs under STUDY/runs."""
    dev = str(resolve_device(device))
    result = compare_runs([out / "runs"], speed=True, device=dev, speed_batch=256, speed_reps=10)
    result.notes += notes
    plot(result.rows, out / "plot.png", title=f"study {preset}")
    atomic_write_text(out / "results.json", to_json(result))
    wall = time.time() - t_start  # this invocation, the report's own timing passes included
    calls = log_invocation(out, wall, work)
    total = sum(c["seconds"] for c in calls)
    gpu = f", {torch.cuda.get_device_name()}" if dev.startswith("cuda") else ""
    head = [f"# Study `{preset}`: {seeds} seed(s)", "",
            f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu}; "
            f"torch {torch.__version__}. Inference images/s: forward passes of a batch of 256 on {dev} "
            f"(median of 10).",
            f"Wall time: {total / 60:.1f} min over {len(calls)} invocation(s) of `laser-tool study` "
            f"(this one {wall / 60:.1f} min, {work} run(s) made; the rest were found finished).",
            ""]
    found = answer_markdown(result.rows)
    if found:
        head += ["## The answer: which way of slimming loses least at each budget", "", found]
    head += ["![test accuracy vs parameters kept and vs training FLOPs](plot.png)", "", "## All rows", ""]
    text = "\n".join(head) + markdown(result, commands={s.name: [s.command] for s in steps})
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
