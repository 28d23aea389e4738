"""`study --jobs N` on this machine: the serial loop, and the scheduler that keeps up to N steps
running at once, in spawned processes (`--launcher process`) or as submitit local jobs (`--launcher
local`). A reduce or heal step starts once its parent run has finished; each worker gets its own
GPU(s) on CUDA and --threads torch threads on the CPU (base.py has the shared parts).
"""
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait

import torch

from ..errors import UserError
from ..models import trust
from ..runs.reader import finished_run
from ..signals import Interrupted, StopFlag
from .base import STUDY_SIGNALS, Outcome, StepJob, child, gpus_for_slot, last_error, run_step, set_threads
from .table import Table


def run_serial(steps, runs, launch, device, data_dir, log) -> Outcome:
    """One step after another in this process (a Ctrl-C or SIGTERM reaches the trainer directly)."""
    res, splits_cache, n0 = Outcome(on_done=launch.on_done), {}, torch.get_num_threads()
    set_threads(launch.threads)
    try:
        with StopFlag(STUDY_SIGNALS) as stop:  # a signal between trainings (e.g. in a reduction) stops here
            for i, st in enumerate(steps, 1):
                if stop.set:
                    raise Interrupted(stop.signum, "study interrupted")
                run = runs / st.name
                tag = f"[{i}/{len(steps)}] {st.kind:<6} {st.name}"
                done = finished_run(run)
                if done is not None:
                    log(f"{tag}: already complete (test acc {done.acc:.4f}), skipped")
                    continue
                if st.parent and finished_run(runs / st.parent) is None:
                    log(f"{tag}: skipped, {st.parent} did not finish")
                    res.failed.append(st.name)
                    continue
                t0 = time.time()
                siblings = [g for g in steps if st.group and g.group == st.group and g is not st
                            and finished_run(runs / g.name) is None]
                try:
                    run_step(st, runs, device, data_dir, splits_cache, siblings)
                except UserError as e:
                    log(f"{tag}: FAILED: {e}")
                    res.failed.append(st.name)
                    continue
                res.finished(st.name)
                log(f"{tag}: done, test acc {finished_run(run).acc:.4f} ({time.time() - t0:.0f} s)")
            if stop.set:
                raise Interrupted(stop.signum, "study interrupted")
    finally:
        torch.set_num_threads(n0)
    return res


class Processes:
    """Each step in a fresh spawned process (nothing shared: not the RNG, not torch's thread pool)."""

    def __init__(self, out, launch, device, data_dir):
        self.ctx = multiprocessing.get_context("spawn")
        self.out, self.launch, self.device, self.data_dir = out, launch, device, data_dir

    def start(self, st, slot):
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cuda = gpus_for_slot(slot, self.launch) if self.device != "cpu" else None
        p = self.ctx.Process(target=child, name=st.name, args=(st, self.out / "runs", self.device, self.data_dir,
                                                                self.launch.threads, cuda, logs / f"{st.name}.log",
                                                                os.getpid(), trust.granted()))
        p.start()
        return p

    def wait(self, handles, timeout):
        wait([h.sentinel for h in handles], timeout)

    def result(self, p):
        """None while running; else (status, message)."""
        if p.is_alive():
            return None
        p.join()
        if p.exitcode == 0:
            return "done", ""
        if p.exitcode < 0:
            return "interrupted", f"killed by {signal.Signals(-p.exitcode).name}; its last resume point, if any, is kept"
        if p.exitcode > 128:
            return "interrupted", f"exit {p.exitcode}; its resume point is saved"
        log = self.out / "logs" / f"{p.name}.log"
        if not log.exists():
            return "failed", f"its process exited ({p.exitcode}) before it began; the error is printed above"
        return "failed", last_error(log)

    def stop(self, p):
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)  # the trainer saves at its next step and exits


