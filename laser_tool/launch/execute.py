"""Run every unfinished step of a study the way its `Launch` says: serially in this process, N at once
on this machine (spawned processes or submitit's local executor), or as Slurm jobs."""
from pathlib import Path

from .base import Launch, Outcome
from .local import Processes, SubmititLocal, run_parallel, run_serial
from .slurm import run_slurm


def execute(steps, out: Path, launch: Launch, device: str, data_dir=None, log=print) -> Outcome:
    """Run every unfinished step of `steps` (in plan order, parents first) the way `launch` says."""
    if launch.launcher == "slurm":
        return run_slurm(steps, out, launch, device, data_dir, log)
    if launch.launcher == "process" and launch.jobs == 1:
        return run_serial(steps, out / "runs", launch, device, data_dir, log)
    backend = (Processes if launch.launcher == "process" else SubmititLocal)(out, launch, device, data_dir)
    return run_parallel(steps, out / "runs", launch, backend, log)
