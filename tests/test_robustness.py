"""Issue 9, items 1-5: data loss, outputs, one writer per output, numbers checked up front, resume.
Each case goes through the CLI in temp directories (helpers and the shared tiny run in robust.py)."""
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from laser_tool.runs.checkpoint import load_run
from conftest import cli, one_line_error
from robust import ROOT, place, refused, snapshot, train_args, world  # noqa: F401

# ------------------------------------------------------------------ 1. data loss

@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs/x", ""])
def test_1_name_must_be_a_plain_name(world, tmp_path, name):
    x = tmp_path / "X"
    (x / "sub").mkdir(parents=True)
    (x / "precious.txt").write_text("mine")
    refused(tmp_path, *train_args(world, x / "sub", name, "--overwrite"), words=["--name"])


def test_1_overwrite_refuses_a_folder_laser_tool_did_not_write(world, tmp_path):
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "thesis.tex").write_text("years of work")
    refused(tmp_path, *train_args(world, tmp_path, "victim", "--overwrite"), words=["not a laser-tool run"])
    (tmp_path / "victim" / "config.json").write_text('{"mine": true}')   # a config.json that is not ours
    refused(tmp_path, *train_args(world, tmp_path, "victim", "--overwrite"), words=["not a laser-tool run"])


def test_1_overwrite_never_follows_a_symlink(world, place):
    (place / "link").symlink_to(place / "base")
    refused(place, *train_args(world, place, "link", "--overwrite"), words=["symbolic link"])


# ------------------------------------------------------------------ 2. outputs never replace inputs or devices

def test_2_outputs_refuse_inputs_devices_and_directories(world, place):
    run = place / "base"
    refused(place, "spectrum", run, "--out", run / "spectrum.csv", words=["inside the input"])
    refused(place, "spectrum", run, "--plot", run / "model.safetensors", words=["inside the input"])
    refused(place, "spectrum", run / "model.safetensors", "--out", run / "model.safetensors", words=["inside"])
    refused(place, "search", run, "--budget", "params:0.5", "--report", run / "model.safetensors",
            words=["--report", "inside the input"])
    refused(place, "compare", run, "--no-speed", "--out", run / "final.json", words=["inside the input"])
    refused(place, "compare", run, "--no-speed", "--out", place, words=["directory"])
    refused(place, "reduce", run, "--layer", "head", "--rank", "2", "--out", run / "inside", words=["input run"])
    (place / "elsewhere.csv").write_text("keep")
    (place / "ln.csv").symlink_to(place / "elsewhere.csv")
    refused(place, "spectrum", run, "--out", place / "ln.csv", words=["symbolic link"])
    dev_null = os.stat("/dev/null")
    one_line_error(cli("spectrum", run, "--out", "/dev/null"), "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_ino == dev_null.st_ino


def test_2_unwritable_missing_and_too_long_destinations(world, place):
    run = place / "base"
    if os.geteuid() == 0:   # root writes through permission bits; sysfs refuses new files even to root
        locked = Path("/sys")
    else:
        locked = place / "ro"
        locked.mkdir()
        locked.chmod(0o555)
    one_line_error(cli("spectrum", run, "--out", locked / "s.csv"), "cannot write")
    one_line_error(cli("reduce", run, "--layer", "head", "--rank", "2", "--out", locked / "red"), "cannot write")
    refused(place, "spectrum", run, "--out", place / ("x" * 300 + ".csv"), words=["255 bytes"])
    refused(place, "reduce", run, "--layer", "head", "--rank", "2", "--out", place / ("r" * 300), words=["255"])
    refused(place, *train_args(world, place, "n" * 300), words=["--name"])
    (place / "file").write_text("x")
    refused(place, "spectrum", run, "--out", place / "file" / "s.csv", words=["not a directory"])
    # a missing parent folder is made
    r = cli("spectrum", run, "--out", place / "new" / "deeper" / "s.csv")
    assert r.exit_code == 0 and (place / "new" / "deeper" / "s.csv").is_file()


# ------------------------------------------------------------------ 3. one writer per output

HOLDER = textwrap.dedent("""
    import sys, time, types
    pkg = types.ModuleType("laser_tool")      # the real lock module, without the package's torch imports
    pkg.__path__ = [sys.argv[3]]
    sys.modules["laser_tool"] = pkg
    from laser_tool.lock import acquire
    fd = acquire(sys.argv[1])
    print("held", flush=True)
    if sys.argv[2] == "die":
        import os; os._exit(0)     # dies holding it: the lock file stays, naming a dead pid
    time.sleep(120)
""")


def hold_lock(target, mode="hold"):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), mode, str(ROOT / "laser_tool")],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_3_second_writer_is_refused(world, place):
    holder = hold_lock(place / "base")
    try:
        line = refused(place / "base", *train_args(world, place, "base"), words=["being written by process"])
        assert str(holder.pid) in line
        holder2 = hold_lock(place / "red")
        try:
            refused(place, "reduce", place / "base", "--layer", "head", "--rank", "2", "--out", place / "red",
                    words=["being written"])
        finally:
            holder2.kill()
            holder2.wait()
    finally:
        holder.kill()
        holder.wait()


def test_3_stale_lock_of_a_dead_process_is_taken_over(world, place):
    dead = hold_lock(place / "red", mode="die")
    dead.wait()
    assert (place / ".red.lock").read_text().split()[0] == str(dead.pid)
    r = cli("reduce", place / "base", "--layer", "head", "--rank", "2", "--out", place / "red")
    assert r.exit_code == 0, r.output
    assert "stale lock" in r.stderr and str(dead.pid) in r.stderr
    assert not (place / ".red.lock").exists() and (place / "red" / "final.json").is_file()


