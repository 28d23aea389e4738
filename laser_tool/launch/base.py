"""Running a study's steps: one after another, N at once on this machine, or as submitit jobs.

Launchers (`study --launcher`):
  process  the default: with --jobs 1 every step runs in this process, one after another; with
           --jobs N up to N steps run at once, each in a fresh (spawned) process with its own log
           in STUDY/logs/NAME.log;
  local    the same through submitit's LocalExecutor (what the tests use for the Slurm path);
  slurm    every step is a Slurm job submitted with submitit: an array per wave (train, reduce,
           heal), each wave depending on the one before (afterany: a failed run fails only its own
           children, which then stop with a clear message).
A step whose parent (the run it reduces or heals) did not finish is not started. Every run lands in
STUDY/runs/NAME, so whatever finished is never redone and an unfinished train run resumes.

Same results at any --jobs: a run's data order, augmentation and dropout depend only on its seed, and
each run is given the same number of torch threads (recorded as `threads` in its config.json and
final.json; CPU results can depend on it). The default is the CPUs divided by --jobs.

Preemption: the trainer turns SIGTERM/SIGUSR1/SIGUSR2 into "save at the next step, then stop"
(laser_tool/signals.py); a submitit job then hands over to submitit's own handler, which calls
StepJob.checkpoint() and requeues the job; the requeued job resumes from the saved state.
"""
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainers import train as trainer
from ..errors import UserError
from ..fileio import remove_debris
from ..posthoc import reduce as reducer, search as searcher
from ..models import trust
from ..runs.reader import finished_run
from ..runs.safety import remove_run
from ..signals import Interrupted, exit_code

LAUNCHERS = ("process", "local", "slurm")
PR_SET_PDEATHSIG = 1  # prctl(2)
STUDY_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the study's own stop signals (its steps handle theirs)


@dataclass
class Launch:
    jobs: int = 1                     # steps at once (Slurm: the array's parallelism)
    launcher: str = "process"
    threads: int = None               # torch threads per run; None: CPUs // jobs (serial: left as is)
    gpus_per_job: int = 1
    jobs_per_gpu: int = None          # several small runs sharing one GPU
    slurm: dict = field(default_factory=dict)  # partition, gpus_per_node, time (minutes), account, ...
    wait: bool = True                 # Slurm: stay and watch until every job ends
    poll_s: float = 1.0
    on_done: object = None            # called with a step's name when this invocation finishes it