class SubmititLocal:
    """Each step a submitit job on this machine (LocalExecutor): the launcher tests' stand-in for Slurm."""

    def __init__(self, out, launch, device, data_dir):
        import submitit
        self.ex = submitit.LocalExecutor(folder=out / "submitit")
        self.runs, self.launch, self.device, self.data_dir = out / "runs", launch, device, data_dir

    def start(self, st, slot):
        gpus = gpus_for_slot(slot, self.launch) if self.device != "cpu" else ""
        vis = tuple(int(g) for g in gpus.split(",")) if gpus else ()
        # LocalExecutor's default time limit is 2 minutes; a run takes what it takes unless --time says
        self.ex.update_parameters(timeout_min=self.launch.slurm.get("time") or 60 * 24 * 365,
                                  gpus_per_node=len(vis), visible_gpus=vis)
        job = self.ex.submit(StepJob(st, self.runs, self.device, self.data_dir, self.launch.threads))
        job.step_name = st.name
        return job

    def wait(self, handles, timeout):
        time.sleep(timeout)

    def result(self, job):
        if not job.done():
            return None
        try:
            r = job.result()
        except Exception as e:  # the job died: its log holds the traceback
            return "failed", (str(e).strip().splitlines() or ["job failed"])[-1][-300:]
        if r["status"] == "interrupted":
            return "interrupted", f"exit {r['exit_code']}; its resume point is saved"
        return r["status"], r.get("error", "")

    def stop(self, job):
        job.cancel()  # SIGINT to the job: the trainer saves at its next step


def run_parallel(steps, runs, launch, backend, log) -> Outcome:
    """Up to --jobs steps at once; a reduce or heal starts once its parent run has finished."""
    res, idx, states = Outcome(on_done=launch.on_done), {st.name: i for i, st in enumerate(steps, 1)}, {}
    table = Table(steps, runs)
    tag = lambda st: f"[{idx[st.name]}/{len(steps)}] {st.kind:<6} {st.name}"

    def say(msg):
        table.forget()
        log(msg)

    todo = []
    for st in steps:
        done = finished_run(runs / st.name)
        if done is None:
            todo.append(st)
        else:
            states[st.name] = ("done", "")
            say(f"{tag(st)}: already complete (test acc {done.acc:.4f}), skipped")
    running, free = {}, list(range(launch.jobs))  # name -> (handle, slot, step, t0)
    with StopFlag(STUDY_SIGNALS, on_stop=lambda: [backend.stop(h) for h, *_ in running.values()]) as stop:
        while (todo and not stop.set) or running:
            for st in list(todo):
                if stop.set or not free:
                    break
                if st.parent and finished_run(runs / st.parent) is None:
                    if st.parent in running or any(t.name == st.parent for t in todo):
                        continue  # waits for its parent
                    say(f"{tag(st)}: skipped, {st.parent} did not finish")
                    res.failed.append(st.name)
                    states[st.name] = ("failed", f"{st.parent} did not finish")
                    todo.remove(st)
                    continue
                slot = free.pop(0)
                running[st.name] = (backend.start(st, slot), slot, st, time.time())
                states[st.name] = ("running", "")
                todo.remove(st)
                say(f"{tag(st)}: started")
            table.draw(states)
            backend.wait([h for h, *_ in running.values()], launch.poll_s)
            for name, (h, slot, st, t0) in list(running.items()):
                r = backend.result(h)
                if r is None:
                    continue
                del running[name]
                free.append(slot)
                status, msg = r
                done = finished_run(runs / name) if status == "done" else None
                if done is not None:
                    res.finished(name)
                    states[name] = ("done", "")
                    say(f"{tag(st)}: done, test acc {done.acc:.4f} ({time.time() - t0:.0f} s)")
                elif status == "interrupted":  # not finished: the study does not exit 0 without it
                    res.failed.append(name)
                    states[name] = ("waiting", "interrupted, resumable")
                    say(f"{tag(st)}: interrupted ({msg})")
                else:
                    res.failed.append(name)
                    states[name] = ("failed", msg)
                    say(f"{tag(st)}: FAILED: {msg}")
        table.draw(states, force=True)
    if stop.set:
        raise Interrupted(stop.signum, "study interrupted")
    return res
