"""Issue 20, trustworthy against interruptions and inputs that lie: signals reach the running step and a
study's workers die with it; one study directory, one plan; run directories vouch for their files; the
tool writes only outputs that are its own; no traceback where a line will do; every invocation logged.
(Bitwise resume after a cut on any CPU: tests/test_progressive.py.)"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from laser_tool.launch.base import Launch
from laser_tool.signals import Interrupted
from laser_tool import study
from conftest import cli, one_line_error, patch_two_family_study as patch, study_args, write_fashion
from robust import refused, snapshot
from trainers import train as loop

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished two-family study (tiny) and its data, made once; tests copy it."""
    tmp = tmp_path_factory.mktemp("trust")
    write_fashion(tmp / "data" / "fashion-mnist")
    with pytest.MonkeyPatch.context() as mp:
        patch(mp)
        r = cli(*study_args(tmp / "st", tmp))
        assert r.exit_code == 0, r.output
        yield tmp


@pytest.fixture
def patched(monkeypatch):
    patch(monkeypatch)


def copy_study(made, tmp_path) -> Path:
    shutil.copytree(made / "st", tmp_path / "st")
    return tmp_path / "st"


# ------------------------------------------------------------------ 2. signals

def test_a_sigterm_while_a_study_starts_a_training_reaches_that_training(made, tmp_path, patched, monkeypatch):
    """The signal lands while the trainer loads its data (the study's handler holds it): the training
    stops at its first step with its resume point saved, instead of running all its epochs."""
    real, fired = loop.load_dataset, []

    def load_then_sigterm(*a, **k):
        out = real(*a, **k)
        if not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(loop, "load_dataset", load_then_sigterm)
    with pytest.raises(Interrupted) as e:
        study.run_study(study.StudyRequest("quick", out=tmp_path / "sig", device="cpu", data_dir=made / "data"),
                        Launch(jobs=1, threads=1), log=lambda s: None)
    assert e.value.exit_code == 143
    run = tmp_path / "sig" / "runs" / "baseline-s0"
    assert not (run / "final.json").exists()
    with safe_open(str(run / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["counters"])["global_step"] == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


STUDY_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from laser_tool.data import files as data
    from laser_tool.launch.base import Launch
    from laser_tool.study import StudyRequest, frontier, run_study
    from conftest import TINY_PRESET, TWO
    from trainers import presets
    if __name__ == "__main__":
        data.DEFAULT_ROOTS, data.SYSTEM_DIRS = [], {}
        presets.PRESETS["quick"] = dict(TINY_PRESET, epochs=int(sys.argv[4]))
        frontier.FRONTIERS["quick"] = TWO
        run_study(StudyRequest("quick", out=Path(sys.argv[1]), device="cpu", data_dir=sys.argv[2]),
                  Launch(jobs=int(sys.argv[5]), threads=1, poll_s=0.2), log=print)
""")


def start_study(tmp_path, epochs, jobs, out="st"):
    script = tmp_path / "run_study.py"
    script.write_text(STUDY_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / out), str(tmp_path / "data"),
                             str(ROOT / "tests"), str(epochs), str(jobs)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def children(pid: int) -> list:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def workers_of(pid: int) -> list:
    """The study's spawned step workers (not multiprocessing's resource tracker)."""
    out = []
    for c in children(pid):
        try:
            if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text() and alive(c):
                out.append(c)
        except OSError:
            pass
    return out


def test_kill_9_of_a_two_job_study_leaves_no_worker_training(made, tmp_path):
    write_fashion(tmp_path / "data" / "fashion-mnist")
    proc = start_study(tmp_path, epochs=100000, jobs=2)  # trainings that outlast the test by far
    workers = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
            workers = workers_of(proc.pid)
            time.sleep(0.2)
        assert len(workers) == 2
        time.sleep(2)  # both are importing or training now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers)  # died with the study: nothing holds a run's lock
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)


# ------------------------------------------------------------------ 3. one study directory, one plan

@pytest.mark.parametrize("more,named", [(["--families", "narrower,svd,whiten"], "--families"),
                                        (["--seeds", "2"], "--seeds 2"),
                                        (["--heal-epochs", "1"], "--heal-epochs 1")])
def test_a_second_invocation_with_another_plan_is_refused(made, tmp_path, patched, more, named):
    st = copy_study(made, tmp_path)
    line = refused(st, *study_args(st, made, *more), words=["planned with other settings", named, "--extend"])
    assert "the study has" in line


def test_extend_adds_rows_and_the_report_says_what_each_invocation_asked(made, tmp_path, patched):
    st = copy_study(made, tmp_path)
    r = cli(*study_args(st, made, "--seeds", "2", "--extend"))
    assert r.exit_code == 0, r.output
    report = (st / "report.md").read_text()
    assert report.startswith("# Study `quick`: 2 seed(s)") and "Extended:" in report
    assert (st / "runs" / "baseline-s1" / "final.json").exists()
    r = cli(*study_args(st, made))  # the first request again: part of the study, nothing to do
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_empty_family_lists_are_refused(made, tmp_path, patched, value):
    refused(tmp_path, *study_args(tmp_path / "new", made, "--families", value), words=["--families", "names nothing"])
    assert not (tmp_path / "new").exists()


def test_status_of_a_missing_study_is_an_error(tmp_path, patched):
    one_line_error(cli("study", "--preset", "quick", "--status", "--out", tmp_path / "nonexistent"),
                   "no study at")


# ------------------------------------------------------------------ 4. runs that vouch for themselves

def rows_and_problems(st):
    r = cli("compare", st / "runs", "--format", "json", "--no-speed")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    return {Path(x["runs"][0]).name for x in d["rows"]}, {Path(p["run"]).name: p for p in d["problems"]}


def test_a_lying_final_json_is_a_problem_row_and_the_study_refuses(made, tmp_path, patched):
    st = copy_study(made, tmp_path)
    f = st / "runs" / "narrower-k0.5-s0" / "final.json"
    f.write_text(json.dumps(dict(json.loads(f.read_text()), test_acc=0.9)))
    rows, problems = rows_and_problems(st)
    assert "narrower-k0.5-s0" not in rows and problems["narrower-k0.5-s0"]["status"] == "mismatch"
    assert "predictions score" in problems["narrower-k0.5-s0"]["reason"]
    refused(st, *study_args(st, made), words=["narrower-k0.5-s0", "test_acc 0.9000"])


@pytest.mark.parametrize("swap", ["predictions.safetensors", "model.safetensors"])
def test_another_runs_file_is_caught(made, tmp_path, patched, swap):
    st = copy_study(made, tmp_path)
    runs = st / "runs"
    shutil.copy(runs / "narrower-k0.5-s0" / swap, runs / "baseline-s0" / swap)
    rows, problems = rows_and_problems(st)
    assert "baseline-s0" not in rows and problems["baseline-s0"]["status"] == "mismatch"
    assert swap in problems["baseline-s0"]["reason"]
    refused(st, "reduce", runs / "baseline-s0", "--layer", "*.ffn.in", "--rank", "2", "--out", tmp_path / "cut",
            words=["baseline-s0", swap])
    refused(st, "train", "--init-from", runs / "baseline-s0", "--out", tmp_path, "--name", "heal", "--epochs", "1",
            words=["--init-from", swap])


def test_an_edited_config_does_not_relabel_a_row(made, tmp_path, patched):
    st = copy_study(made, tmp_path)
    f = st / "runs" / "narrower-k0.5-s0" / "config.json"
    cfg = json.loads(f.read_text())
    f.write_text(json.dumps(dict(cfg, model=dict(cfg["model"], mlp_dim=7))))
    rows, problems = rows_and_problems(st)
    assert problems["narrower-k0.5-s0"]["status"] == "mismatch" and "config.json" in problems["narrower-k0.5-s0"]["reason"]


# ------------------------------------------------------------------ 5. outputs that are the tool's own

def test_a_study_never_writes_over_a_folder_of_someone_elses(made, tmp_path, patched):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    (mine / "results.json").write_text("{}")
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"not a plot")
    (mine / "plot.png").symlink_to(outside)
    before = snapshot(tmp_path)
    one_line_error(cli(*study_args(mine, made)), "did not write")
    assert snapshot(tmp_path) == before


def test_no_output_inside_an_input_run(made, tmp_path, patched):
    st = copy_study(made, tmp_path)
    base = st / "runs" / "baseline-s0"
    refused(st, *study_args(base / "sub", made), words=["inside the run"])
    refused(st, "train", "--init-from", base, "--out", base, "--name", "heal", "--epochs", "1",
            words=["inside the --init-from run"])


def test_compare_and_spectrum_keep_existing_files_unless_told(made, tmp_path, patched):
    st = copy_study(made, tmp_path)
    for name, args in (("notes.md", ["compare", st / "runs", "--no-speed", "--out"]),
                       ("user.png", ["compare", st / "runs", "--no-speed", "--plot"]),
                       ("spec.json", ["spectrum", st / "runs" / "baseline-s0", "--format", "json", "--out"])):
        mine = tmp_path / name
        mine.write_text("mine")
        refused(tmp_path, *args, mine, words=["already exists", "--overwrite"])
        r = cli(*args, mine, "--overwrite")
        assert r.exit_code == 0, r.output
        assert mine.read_bytes() != b"mine"


# ------------------------------------------------------------------ 6. one line, no traceback

def stub(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script + "\n")
    (bin_dir / name).chmod(0o755)


@pytest.mark.parametrize("tools,named", [(("sbatch",), "srun is not on PATH"),
                                         (("sbatch", "srun", "squeue"), "controller is not reachable")])
def test_slurm_without_a_working_cluster_is_one_line(made, tmp_path, patched, monkeypatch, tools, named):
    bin_dir = tmp_path / "bin"
    for t in tools:
        stub(bin_dir, t, 'echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(shutil, "which", lambda n, _w=shutil.which: _w(n, path=str(bin_dir)))
    refused(tmp_path, *study_args(tmp_path / "st", made, "--launcher", "slurm"), words=[named])


def test_tensorboard_where_a_file_stands_is_one_line(made, tmp_path, patched):
    run = tmp_path / "runs" / "tb-run"
    run.mkdir(parents=True)
    (run / "tb").write_text("a file, not a folder")
    refused(tmp_path, "train", "--preset", "quick", "--data-dir", made / "data", "--device", "cpu",
            "--out", tmp_path / "runs", "--name", "tb-run", "--tensorboard", words=["--tensorboard"])


@pytest.fixture
def read_only(tmp_path):
    """A read-only directory: a read-only bind mount (root can write into any 0555 directory)."""
    src, ro = tmp_path / "ro-src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (not root?)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


@pytest.mark.parametrize("where", ["/dev/null", "long-name", "long-path"])
def test_bad_study_outputs_are_one_line(made, tmp_path, patched, where):
    out = {"/dev/null": Path("/dev/null"), "long-name": tmp_path / ("x" * 300),
           "long-path": tmp_path.joinpath(*["y" * 200] * 25)}[where]
    refused(tmp_path, *study_args(out, made))


def test_a_study_on_a_read_only_disk_is_one_line(made, tmp_path, patched, read_only):
    one_line_error(cli(*study_args(read_only / "st", made)), "cannot write")


def test_a_full_disk_while_writing_the_plot_is_one_line(made, tmp_path, patched, monkeypatch):
    import errno
    from laser_tool import fileio
    st = copy_study(made, tmp_path)
    real = fileio.os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("plot.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(fileio.os, "replace", full)
    r = cli(*study_args(st, made))  # the study's progress lines, then the error in one line
    assert r.exit_code == 2 and "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0]
    assert "no space left" in errors[0] and "plot.png" in errors[0]


# ------------------------------------------------------------------ 7. every invocation logged

def test_killed_invocations_count_in_the_report(made, tmp_path):
    write_fashion(tmp_path / "data" / "fashion-mnist")
    proc = start_study(tmp_path, epochs=1, jobs=1)
    for line in proc.stdout:  # the first run finished: kill the invocation
        if ": done" in line:
            break
    proc.kill()
    proc.wait(timeout=30)
    calls = json.loads((tmp_path / "st" / "study.json").read_text())["invocations"]
    assert len(calls) == 1 and calls[0]["finished"] is None and calls[0]["runs_made"] >= 1
    proc = start_study(tmp_path, epochs=1, jobs=1)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    report = (tmp_path / "st" / "report.md").read_text()
    calls = json.loads((tmp_path / "st" / "study.json").read_text())["invocations"]
    assert "over 2 invocation(s) of `laser-tool study`, 1 of them interrupted" in report
    assert sum(c["runs_made"] for c in calls) == 3 and "3 in all" in report
