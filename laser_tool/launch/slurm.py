"""`study --launcher slurm`: every unfinished step becomes a Slurm job, submitted with submitit.

One job array per wave (train, then reduce, then heal); each wave depends on the previous one with
`afterany` (so one failed run does not cancel the others: its own reductions stop with a clear
message). The job ids go to STUDY/slurm_jobs.json, so a second invocation finds jobs still queued or
running (squeue) and neither resubmits nor loses them. Without --no-wait the command stays, shows the
table and writes the report when every job has ended; with it, it returns at once and `study
--status` shows the state; running `study` again when all are done writes the report.
"""
import json
import subprocess
import time
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_write_json
from ..runs.reader import finished_run
from ..signals import StopFlag
from .base import STUDY_SIGNALS, Outcome, StepJob
from .table import Table

WAVES = ("train", "reduce", "heal")


def squeue() -> dict:
    """{job id: state} of the jobs the cluster knows now (array tasks one by one)."""
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"squeue failed ({e}); is Slurm reachable from here?") from None
    if p.returncode:
        raise UserError(f"squeue failed: {p.stderr.strip()[:200]}")
    return dict(line.split()[:2] for line in p.stdout.splitlines() if len(line.split()) >= 2)


def load_jobs(out: Path) -> dict:
    try:
        return json.loads((out / "slurm_jobs.json").read_text())
    except (OSError, ValueError):
        return {}


def slurm_parameters(launch) -> dict:
    """submitit AutoExecutor parameters from the study's --partition/--time/... options."""
    s = launch.slurm
    p = dict(timeout_min=int(s.get("time") or 60 * 24), nodes=1, tasks_per_node=1, name="laser-study",
             slurm_array_parallelism=launch.jobs)
    if launch.threads:
        p["cpus_per_task"] = launch.threads
    if s.get("gpus_per_node"):
        p["gpus_per_node"] = s["gpus_per_node"]
    for k in ("partition", "account", "qos", "constraint"):
        if s.get(k):
            p[f"slurm_{k}"] = s[k]
    return p


def _log_error(out: Path, job_id: str) -> str:
    """The last `error:` line (or last line) of a job's stderr in STUDY/submitit."""
    for f in sorted((out / "submitit").glob(f"{job_id}_*_log.err")):
        lines = [x for x in f.read_text(errors="replace").splitlines() if x.strip()]
        errs = [x for x in lines if "Error" in x or x.startswith("error")]
        return (errs or lines or ["no output"])[-1][-300:]
    return f"job {job_id} ended without finishing (see {out / 'submitit'})"


def submit(todo, queued: dict, known: dict, out: Path, launch, device, data_dir, log) -> None:
    """Submit the unfinished steps not already queued: one job array per wave, each depending on the
    waves before it; `queued` and `known` (and STUDY/slurm_jobs.json) get the new job ids."""
    import submitit
    runs = out / "runs"
    try:
        ex = submitit.AutoExecutor(folder=out / "submitit", cluster="slurm")
        prev = sorted({jid.split("_")[0] for jid in queued.values()})
        for kind in WAVES:
            wave = [st for st in todo if st.kind == kind and st.name not in queued]
            if not wave:
                continue
            deps = {"dependency": "afterany:" + ":".join(prev)} if prev else {}
            ex.update_parameters(**slurm_parameters(launch), slurm_additional_parameters=deps)
            with ex.batch():
                jobs = [ex.submit(StepJob(st, runs, device, data_dir, launch.threads)) for st in wave]
            for st, j in zip(wave, jobs):
                known[st.name] = queued[st.name] = j.job_id
            array = jobs[0].job_id.split("_")[0]
            prev = sorted(set(prev) | {array})
            log(f"submitted {len(wave)} {kind} step(s) as Slurm job array {array}"
                + (f" ({deps['dependency']})" if deps else ""))
            atomic_write_json(out / "slurm_jobs.json", known)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:  # submitit's failures are RuntimeErrors
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--launcher slurm: submitting the study's jobs failed ({why}); check that sbatch works "
                        f"here and the cluster accepts the --partition/--account/--time given") from None


def run_slurm(steps, out: Path, launch, device, data_dir, log) -> Outcome:
    runs, res = out / "runs", Outcome(on_done=launch.on_done)
    known, active = load_jobs(out), squeue()
    done = {st.name: finished_run(runs / st.name) for st in steps}
    todo = [st for st in steps if done[st.name] is None]
    for st in steps:
        if st not in todo:
            log(f"{st.kind:<6} {st.name}: already complete (test acc {done[st.name].acc:.4f}), skipped")
    queued = {st.name: known[st.name] for st in todo if known.get(st.name) in active}
    for name, jid in queued.items():
        log(f"{name}: still in Slurm as job {jid} ({active[jid]}), not resubmitted")
    submit(todo, queued, known, out, launch, device, data_dir, log)
    if not launch.wait:
        res.pending = list(queued)
        return res
    table = Table(steps, runs)
    with StopFlag(STUDY_SIGNALS) as stop:  # the jobs live on the cluster: a Ctrl-C here only stops watching
        while queued and not stop.set:
            active = squeue()
            states = {st.name: ("done", "") for st in steps if st not in todo}
            for name, jid in list(queued.items()):
                if jid in active:
                    states[name] = ("running" if active[jid] == "RUNNING" else "queued", f"job {jid} {active[jid]}")
                    continue
                del queued[name]
                finished = finished_run(runs / name)
                if finished is not None:
                    res.finished(name)
                    states[name] = ("done", "")
                    table.forget()
                    log(f"{name}: done (job {jid}), test acc {finished.acc:.4f}")
                else:
                    res.failed.append(name)
                    states[name] = ("failed", f"job {jid}")
                    table.forget()
                    log(f"{name}: FAILED (job {jid}): {_log_error(out, jid)}")
            table.draw(states)
            if queued:
                time.sleep(max(launch.poll_s, 2.0))
    if stop.set:
        res.pending = list(queued)
        log(f"stopped watching; {len(queued)} job(s) go on in Slurm: `study --status` shows them")
    return res
