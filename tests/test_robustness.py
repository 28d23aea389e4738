"""Issue 9: bad input, faults and concurrency, each case driven through the CLI in temp directories.

Every failure case asserts: a non-zero exit, exactly one line on stderr and it starts with "error:",
no traceback, and nothing outside the output touched (the surroundings are hashed before and after).
Numbers in the test names are the issue's items.
"""
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from laser_tool.cli import main
from laser_tool.checkpoint import META_KEY, load_run
from laser_tool.layers import FactoredLinear
from laser_tool.spectrum import Calib, Decomposition
from synthetic import write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "vit-tiny", "--dim", "16", "--depth", "1", "--heads", "2", "--dim-head", "8", "--mlp-dim", "32",
        "--patch-size", "7", "--dropout", "0", "--emb-dropout", "0", "--epochs", "1", "--batch-size", "50",
        "--val-size", "50", "--no-augment", "--device", "cpu", "--lr", "3e-3", "--grad-clip", "off"]


# ------------------------------------------------------------------ helpers

def snapshot(root: Path) -> dict:
    """Every path under root (not following links): content hash and mode; links by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[str(p)] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[str(p)] = ("dir", st.st_mode)
    return out


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r


def one_line_error(r, *words):
    """Exit non-zero, stderr is one line starting with 'error:' (naming `words`), no traceback."""
    err = r.stderr
    assert r.exit_code not in (0, None), (r.exit_code, r.output)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def refused(tree: Path, *args, words=()):
    """Run a command that must fail and must leave `tree` exactly as it was."""
    before = snapshot(tree)
    line = one_line_error(cli(*args), *words)
    assert snapshot(tree) == before, line
    return line


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """tmp/data (tiny MNIST), tmp/runs/base (a finished 1-epoch run trained with --grad-clip off),
    tmp/runs/base-red (its factored whiten reduction). Created with umask 022."""
    old = os.umask(0o022)
    tmp = tmp_path_factory.mktemp("robust")
    data = write_tiny_mnist(tmp / "data", n_train=400, n_test=100)
    try:
        r = cli("train", *TINY, "--dataset", "mnist", "--data-dir", data,
                "--out", tmp / "runs", "--name", "base")
        assert r.exit_code == 0, r.output
        r = cli("reduce", tmp / "runs" / "base", "--layer", "*.ffn.in", "--rank", "4", "--method", "whiten",
                "--store", "factored", "--calib-batches", "2", "--out", tmp / "runs" / "base-red")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    return tmp


@pytest.fixture
def place(world, tmp_path):
    """A scratch folder beside a copy of the base run (tests may damage the copy)."""
    shutil.copytree(world / "runs" / "base", tmp_path / "base")
    return tmp_path


def train_args(world, out, name, *extra):
    return ["train", *TINY, "--dataset", "mnist", "--data-dir", world / "data", "--out", out, "--name", name, *extra]


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


STARTER = textwrap.dedent("""
    import sys
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


# ------------------------------------------------------------------ 6. balanced factors

def test_6_whitened_factors_are_balanced_and_keep_their_product():
    torch.manual_seed(0)
    X = torch.randn(500, 48) * torch.logspace(-2, 1, 48)   # badly scaled inputs, as after a GELU
    W = torch.randn(32, 48) / 7
    d = Decomposition(W, "whiten", Calib.from_inputs(X))
    for r in (4, 16, 32):
        U, V = d.factors(r)
        raw = (d.U[:, :r] * d.s[:r]) @ d.Vh[:r]           # the product before balancing
        assert torch.allclose(U.double() @ V.double(), raw, rtol=1e-4, atol=1e-6)
        assert torch.allclose(U.norm(dim=0), V.norm(dim=1), rtol=1e-4)
        raw_ratio = float((d.U[:, :r] * d.s[:r]).abs().mean() / d.Vh[:r].abs().mean())
        ratio = float(U.abs().mean() / V.abs().mean())
        assert raw_ratio > 100 and 0.1 < ratio < 10, (raw_ratio, ratio)
    U, V = Decomposition(W).factors(8)                      # plain SVD: sqrt(s) on each side
    s = torch.linalg.svdvals(W.double())[:8]
    assert torch.allclose(U.norm(dim=0).double(), s.sqrt(), rtol=1e-4)


