"""Every bench script still runs: `bench/X.py --tiny` end to end, on tiny synthetic Fashion-MNIST.

--tiny runs the script's own code paths at a tiny size (seconds on CPU); the numbers mean nothing, only
that the script does not crash and writes its JSON. bench/results is never written (--out goes to a
temporary folder) and the test checks it is left as it was. bench/train.py --gpu is not run here.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = object()  # stands for the tiny Fashion-MNIST folder in the arguments below

# script -> (extra arguments, the JSON's top-level keys, path to the entry that must say tiny)
CASES = {
    "export": ([], {"about", "machine", "settings", "models", "tiny"}, []),
    "folder": ([], {"about", "tiny", "decode_into_cache", "cache_hit_s", "epoch"}, []),
    "layers": (["--device", "cpu", "--threads", "1"], {"description", "devices"}, ["devices", "cpu"]),
    "progressive": (["--data-dir", DATA, "--threads", "1"], {"about", "results"}, ["results", "cpu"]),
    "reduce": (["--data-dir", DATA, "--device", "cpu", "--threads", "1"], {"about", "results"},
               ["results", "cpu"]),
    "study": (["--data-dir", DATA], {"about", "goal", "device", "torch", "model", "run", "train_seconds",
                                     "budgets", "store", "val_images", "test_images", "base_test_acc",
                                     "score_seconds", "results", "tiny"}, []),
    "train": ([], {"machine", "cpu", "tiny"}, []),
    "whiten": (["--data-dir", DATA, "--threads", "1"], {"about", "results", "base_val_acc", "tiny"}, []),
}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """Tiny learnable images in Fashion-MNIST's file names (the same IDX names as MNIST's)."""
    return write_tiny_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist", n_train=600, n_test=100)


def _digests():
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.glob("*.json"))}


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_runs_tiny(script, fashion, tmp_path):
    extra, keys, tiny_at = CASES[script]
    out = tmp_path / f"{script}.json"
    args = [str(fashion) if a is DATA else a for a in extra]
    before = _digests()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("OUT", None)  # bench/train.py --gpu writes to $OUT; not that part here, but keep it out of play
    p = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--tiny", "--out", str(out), *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"bench/{script}.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    assert keys <= set(doc), f"missing top-level keys {keys - set(doc)}"
    entry = doc
    for k in tiny_at:
        entry = entry[k]
    assert entry["tiny"] is True
    assert _digests() == before, "bench/results was written"
