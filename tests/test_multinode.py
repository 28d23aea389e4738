"""The README's multi-node example, on one machine: two torchrun launchers, each a "node" with one
CPU process (gloo), train one run; it matches a one-process run of the same global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from synthetic import write_tiny_mnist

ARGS = ["train", "--arch", "vit-tiny", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16",
        "--mlp-dim", "64", "--patch-size", "7", "--dropout", "0", "--emb-dropout", "0", "--dataset", "mnist",
        "--val-size", "200", "--epochs", "1", "--batch-size", "50", "--lr", "3e-3", "--device", "cpu", "--no-augment"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_on_cpu_matches_one_process(tmp_path):
    data = write_tiny_mnist(tmp_path / "mnist")
    args = ARGS + ["--data-dir", str(data), "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "laser_tool", *args, "--name", "one"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                               "-m", "laser_tool", *args, "--name", "two"], env=env, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    errs = [p.communicate(timeout=300)[1] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["batching"]["world_size"] == 2
    a, b = load_file(tmp_path / "one" / "last.safetensors"), load_file(tmp_path / "two" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