def test_6_reduce_stores_balanced_factors(world):
    model, _ = load_run(world / "runs" / "base-red")
    fac = [m for m in model.modules() if isinstance(m, FactoredLinear)]
    assert fac
    for m in fac:
        assert torch.allclose(m.U.norm(dim=0), m.V.norm(dim=1), rtol=1e-3)


# ------------------------------------------------------------------ 7. a lying header

def rewrite_checkpoint(path: Path, change):
    tensors = load_file(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    meta = change(tensors, meta) or meta
    save_file(tensors, path, metadata=meta)


def test_7_header_that_lies_about_the_model_is_one_line(world, place):
    def huge(tensors, meta):
        cfg = json.loads(meta[META_KEY])
        cfg["model"]["dim"] = 200_000                     # would allocate ~gigabytes if built for real
        meta[META_KEY] = json.dumps(cfg)
    rewrite_checkpoint(place / "base" / "model.safetensors", huge)
    t0 = time.perf_counter()
    refused(place, "spectrum", place / "base", words=["does not match the model"])
    assert time.perf_counter() - t0 < 30   # generous on a busy CI box; a real build would not finish


# ------------------------------------------------------------------ 8. one line, never a traceback

def _drop_head(tensors, meta):
    del tensors["head.weight"]


def _nan_head(tensors, meta):
    tensors["head.weight"].fill_(float("nan"))


CORRUPT = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:200]),
    "json": lambda p: rewrite_checkpoint(p, lambda t, m: {**m, META_KEY: "{not json"}),
    "no-model-key": lambda p: rewrite_checkpoint(p, lambda t, m: {**m, META_KEY: json.dumps({"dataset": "mnist"})}),
    "wrong-type": lambda p: rewrite_checkpoint(
        p, lambda t, m: {**m, META_KEY: json.dumps({**json.loads(m[META_KEY]),
                                                    "model": {**json.loads(m[META_KEY])["model"], "dim": "big"}})}),
    "wrong-arch": lambda p: rewrite_checkpoint(
        p, lambda t, m: {**m, META_KEY: json.dumps({**json.loads(m[META_KEY]),
                                                    "model": {**json.loads(m[META_KEY])["model"], "arch": "xt-vit"}})}),
    "missing-tensor": lambda p: rewrite_checkpoint(p, _drop_head),
    "nan": lambda p: rewrite_checkpoint(p, _nan_head),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_8_bad_checkpoints_in_every_reader(world, place, kind):
    run = place / "base"
    CORRUPT[kind](run / "model.safetensors")
    out = place / "out"
    refused(place, "spectrum", run)
    refused(place, "reduce", run, "--layer", "head", "--rank", "2", "--out", out)
    refused(place, "search", run, "--budget", "params:0.5", "--layers", "head", "--report", out / "s.json")
    before = snapshot(place)
    if kind == "nan":   # only the tensors show it: compare reads them when it times inference
        r = cli("compare", run, "--format", "json", "--out", place.parent / f"{place.name}-cmp.json")
        assert r.exit_code == 0 and "Traceback" not in r.output + r.stderr
        rows = json.loads((place.parent / f"{place.name}-cmp.json").read_text())["rows"]
        assert rows[0]["images_per_s"] is None and "non-finite weights" in " ".join(rows[0]["warnings"])
    else:               # the header shows it: a problem row, and compare goes on
        r = cli("compare", run, "--no-speed", "--format", "json")
        assert r.exit_code == 0 and "Traceback" not in r.output + r.stderr
        assert "1 run(s) not compared" in r.stderr
    assert snapshot(place) == before


