"""The study runner: --jobs N equals serial, dependencies hold, submitit's local path runs and requeues,
a live study directory is refused, and bad launch options are one line each."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from laser_tool.data import files as data
from laser_tool.study import frontier
from laser_tool import study
from laser_tool.cli import main
from laser_tool.errors import UserError
from laser_tool.launch.base import Launch, StepJob, check_launch
from laser_tool.launch.status import lock_holder
from conftest import SMALL_FRONTIER, TINY_PRESET, cli, one_line_error, train_step_80, write_fashion
from trainers import presets

RUNS = ["baseline-s0", "narrower-k0.5-s0", "lowrank-k0.5-s0", "svd-k0.5-s0", "whiten-k0.5-s0"]


def tensors(run):
    return load_file(run / "model.safetensors")


def same_results(a, b):
    """Every run of study `a` equals study `b`'s: accuracies and weights, bit for bit."""
    for name in RUNS:
        fa, fb = (json.loads((s / "runs" / name / "final.json").read_text()) for s in (a, b))
        assert fa["test_acc"] == fb["test_acc"] and fa["val_acc"] == fb["val_acc"], name
        ta, tb = tensors(a / "runs" / name), tensors(b / "runs" / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The quick grid on a tiny model and data (3 trains, 2 reductions), and its serial study."""
    tmp = tmp_path_factory.mktemp("runner")
    write_fashion(tmp / "data" / "fashion-mnist")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "DEFAULT_ROOTS", [])
        mp.setattr(data, "SYSTEM_DIRS", {})
        mp.setitem(presets.PRESETS, "quick", dict(TINY_PRESET, epochs=2))
        mp.setitem(frontier.FRONTIERS, "quick", SMALL_FRONTIER)
        kw = dict(device="cpu", data_dir=tmp / "data")
        study.run_study(study.StudyRequest("quick", out=tmp / "serial", **kw), Launch(jobs=1, threads=1),
                        log=lambda s: None)
        yield tmp, kw


def test_two_jobs_equal_serial_and_wait_for_parents(tiny):
    tmp, kw = tiny
    events = []
    study.run_study(study.StudyRequest("quick", out=tmp / "par", **kw), Launch(jobs=2, threads=1, poll_s=0.2),
                    log=lambda s: events.append((time.time(), s)))
    same_results(tmp / "serial", tmp / "par")
    for name in RUNS:
        assert json.loads((tmp / "par" / "runs" / name / "final.json").read_text()).get("threads", 1) == 1
    assert json.loads((tmp / "par" / "runs" / "baseline-s0" / "config.json").read_text())["threads"] == 1
    when = {}
    for t, line in events:
        for name in RUNS:
            if f" {name}: started" in line:
                when[(name, "start")] = t
            if f" {name}: done" in line:
                when[(name, "done")] = t
    assert len(when) == 10, events
    for red in ("svd-k0.5-s0", "whiten-k0.5-s0"):  # reductions start after their baseline ends
        assert when[(red, "start")] >= when[("baseline-s0", "done")]
    starts = sorted((when[(n, "start")], n) for n in RUNS)
    assert {n for _, n in starts[:2]} == {"baseline-s0", "narrower-k0.5-s0"}  # two at once from the start
    assert (tmp / "par" / "logs" / "baseline-s0.log").read_text().count("epoch 2/2") == 1


@pytest.mark.slow
def test_submitit_local_runs_the_study_and_a_rerun_redoes_nothing(tiny):
    pytest.importorskip("submitit")
    tmp, kw = tiny
    lines = []
    request = study.StudyRequest("quick", out=tmp / "sub", **kw)
    study.run_study(request, Launch(jobs=2, launcher="local", threads=1, poll_s=0.2), log=lines.append)
    same_results(tmp / "serial", tmp / "sub")
    assert sum(": started" in ln for ln in lines) == 5
    jobs = len(list((tmp / "sub" / "submitit").glob("*_submitted.pkl")))
    lines.clear()
    study.run_study(request, Launch(jobs=2, launcher="local", threads=1), log=lines.append)
    assert sum("already complete" in ln for ln in lines) == 5 and not any(": started" in ln for ln in lines)
    assert len(list((tmp / "sub" / "submitit").glob("*_submitted.pkl"))) == jobs  # nothing submitted
    out = CliRunner().invoke(main, ["study", "--preset", "quick", "--out", str(tmp / "sub"), "--status",
                                    "--data-dir", str(tmp / "data")]).output.splitlines()
    assert out[0].endswith("no live invocation") and out[1].startswith("study: running 0 ")
    assert sum(" done " in ln and "test acc" in ln for ln in out) == 5


@pytest.mark.slow
def test_preempted_submitit_job_requeues_and_resumes_bitwise(tiny):
    """SIGTERM to a running local submitit job: the trainer saves at its next step, submitit requeues
    the job, and the requeued job resumes to the same final weights as an uninterrupted run."""
    submitit = pytest.importorskip("submitit")
    tmp, _ = tiny
    write_fashion(tmp / "data1000" / "fashion-mnist", n_train=1000)
    n = torch.get_num_threads()
    try:  # uninterrupted, in this process
        assert StepJob(train_step_80(tmp / "ref", tmp / "data1000"), tmp / "ref", "cpu", None, 1)()["status"] == "done"
    finally:
        torch.set_num_threads(n)
    ex = submitit.LocalExecutor(folder=tmp / "pre" / "submitit")
    ex.update_parameters(timeout_min=60)
    job = ex.submit(StepJob(train_step_80(tmp / "pre", tmp / "data1000"), tmp / "pre", "cpu", None, 1))
    state = tmp / "pre" / "run" / "state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and not job.done():
        time.sleep(0.02)
    os.kill(job._process.pid, signal.SIGTERM)  # the controller forwards it to the task, as Slurm would
    assert job.result()["status"] == "done"
    log = job.paths.stderr.read_text()
    assert "interrupted by SIGTERM" in log and "resuming at epoch" in log, log[-2000:]
    a = load_file(tmp / "ref" / "run" / "state.safetensors")
    b = load_file(state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_mid_epoch_exits_143_and_resumes_bitwise(tmp_path):
    """A real `laser-tool train` process killed with SIGTERM mid-epoch: exit 143, then the same
    command finishes bitwise identical to an uninterrupted run."""
    write_fashion(tmp_path / "data" / "fashion-mnist", n_train=1000)
    args = ["train", "--arch", "vit-tiny", "--dim", "16", "--depth", "1", "--heads", "2", "--dim-head", "8",
            "--mlp-dim", "32", "--patch-size", "7", "--dataset", "fashion-mnist", "--data-dir",
            str(tmp_path / "data"), "--val-size", "50", "--epochs", "2", "--batch-size", "10", "--lr", "1e-3",
            "--device", "cpu", "--no-augment"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "laser_tool", *args, "--out", str(tmp_path)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess (OMP_NUM_THREADS=1)
    try:  # the uninterrupted run, in this process
        straight = CliRunner().invoke(main, args + ["--out", str(tmp_path), "--name", "straight"])
    finally:
        torch.set_num_threads(n)
    assert straight.exit_code == 0, straight.output[-2000:]
    p = subprocess.Popen(cmd + ["--name", "cut"], env=env, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "cut" / "state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)  # past the end of epoch 1's bookkeeping (a signal there stops "after epoch 1")
    p.send_signal(signal.SIGTERM)  # epoch 2 (95 steps) has just begun
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM at epoch 2, step" in err and "run the same command again to resume" in err
    assert not (tmp_path / "cut" / "final.json").exists()
    again = subprocess.run(cmd + ["--name", "cut"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming at epoch 2, step" in again.stderr
    a, b = load_file(tmp_path / "straight" / "state.safetensors"), load_file(state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fa, fb = (json.loads((tmp_path / n / "final.json").read_text()) for n in ("straight", "cut"))
    assert fa["test_acc"] == fb["test_acc"] and fa["threads"] == fb["threads"] == 1


def test_a_live_study_directory_is_refused(tmp_path):
    out = tmp_path / "st"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from laser_tool.study.run import study_lock\n"
                               "with study_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(main, ["study", "--preset", "quick", "--out", str(out), "--device", "cpu"])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
        assert f"in use by another live `laser-tool study` (pid {holder.pid} on host" in res.output
        assert lock_holder(out)["pid"] == holder.pid
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, yet the lock must not outlive its holder
        holder.wait()
    assert lock_holder(out) is None
    assert not (out / "runs").exists()


def test_bad_launch_options_are_one_line(tmp_path, monkeypatch):
    line = one_line_error(cli("study", "--preset", "quick", "--out", tmp_path, "--launcher", "pbs"))
    assert line == "error: unknown launcher 'pbs'; choose one of process, local, slurm"
    assert one_line_error(cli("study", "--preset", "quick", "--out", tmp_path, "--jobs", "0")) == \
        "error: --jobs 0: need at least 1"
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="sbatch is not on PATH"):
        check_launch(Launch(launcher="slurm"), "cpu")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(UserError, match="needs submitit: pip install submitit"):
        check_launch(Launch(launcher="slurm"), "cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="--jobs 4 x --gpus-per-job 1 needs more than the 2 GPU"):
        check_launch(Launch(jobs=4), "cuda")
    assert check_launch(Launch(jobs=4, jobs_per_gpu=2), "cuda").threads >= 1
    assert one_line_error(cli("study", "--preset", "quick", "--out", tmp_path, "--time", "1:xx")).startswith(
        "error: --time 1:xx: give minutes")


def test_sigterm_between_steps_stops_a_serial_study_with_143(tiny, monkeypatch):
    """SIGTERM while a reduction runs: it finishes (its output appears whole), nothing else starts."""
    import shutil
    from laser_tool.posthoc import reduce as reducer
    from laser_tool.signals import Interrupted
    tmp, kw = tiny
    for name in RUNS[:3]:  # the trained runs, so that only the reductions are left to do
        shutil.copytree(tmp / "serial" / "runs" / name, tmp / "term" / "runs" / name)
    real = reducer.reduce_run_budgets

    def reduce_then_sigterm(*a, **k):
        out = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(reducer, "reduce_run_budgets", reduce_then_sigterm)
    with pytest.raises(Interrupted) as e:
        study.run_study(study.StudyRequest("quick", out=tmp / "term", **kw), Launch(jobs=1, threads=1),
                        log=lambda s: None)
    assert e.value.exit_code == 143
    assert (tmp / "term" / "runs" / RUNS[3] / "final.json").exists() and not (tmp / "term" / "runs" / RUNS[4]).exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
