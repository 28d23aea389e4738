"""`laser-tool info` and the CLI's handling of bad input: usage errors, one-line errors, no tracebacks."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_ARGS = ["--dim", "64", "--depth", "2", "--heads", "2", "--dim-head", "32", "--mlp-dim", "128",
              "--image-size", "16", "--patch-size", "4"]


def test_help():
    r = cli("--help")
    assert r.exit_code == 0 and "info" in r.output
    r = cli("info", "--help")
    assert r.exit_code == 0 and "--arch" in r.output and "--json" in r.output


def test_info_json_vit_tiny_seed_count():
    r = cli("info", "--arch", "vit-tiny", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert isinstance(data, dict)
    assert type(data["params"]) is int and data["params"] == 4_363_254
    assert data["arch"] == "vit-tiny"
    assert sum(row["params"] for row in data["layers"]) < data["params"]


def test_info_table_small_with_variant():
    r = cli("info", "--arch", "xt-vit", *SMALL_ARGS, "--variant", "dyad", "--target", "ffn", "--n-dyad", "4",
            "--blocks", "1")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["layer", "shape", "kind", "params"]
    kinds = {ln.split()[0]: ln.split()[2] for ln in lines[1:-1]}
    assert kinds["blocks.1.ffn1.in"] == "dyad" and kinds["blocks.0.ffn1.in"] == "linear"
    assert lines[-1].startswith("total parameters: ")


@pytest.mark.parametrize("option,value,choices", [
    ("--arch", "resnet", ["vit-tiny", "xt-vit"]),
    ("--variant", "sparse", ["lowrank", "skl", "dyad", "monarch", "btt", "half-ffn"]),
    ("--param", "mup", ["standard", "structured"]),
    ("--init", "xavier", ["default", "spectral"]),
    ("--target", "mlp", ["ffn-in", "ffn-out", "ffn", "attn-out", "attn-qkv", "attn"]),
    ("--dyad-variant", "xx", ["it", "ot", "dt"]),
])
def test_unknown_choice_is_a_usage_error_listing_choices(option, value, choices):
    r = cli("info", option, value)
    assert r.exit_code == 2
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert value in r.stderr
    for c in choices:
        assert c in r.stderr


def test_dyad_indivisible_names_layer_and_constraint():
    r = cli("info", "--arch", "vit-tiny", *SMALL_ARGS, "--variant", "dyad", "--target", "ffn", "--n-dyad", "3")
    line = one_line_error(r)
    assert "blocks.0.ffn.in" in line and "divisible by n_dyad=3" in line


def test_rank_zero_is_a_clear_error():
    for kind in ("lowrank", "skl"):
        r = cli("info", "--arch", "xt-vit", *SMALL_ARGS, "--variant", kind, "--target", "attn-out",
                "--scale", "0.0001")
        line = one_line_error(r)
        assert "blocks.0.attn.out" in line and "rank 0" in line and "--scale" in line


@pytest.mark.parametrize("args,needle", [
    (["--variant", "skl"], "--target"),
    (["--variant", "skl", "--target", "ffn", "--blocks", "7"], "blocks"),
    (["--variant", "skl", "--target", "ffn", "--blocks", "a,b"], "--blocks"),
    (["--image-size", "18"], "patch"),
])
def test_other_user_errors(args, needle):
    small = list(SMALL_ARGS)
    if "--image-size" in args:
        i = small.index("--image-size")
        del small[i:i + 2]
    line = one_line_error(cli("info", "--arch", "vit-tiny", *small, *args))
    assert needle in line


def laser_tool_exe():
    exe = Path(sys.executable).parent / "laser-tool"
    return str(exe) if exe.exists() else shutil.which("laser-tool")


def test_real_process_prints_one_line_and_no_traceback():
    exe = laser_tool_exe()
    if exe is None:
        pytest.skip("laser-tool console script not installed")
    p = subprocess.run([exe, "info", "--arch", "vit-tiny", *SMALL_ARGS, "--variant", "dyad", "--target", "ffn",
                        "--n-dyad", "3"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "blocks.0.ffn.in" in lines[0] and "n_dyad=3" in lines[0], p.stderr
