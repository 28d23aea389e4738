"""A real single-node Slurm (munged + slurmctld + slurmd started here, tests/slurm_cluster.py):
a small study through `--launcher slurm` (submit without waiting, watch with --status, a second
invocation neither resubmits nor loses the queued jobs and writes the report when they end), a
preempted job requeued by Slurm resuming bitwise, and the README's multi-node sbatch script."""
import json
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from laser_tool.data import files as data
from laser_tool.study import frontier
from laser_tool import study
from laser_tool.cli import main
from laser_tool.launch.base import Launch
from slurm_cluster import Cluster, Unavailable
from conftest import TINY_PRESET, write_fashion
from trainers import presets


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster for the module's tests (starting and stopping it takes seconds)."""
    pytest.importorskip("submitit")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
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
    monkeypatch.setitem(frontier.FRONTIERS, "quick",  # baseline and narrower, the baseline cut two ways
                        frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "svd", "whiten")))
    write_fashion(tmp_path / "data" / "fashion-mnist")
    out = tmp_path / "st"
    lines = []
    request = study.StudyRequest("quick", out=out, device="cpu", data_dir=tmp_path / "data")
    assert study.run_study(request, Launch(jobs=2, launcher="slurm", threads=1, wait=False), log=lines.append) is None
    jobs = json.loads((out / "slurm_jobs.json").read_text())
    assert sorted(jobs) == ["baseline-s0", "narrower-k0.5-s0", "svd-k0.5-s0", "whiten-k0.5-s0"]
    assert any("train step(s) as Slurm job array" in ln for ln in lines)
    assert any("reduce step(s) as Slurm job array" in ln and "afterany:" in ln for ln in lines)
    status = CliRunner().invoke(main, ["study", "--preset", "quick", "--out", str(out), "--status"]).output
    assert "no live invocation" in status and status.count(" job ") >= 1, status

    lines.clear()
    report = study.run_study(request, Launch(jobs=2, launcher="slurm", threads=1, poll_s=1), log=lines.append)
    assert not any(ln.startswith("submitted") for ln in lines), lines  # the queued jobs were found, not resubmitted
    assert json.loads((out / "slurm_jobs.json").read_text()) == jobs
    assert report == out / "report.md" and "| baseline | baseline | 1 |" in report.read_text()
    for name in jobs:
        final = json.loads((out / "runs" / name / "final.json").read_text())
        assert 0 <= final["test_acc"] <= 1
    assert json.loads((out / "runs" / "baseline-s0" / "final.json").read_text())["threads"] == 1


@pytest.mark.slow
def test_slurm_preemption_requeues_and_resumes_bitwise(cluster, tmp_path, monkeypatch):
    """Slurm's warning signal to a running train job: the trainer saves at its next step, submitit
    requeues the job (scontrol requeue), and the requeued job ends bitwise equal to an uninterrupted run."""
    import subprocess
    import submitit
    import torch
    from safetensors.torch import load_file
    from laser_tool.launch.base import StepJob
    from conftest import train_step_80
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setitem(presets.PRESETS, "quick", TINY_PRESET)
    write_fashion(tmp_path / "data" / "fashion-mnist", n_train=1000)
    n = torch.get_num_threads()
    try:
        StepJob(train_step_80(tmp_path / "ref", tmp_path / "data"), tmp_path / "ref", "cpu", None, 1)()
    finally:
        torch.set_num_threads(n)
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=60, cpus_per_task=1)
    job = ex.submit(StepJob(train_step_80(tmp_path / "pre", tmp_path / "data"), tmp_path / "pre", "cpu", None, 1))
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


@pytest.mark.slow
def test_sbatch_example_trains_one_run_on_two_ranks_and_requeues(cluster, tmp_path):
    """scripts/slurm_train.sbatch as the README gives it, with two tasks standing in for two nodes:
    torchrun DDP on CPU; Slurm's warning signal makes it save, requeue and resume, and the result
    matches a one-process run of the same global batch."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file
    from synthetic import write_tiny_mnist
    from trainers.train import train
    from conftest import TINY, tiny_cfg
    data_dir = write_tiny_mnist(tmp_path / "mnist", n_train=3000)
    cfg = tiny_cfg(data_dir, tmp_path / "one", model=replace(TINY, dropout=0.0, emb_dropout=0.0), batch_size=20)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, progress=False)
    finally:
        torch.set_num_threads(n)
    args = ["--arch", "vit-tiny", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16", "--mlp-dim", "64",
            "--patch-size", "7", "--dropout", "0", "--emb-dropout", "0", "--dataset", "mnist", "--data-dir", str(data_dir),
            "--val-size", "200", "--epochs", "2", "--batch-size", "20", "--lr", "3e-3", "--weight-decay", "0.01",
            "--warmup-epochs", "0.5", "--no-augment", "--device", "cpu", "--out", str(tmp_path / "two"), "--name", "run"]
    script = Path(__file__).parent.parent / "scripts" / "slurm_train.sbatch"
    env = {**cluster.env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(script.parent.parent), os.environ.get("PYTHONPATH", "")])}
    job = subprocess.run(["sbatch", "--parsable", "--ntasks", "2", "--ntasks-per-node", "2", "--cpus-per-task", "1",
                          "--output", str(tmp_path / "job.log"), "--chdir", str(tmp_path), str(script), *args],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    state, deadline = tmp_path / "two" / "run" / "state.safetensors", time.time() + 180
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    subprocess.run(["scancel", "--batch", "--signal", "USR1", job], env=env, check=True)  # the time-limit warning
    while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                                                    text=True).stdout.strip():
        time.sleep(0.5)
    log = (tmp_path / "job.log").read_text()
    assert "interrupted by SIGTERM at epoch" in log and "requeueing job" in log and "resuming at epoch" in log, log[-3000:]
    final = json.loads((tmp_path / "two" / "run" / "final.json").read_text())
    assert json.loads((tmp_path / "two" / "run" / "config.json").read_text())["batching"]["world_size"] == 2
    one, two = load_file(tmp_path / "one" / "run" / "last.safetensors"), load_file(tmp_path / "two" / "run" / "last.safetensors")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4
    assert abs(final["test_acc"] - json.loads((tmp_path / "one" / "run" / "final.json").read_text())["test_acc"]) < 0.01
    # the interrupted epoch's training totals are over both ranks (not rank 0's partial counted twice)
    hist = [[json.loads(x) for x in (tmp_path / d / "run" / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    for a, b in zip(*hist):
        assert abs(a["train_acc"] - b["train_acc"]) < 1e-3 and abs(a["train_loss"] - b["train_loss"]) < 1e-3