def check_launch(launch: Launch, device: str) -> Launch:
    """Validate the launch options (one clear line each) and fill in the thread count."""
    if launch.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launch.launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    for flag, v in (("--jobs", launch.jobs), ("--gpus-per-job", launch.gpus_per_job), ("--jobs-per-gpu", launch.jobs_per_gpu)):
        if v is not None and v < 1:
            raise UserError(f"{flag} {v}: need at least 1")
    if launch.launcher in ("local", "slurm"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(f"--launcher {launch.launcher} needs submitit: pip install submitit") from None
    if launch.launcher == "slurm":
        check_slurm()
    if device != "cpu" and launch.launcher != "slurm":
        gpus = torch.cuda.device_count() if device != "cpu" else 0
        per_gpu = launch.jobs_per_gpu or 1
        if gpus and launch.jobs * launch.gpus_per_job > gpus * per_gpu:
            raise UserError(f"--jobs {launch.jobs} x --gpus-per-job {launch.gpus_per_job} needs more than the "
                            f"{gpus} GPU(s) here; lower --jobs or let runs share GPUs with --jobs-per-gpu K")
    if launch.threads is None and launch.jobs > 1 and launch.launcher != "slurm":  # Slurm: the node's own
        launch.threads = max(1, (os.cpu_count() or 1) // launch.jobs)
    if launch.threads is not None and launch.threads < 1:
        raise UserError(f"--threads {launch.threads}: need at least 1")
    return launch


def check_slurm() -> None:
    """A Slurm client that can reach its cluster: sbatch, srun (submitit needs it) and squeue on PATH, and
    the controller answering squeue; else one line naming what is missing."""
    for tool in ("sbatch", "srun", "squeue"):
        if not shutil.which(tool):
            raise UserError(f"--launcher slurm: {tool} is not on PATH; run the study from a Slurm login node")
    try:
        p = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--launcher slurm: squeue did not answer ({e}); is the Slurm controller reachable?") from None
    if p.returncode:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[0][:200]
        raise UserError(f"--launcher slurm: the Slurm controller is not reachable (squeue: {why}); run the study "
                        f"where Slurm works")


def gpus_for_slot(slot: int, launch: Launch) -> str:
    """CUDA_VISIBLE_DEVICES of the worker in `slot`: its own GPU(s), or a share of one."""
    if launch.jobs_per_gpu:
        return str(slot // launch.jobs_per_gpu)
    g = launch.gpus_per_job
    return ",".join(str(i) for i in range(slot * g, slot * g + g))


def run_step(step, runs: Path, device: str, data_dir=None, splits_cache=None, siblings=()) -> None:
    """Do one step in this process. Modules, not names: tests count calls by patching them.

    `siblings`: other unfinished reduce steps of the step's group (same baseline and method, other
    budgets), done in the same call so they share one decomposition and calibration pass."""
    if step.kind in ("train", "heal"):  # healing is training from the reduced run (train --init-from)
        if step.parent and finished_run(runs / step.parent) is None:
            raise UserError(f"{step.parent} did not finish, so {step.name} cannot start")
        trainer.train(step.cfg)
        return
    parent = runs / step.parent
    finished_parent = finished_run(parent)
    if finished_parent is None:  # e.g. a Slurm wave whose parent job failed
        raise UserError(f"{step.parent} did not finish, so {step.name} cannot start")
    cache = {} if splits_cache is None else splits_cache
    if step.seed not in cache:  # one load of the data per seed, shared by its reductions
        cache[step.seed] = reducer.run_data(finished_parent.config, data_dir)
    group = [step, *siblings]
    for g in group:
        out = runs / g.name
        if out.exists() or out.is_symlink():  # a reduce output appears whole (renamed into place) or not at
            remove_run(out, what="study")       # all; only a directory laser-tool wrote is removed
    remove_debris(runs, {g.name for g in group})  # temp directories of a killed reduce
    outs = {g.name: runs / g.name for g in group}
    if step.search:  # ranks chosen on validation under each budget: `search --apply`, one sweep for the group
        search = searcher.SearchSettings(layers=step.selectors, method=step.method, compose=step.search["compose"],
                                         val_images=step.search["val_images"], criterion=step.search["criterion"],
                                         device=device)
        searcher.search_budgets(parent, {g.name: g.search["budget"] for g in group}, search, apply=True, outs=outs,
                                splits=cache[step.seed], write_reports=False)
        return
    reduction = reducer.ReduceSettings(method=step.method, store="factored", device=device, calibrate=step.calibrate)
    reducer.reduce_run_budgets(parent, {g.name: g.selectors for g in group}, reduction, outs=outs,
                               splits=cache[step.seed])


def set_threads(threads):
    if threads:
        torch.set_num_threads(threads)


class StepJob:
    """One step as a submitit job. checkpoint() is submitit's preemption hook: requeue the same step,
    which resumes from its run directory (the trainer saved its state before handing over)."""

    def __init__(self, step, runs, device, data_dir, threads):
        self.step, self.runs, self.device, self.data_dir, self.threads = step, Path(runs), device, data_dir, threads
        self.trust = trust.granted()   # made in the study's process: its command line's trust goes with the job

    def __call__(self):
        trust.grant(self.trust)
        set_threads(self.threads)
        try:
            run_step(self.step, self.runs, self.device, self.data_dir)
        except UserError as e:
            return {"status": "failed", "error": str(e)}
        except Interrupted as e:
            if e.preempted:  # saved: now let submitit's own handler checkpoint and requeue the job
                from submitit.core.job_environment import JobEnvironment
                signal.raise_signal(JobEnvironment._usr_sig())
            return {"status": "interrupted", "exit_code": e.exit_code}
        done = finished_run(self.runs / self.step.name)
        return {"status": "done", "test_acc": done.acc if done is not None else None}

    def checkpoint(self, *args, **kwargs):
        import submitit
        job = StepJob(self.step, self.runs, self.device, self.data_dir, self.threads)
        job.trust = self.trust
        return submitit.helpers.DelayedSubmission(job)


def die_with(parent: int) -> None:
    """Linux: have the kernel kill this worker the moment the study that started it dies (even by kill -9),
    so no orphan goes on training or holds a run's lock against a rerun."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the study's own signal handling stops its workers
        return
    if os.getppid() != parent:  # the study died before the request took effect
        os._exit(128 + signal.SIGKILL)


def child(step, runs, device, data_dir, threads, cuda, log_path, parent=None, granted=((), False)):
    """A spawned worker: its output goes to the step's log; exit 0 done, 2 failed, 128+n interrupted.
    `granted` is the study's trust (models/trust.py): the factories its command line named."""
    if parent is not None:
        die_with(parent)
    trust.grant(granted)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    set_threads(threads)
    try:
        run_step(step, runs, device, data_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as e:
        sys.exit(exit_code(e))


def last_error(log_path: Path) -> str:
    try:
        lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    errs = [x[7:] for x in lines if x.startswith("error: ")]
    return errs[-1] if errs else (lines[-1][-300:] if lines else f"no output (see {log_path})")


@dataclass
class Outcome:
    failed: list = field(default_factory=list)   # steps that ran and did not finish, or could not start
    work: int = 0                                  # steps finished by this invocation
    pending: list = field(default_factory=list)    # steps left queued on the cluster (not waited for)
    on_done: object = None                         # Launch.on_done

    def finished(self, name: str) -> None:
        """One more step finished by this invocation (the study's journal counts it as it happens)."""
        self.work += 1
        if self.on_done is not None:
            self.on_done(name)
