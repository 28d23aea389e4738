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
(trainers/signals.py); a submitit job then hands over to submitit's own handler, which calls
StepJob.checkpoint() and requeues the job; the requeued job resumes from the saved state.
"""
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .runtable import final_acc

LAUNCHERS = ("process", "local", "slurm")


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
        import shutil
        if not shutil.which("sbatch"):
            raise UserError("--launcher slurm: sbatch is not on PATH; run the study from a Slurm login node")
    if device != "cpu" and launch.launcher != "slurm":
        import torch
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
    from trainers import train as trainer
    from trainers.rundir import remove_run
    from .fileio import remove_debris
    from . import reduce as reducer
    if step.kind in ("train", "heal"):  # healing is training from the reduced run (train --init-from)
        if step.parent and final_acc(runs / step.parent) is None:
            raise UserError(f"{step.parent} did not finish, so {step.name} cannot start")
        trainer.train(step.cfg)
        return
    parent = runs / step.parent
    if final_acc(parent) is None:  # e.g. a Slurm wave whose parent job failed
        raise UserError(f"{step.parent} did not finish, so {step.name} cannot start")
    cache = {} if splits_cache is None else splits_cache
    key = parent.name.rsplit("-s", 1)[-1]  # the seed: its reductions share one split
    if key not in cache:  # one load of the data per seed, shared by its reductions
        cache[key] = reducer.run_data(json.loads((parent / "config.json").read_text()), data_dir)
    group = [step, *siblings]
    for g in group:
        out = runs / g.name
        if out.exists() or out.is_symlink():  # a reduce output appears whole (renamed into place) or not at
            remove_run(out, what="study")       # all; only a directory laser-tool wrote is removed
    remove_debris(runs, {g.name for g in group})  # temp directories of a killed reduce
    reducer.reduce_run_budgets(parent, {g.name: g.selectors for g in group}, method=step.method,
                               store="factored", outs={g.name: runs / g.name for g in group}, device=device,
                               splits=cache[key])


def _set_threads(threads):
    if threads:
        import torch
        torch.set_num_threads(threads)


class StepJob:
    """One step as a submitit job. checkpoint() is submitit's preemption hook: requeue the same step,
    which resumes from its run directory (the trainer saved its state before handing over)."""

    def __init__(self, step, runs, device, data_dir, threads):
        self.step, self.runs, self.device, self.data_dir, self.threads = step, Path(runs), device, data_dir, threads

    def __call__(self):
        from trainers.signals import Interrupted
        _set_threads(self.threads)
        try:
            run_step(self.step, self.runs, self.device, self.data_dir)
        except UserError as e:
            return {"status": "failed", "error": str(e)}
        except Interrupted as e:
            if e.preempted:  # saved: now let submitit's own handler checkpoint and requeue the job
                from submitit.core.job_environment import JobEnvironment
                signal.raise_signal(JobEnvironment._usr_sig())
            return {"status": "interrupted", "exit_code": e.exit_code}
        return {"status": "done", "test_acc": final_acc(self.runs / self.step.name)}

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(StepJob(self.step, self.runs, self.device, self.data_dir,
                                                          self.threads))


def _child(step, runs, device, data_dir, threads, cuda, log_path):
    """A spawned worker: its output goes to the step's log; exit 0 done, 2 failed, 128+n interrupted."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    from trainers.signals import exit_code
    _set_threads(threads)
    try:
        run_step(step, runs, device, data_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as e:
        sys.exit(exit_code(e))


def _last_error(log_path: Path) -> str:
    try:
        lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    errs = [x[7:] for x in lines if x.startswith("error: ")]
    return errs[-1] if errs else (lines[-1][-300:] if lines else f"no output (see {log_path})")


def lock_holder(out: Path):
    """The live invocation holding STUDY's lock ({pid, host, since}), or None."""
    import fcntl
    try:
        fd = os.open(out / ".study.lock", os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except ValueError:
            return {}
    finally:
        os.close(fd)


@contextlib.contextmanager
def study_lock(out: Path):
    """Hold STUDY/.study.lock (an flock, released by the kernel when this process ends, so a killed
    study never leaves a stale lock); it records the holder's pid and host for the refusal message."""
    import fcntl
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".study.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            who = f"pid {h.get('pid')} on host {h.get('host')}, since {h.get('since')}"
        except ValueError:
            who = "holder unknown"
        os.close(fd)
        raise UserError(f"{out} is in use by another live `laser-tool study` ({who}); wait for it to end "
                        f"or stop it, then run again") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


class _Stop:
    """The study process's own Ctrl-C/SIGTERM: start nothing new, let running steps save, exit 130/143."""

    def __init__(self, on_signal):
        self.signum, self._on, self._old = None, on_signal, {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:
                break
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
            return
        self.signum = signum
        self._on()

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


@dataclass
class Outcome:
    failed: list = field(default_factory=list)   # steps that ran and did not finish, or could not start
    work: int = 0                                  # steps finished by this invocation
    pending: list = field(default_factory=list)    # steps left queued on the cluster (not waited for)


def execute(steps, out: Path, launch: Launch, device: str, data_dir=None, log=print) -> Outcome:
    """Run every unfinished step of `steps` (in plan order, parents first) the way `launch` says."""
    if launch.launcher == "slurm":
        from .slurm_launch import run_slurm
        return run_slurm(steps, out, launch, device, data_dir, log)
    from .local_launch import Processes, SubmititLocal, run_parallel, run_serial
    if launch.launcher == "process" and launch.jobs == 1:
        return run_serial(steps, out / "runs", launch, device, data_dir, log)
    backend = (Processes if launch.launcher == "process" else SubmititLocal)(out, launch, device, data_dir)
    return run_parallel(steps, out / "runs", launch, backend, log)