def test_8_corrupt_or_foreign_resume_files(world, place):
    run = place / "base"
    (run / "final.json").unlink()                           # unfinished: the trainer must read the state
    state = (run / "state.safetensors").read_bytes()
    (run / "state.safetensors").write_bytes(state[:1000])
    refused(place, *train_args(world, place, "base"), words=["resume point"])
    other = place / "other"
    assert cli(*train_args(world, place, "other", "--dim", "24")).exit_code == 0
    shutil.copy(other / "state.safetensors", run / "state.safetensors")   # another model's resume point
    refused(place, *train_args(world, place, "base"), words=["does not belong to this run"])
    (run / "state.safetensors").write_bytes(state)
    good = (run / "config.json").read_text()
    for bad in ("{torn", "[1, 2]", '{"train": {"epochs": "many"}}'):
        (run / "config.json").write_text(bad)
        refused(place, *train_args(world, place, "base"), words=["config.json"])
    (run / "config.json").write_text(good)


def test_8_corrupt_final_json_is_recomputed(world, place):
    """A study finds runs by final.json; an unreadable one is rebuilt from the saved state, never
    taken as "complete" and never a traceback."""
    run = place / "base"
    good = json.loads((run / "final.json").read_text())
    (run / "final.json").write_text("{torn")
    r = cli(*train_args(world, place, "base"))
    assert r.exit_code == 0, r.output
    assert "recomputing" in r.stderr
    again = json.loads((run / "final.json").read_text())
    assert again["test_acc"] == good["test_acc"] and again["status"] == "complete"


def test_8_second_reduction_into_the_same_out(world, place):
    args = ["reduce", place / "base", "--layer", "head", "--rank", "2", "--out", place / "red"]
    assert cli(*args).exit_code == 0
    refused(place, *args, words=["already exists"])


# ------------------------------------------------------------------ 10. debris and a full disk

def test_10_debris_of_killed_writers_is_cleared(world, place):
    run = place / "base"
    (run / ".model.safetensors.k1ll3d_x.tmp").write_bytes(b"half")
    (run / ".notes.txt").write_text("a user's hidden file stays")
    (place / ".red.tmp-abc123_x").mkdir()
    (place / ".red.tmp-abc123_x" / "model.safetensors").write_bytes(b"half")
    (place / ".base.old-xyz12345").mkdir()
    assert cli(*train_args(world, place, "base")).exit_code == 0         # complete: still clears its debris
    assert not (run / ".model.safetensors.k1ll3d_x.tmp").exists() and not (place / ".base.old-xyz12345").exists()
    assert (run / ".notes.txt").exists() and (place / ".red.tmp-abc123_x").exists()
    assert cli("reduce", run, "--layer", "head", "--rank", "2", "--out", place / "red").exit_code == 0
    assert not (place / ".red.tmp-abc123_x").exists()


def test_10_full_disk_keeps_the_files_in_agreement(world, tmp_path, monkeypatch):
    """ENOSPC while writing epoch 2's last.safetensors: nothing of epoch 2 lands; the message names
    the bytes needed; the run then resumes and finishes."""
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".last.safetensors."):
            seen.append(name)
            if len(seen) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    args = train_args(world, tmp_path, "r", "--epochs", "2")
    r = cli(*args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]   # epoch 1's progress line precedes it
    assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0]
    line = errors[0]
    assert "no space left" in line and "bytes needed" in line
    monkeypatch.setattr(os, "fsync", real_fsync)
    run = tmp_path / "r"
    st = load_file(run / "state.safetensors")
    last = load_file(run / "last.safetensors")
    assert all(torch.equal(st[f"model.{k}"], v) for k, v in last.items())   # state and last: epoch 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], line
    r = cli(*args)
    assert r.exit_code == 0 and json.loads((run / "final.json").read_text())["epochs"] == 2


# ------------------------------------------------------------------ 11. umask

def test_11_files_follow_the_umask(world, place):
    for f in ("model.safetensors", "config.json", "state.safetensors", "metrics.jsonl", "final.json"):
        assert stat.S_IMODE((world / "runs" / "base" / f).stat().st_mode) == 0o644, f
    red = world / "runs" / "base-red"
    assert stat.S_IMODE(red.stat().st_mode) == 0o755
    assert stat.S_IMODE((red / "model.safetensors").stat().st_mode) == 0o644
    old = os.umask(0o027)
    try:
        assert cli("spectrum", place / "base", "--out", place / "s.csv").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((place / "s.csv").stat().st_mode) == 0o640
