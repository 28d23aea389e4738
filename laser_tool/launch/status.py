"""`study --status`: every step's state from another terminal, read from the run directories, the
study's lock (is an invocation live?) and Slurm's queue."""
import shutil
from pathlib import Path

from .. import lock
from ..runs.reader import finished_run
from .slurm import load_jobs, squeue
from .table import Table, progress


def study_lock_target(out: Path) -> Path:
    """What a study invocation locks (lock file STUDY/.study.lock): one live invocation per study."""
    return Path(out) / "study"


def lock_holder(out: Path):
    """The live invocation holding STUDY's lock ({pid, host, since}), or None."""
    return lock.holder(study_lock_target(out))


def status_lines(steps, out: Path) -> list:
    """`study --status`: every step's row, from the run directories, the study lock and Slurm's queue."""
    runs, holder = out / "runs", lock_holder(out)
    jobs = load_jobs(out)
    active = squeue() if jobs and shutil.which("squeue") else {}
    states = {}
    for st in steps:
        jid = jobs.get(st.name)
        if finished_run(runs / st.name) is not None:
            states[st.name] = ("done", "")
        elif jid in active:
            states[st.name] = ("running" if active[jid] == "RUNNING" else "queued", f"job {jid} {active[jid]}")
        elif jid and active is not None and shutil.which("squeue"):
            states[st.name] = ("failed", f"job {jid} ended without finishing")
        elif progress(runs / st.name) is not None:
            states[st.name] = ("running" if holder else "waiting", "" if holder else "partial, resumable")
        else:
            states[st.name] = ("waiting", "")
    live = (f"live invocation: pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
            if holder is not None else "no live invocation")
    return [f"{out}: {live}"] + Table(steps, runs).lines(states, all_rows=True)