def test_3_lock_left_on_another_host(world, place, monkeypatch):
    """Another host's pid cannot be checked from here: refused, unless it is this requeued Slurm job."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    (place / ".red.lock").write_text("4242 some-other-node job=77\n")
    args = ["reduce", place / "base", "--layer", "head", "--rank", "2", "--out", place / "red"]
    refused(place, *args, words=["on host some-other-node", "delete"])
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    r = cli(*args)
    assert r.exit_code == 0 and "requeued" in r.stderr and not (place / ".red.lock").exists()


STARTER = textwrap.dedent("""
    import sys
    import trainers.train           # the command line imports its work lazily: load the trainer now
    from laser_tool.cli import main
    print("ready", flush=True)      # the slow imports are done; wait for the go
    sys.stdin.readline()
    main(sys.argv[1:], prog_name="laser-tool")
""")


def test_3_two_real_trainers_on_one_run(world, tmp_path):
    """Two processes, same run: one trains, the other is refused; the run is one run's files."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [str(a) for a in train_args(world, tmp_path, "r")]
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, *args, *extra], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for extra in ([], ["--lr", "0.01"])]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    a, b = procs
    a.stdin.write("go\n")
    a.stdin.flush()
    for _ in range(2000):   # A holds the lock from before it reads any data until it has finished
        if (tmp_path / ".r.lock").exists() or a.poll() is not None:
            break
        time.sleep(0.005)
    b.stdin.write("go\n")
    b.stdin.flush()
    b_out, b_err = b.communicate(timeout=300)
    a_err = a.communicate(timeout=300)[1]
    assert a.returncode == 0, a_err
    assert b.returncode == 2 and b_err.count("\n") == 1 and b_err.startswith("error: "), b_err
    assert "being written by process" in b_err and "Traceback" not in b_err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 3e-3
    assert load_run(tmp_path / "r")[1]["lr"] == 3e-3


# ------------------------------------------------------------------ 4. numbers checked up front

BAD = [(["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
       (["--eval-batch-size", "0"], "--eval-batch-size"), (["--grad-accum", "0"], "--grad-accum"),
       (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
       (["--grad-clip", "0"], "--grad-clip"), (["--grad-clip", "-1"], "--grad-clip"),
       (["--grad-clip", "nope"], "--grad-clip"), (["--warmup-epochs", "-1"], "--warmup-epochs"),
       (["--label-smoothing", "1"], "--label-smoothing"), (["--dropout", "1"], "--dropout"),
       (["--emb-dropout", "-0.1"], "--emb-dropout"), (["--val-size", "0"], "--val-size"),
       (["--train-subset", "0"], "--train-subset"), (["--dim", "0"], "--dim"), (["--depth", "0"], "--depth"),
       (["--heads", "0"], "--heads"), (["--mlp-dim", "0"], "--mlp-dim"), (["--weight-decay", "-1"], "--weight-decay"),
       (["--seed", "-1"], "--seed")]


@pytest.mark.parametrize("bad,flag", BAD, ids=[" ".join(b) for b, _ in BAD])
def test_4_bad_numbers_fail_before_any_data_is_read(world, tmp_path, bad, flag):
    # A missing data folder: if the data were read first, the error would be about the data.
    args = train_args(world, tmp_path / "out", "r") + bad
    args[args.index("--data-dir") + 1] = tmp_path / "no-data-here"
    refused(tmp_path, *args, words=[flag])
    assert not (tmp_path / "out").exists()


def test_4_a_failed_start_leaves_no_empty_out(world, tmp_path):
    args = train_args(world, tmp_path / "new" / "deeper", "r")
    args[args.index("--data-dir") + 1] = tmp_path / "no-data-here"
    refused(tmp_path, *args, words=["--data-dir"])
    assert not (tmp_path / "new").exists()


def test_4_grad_clip_off_is_explicit(world):
    cfg = json.loads((world / "runs" / "base" / "config.json").read_text())
    assert cfg["grad_clip"] is None and cfg["train"]["grad_clip"] is None


def test_4_compare_device_must_be_a_real_choice(world, tmp_path):
    refused(world / "runs", "compare", world / "runs" / "base", "--device", "gpu", words=["unknown device"])
    refused(world / "runs", "compare", world / "runs" / "base", "--device", "cuda:x", words=["unknown device"])


def test_4_reduce_batch_size(world, tmp_path):
    refused(world / "runs", "reduce", world / "runs" / "base", "--layer", "head", "--rank", "2",
            "--batch-size", "0", "--out", tmp_path / "r", words=["--batch-size"])


# ------------------------------------------------------------------ 5. resume

def test_5_resume_of_a_missing_run_is_an_error(world, tmp_path):
    refused(tmp_path, *train_args(world, tmp_path, "never-trained", "--resume"), words=["no run", "to resume"])
    assert not (tmp_path / "never-trained").exists()


def test_5_resume_says_what_it_ignores(world, place):
    before = snapshot(place / "base")
    r = cli(*train_args(world, place, "base", "--resume", "--epochs", "3"))
    assert r.exit_code == 0, r.output
    assert "ignoring" in r.stderr and "epochs=3 (saved 1)" in r.stderr and "already complete" in r.stderr
    assert snapshot(place / "base") == before
