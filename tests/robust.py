"""Shared by the issue-9 robustness tests: a tiny trained world and `refused`.

Every failure case asserts the one-line error (conftest.one_line_error: a non-zero exit, exactly one line
of output starting with "error:", no traceback) and nothing outside the output touched (the surroundings
are hashed before and after).
"""
import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import cli, one_line_error
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


