"""A real single-node Slurm (munged + slurmctld + slurmd started here) runs a small study through
`--launcher slurm`: submit without waiting, watch with --status, a second invocation neither
resubmits nor loses the queued jobs and writes the report when they end."""
import json
import time

import pytest
from click.testing import CliRunner

from laser_tool import data, study
from laser_tool.cli import main
from laser_tool.runner import Launch
from slurm_cluster import Cluster, Unavailable
from test_study import TINY_PRESET, write_fashion
from trainers import presets


@pytest.fixture
def cluster(tmp_path):
    pytest.importorskip("submitit")
    c = Cluster(tmp_path / "slurm")
    try:
        c.start()
    except Unavailable as e:
        pytest.skip(f"no single-node Slurm here: {e}")
    yield c
    c.stop()


@pytest.mark.slow
def test_a_two_row_study_runs_as_slurm_jobs(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})
    monkeypatch.setitem(presets.PRESETS, "quick", TINY_PRESET)
    monkeypatch.setitem(study.GRIDS, "quick", study.GRIDS["quick"][:2])  # baseline and half-ffn
    write_fashion(tmp_path / "data" / "fashion-mnist")
    out = tmp_path / "st"
    lines = []
    kw = dict(out=out, device="cpu", data_dir=tmp_path / "data", log=lines.append)
    assert study.run_study("quick", launch=Launch(jobs=2, launcher="slurm", threads=1, wait=False), **kw) is None
    jobs = json.loads((out / "slurm_jobs.json").read_text())
    assert sorted(jobs) == ["A-baseline-s0", "B-half-ffn-s0", "B-posthoc-svd-s0", "B-posthoc-whiten-s0"]
    assert any("train step(s) as Slurm job array" in ln for ln in lines)
    assert any("reduce step(s) as Slurm job array" in ln and "afterany:" in ln for ln in lines)
    status = CliRunner().invoke(main, ["study", "--preset", "quick", "--out", str(out), "--status"]).output
    assert "no live invocation" in status and status.count(" job ") >= 1, status

    lines.clear()
    report = study.run_study("quick", launch=Launch(jobs=2, launcher="slurm", threads=1, poll_s=1), **kw)
    assert not any(ln.startswith("submitted") for ln in lines), lines  # the queued jobs were found, not resubmitted
    assert json.loads((out / "slurm_jobs.json").read_text()) == jobs
    assert report == out / "report.md" and "| baseline | baseline | 1 |" in report.read_text()
    for name in jobs:
        final = json.loads((out / "runs" / name / "final.json").read_text())
        assert 0 <= final["test_acc"] <= 1
    assert json.loads((out / "runs" / "A-baseline-s0" / "final.json").read_text())["threads"] == 1


@pytest.mark.slow
def test_slurm_preemption_requeues_and_resumes_bitwise(cluster, tmp_path, monkeypatch):
    """Slurm's warning signal to a running train job: the trainer saves at its next step, submitit
    requeues the job (scontrol requeue), and the requeued job ends bitwise equal to an uninterrupted run."""
    import subprocess
    import submitit
    import torch
    from safetensors.torch import load_file
    from laser_tool.runner import StepJob
    from test_runner import _train_step
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setitem(presets.PRESETS, "quick", TINY_PRESET)
    write_fashion(tmp_path / "data" / "fashion-mnist", n_train=1000)
    n = torch.get_num_threads()
    try:
        StepJob(_train_step(tmp_path / "ref", tmp_path / "data"), tmp_path / "ref", "cpu", None, 1)()
    finally:
        torch.set_num_threads(n)
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=60, cpus_per_task=1)
    job = ex.submit(StepJob(_train_step(tmp_path / "pre", tmp_path / "data"), tmp_path / "pre", "cpu", None, 1))
    state = tmp_path / "pre" / "run" / "state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.02)
    subprocess.run(["scancel", "--signal", "USR2", job.job_id], env=cluster.env, check=True)  # as before a time limit
    assert job.result()["status"] == "done"
    log = job.paths.stderr.read_text()
    assert "interrupted by SIGUSR2" in log and "resuming at epoch" in log, log[-2000:]
    a, b = load_file(tmp_path / "ref" / "run" / "state.safetensors"), load_file(state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
