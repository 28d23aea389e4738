"""Issue 27, causes A, B and E: no code from data, no file of the user's replaced, nothing half made.

A. A `python:MODULE:FUNCTION` factory named by a file (a received run's config.json, a checkpoint's
   metadata, a study's plan.json) is never imported or called; one the user named with --arch is, and is
   remembered in their own settings (XDG_CONFIG_HOME, pointed at a temp dir here), never in the run.
   The working directory is never put on sys.path.
B. `search --report FILE` never replaces a file laser-tool did not write.
E. A study whose data check fails writes no plan.json, so the corrected command is not refused.
(Causes C, D, F, G: tests/test_probe_*.py of the other half of the issue.)"""
import hashlib
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from laser_tool.models import trust
from laser_tool.runs.checkpoint import META_KEY
from laser_tool.runs.reader import file_digest
from robust import cli, one_line_error, refused, snapshot, world  # noqa: F401 - world is a fixture
from conftest import patch_two_family_study as patch_study, study_args, write_fashion

# A model factory of the user's own (module name unique to these tests: nothing else imports it).
FACTORY = '''
import torch.nn as nn

class Attn(nn.Module):
    def __init__(s, d):
        super().__init__(); s.qkv = nn.Linear(d, 3 * d); s.proj = nn.Linear(d, d)
    def forward(s, x):
        q, k, v = s.qkv(x).chunk(3, -1)
        return s.proj(((q @ k.transpose(1, 2)) / q.shape[-1] ** 0.5).softmax(-1) @ v)

class Net(nn.Module):
    def __init__(s, num_classes, image_size, channels, dim=8):
        super().__init__()
        s.embed = nn.Linear(channels * 49, dim)
        s.attn = Attn(dim)
        s.fc1 = nn.Linear(dim, 2 * dim); s.fc2 = nn.Linear(2 * dim, dim)
        s.head = nn.Linear(dim, num_classes)
    def forward(s, x):
        b, c = x.shape[:2]
        x = s.embed(x.unfold(2, 7, 7).unfold(3, 7, 7).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * 49))
        x = x + s.attn(x)
        x = x + s.fc2(s.fc1(x).relu())
        return s.head(x.mean(1))

def small(num_classes, image_size, channels, dim=8):
    return Net(num_classes, image_size, channels, dim=dim)
'''


@pytest.fixture(autouse=True)
def own_settings(tmp_path, monkeypatch):
    """This user's settings in a temp dir, and a fresh invocation state (nothing named yet)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    trust.begin_invocation()
    yield tmp_path / "xdg" / "laser-tool" / trust.FILE
    trust.begin_invocation()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def received(world, tmp_path, arch, arch_args, name="theirs") -> Path:
    """A copy of the tiny run, as someone else would send it: its config.json and its checkpoint's metadata
    name `arch` with `arch_args`, and final.json's digests are rewritten to match (a careful sender)."""
    run = tmp_path / "in" / name
    shutil.copytree(world / "runs" / "base", run)
    config = json.loads((run / "config.json").read_text())
    config["model"].update(arch=arch, arch_args=arch_args)
    (run / "config.json").write_text(json.dumps(config))
    for f in ("model.safetensors", "last.safetensors"):
        if (run / f).exists():
            save_file(load_file(run / f), str(run / f), metadata={META_KEY: json.dumps(config)})
    final = json.loads((run / "final.json").read_text())
    final["digests"] = {k: file_digest(run / k) for k in final.get("digests", {})}
    (run / "final.json").write_text(json.dumps(final))
    return run


# ------------------------------------------------------------------ A. code named by a file is never run


def test_compare_never_calls_a_factory_a_received_run_names(world, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes\n")
    attack = {"filename": str(victim), "filemode": "w", "force": True}  # force: even with handlers set up
    received(world, tmp_path, "python:logging:basicConfig", attack)
    r = cli("compare", tmp_path / "in", "--no-speed")
    assert victim.read_text() == "the user's notes\n"  # before: truncated to 0 bytes, exit 0
    assert "Traceback" not in r.output and "--trust-code" in r.output, r.output


def test_spectrum_never_runs_a_received_runs_hubconf(world, tmp_path):
    run = tmp_path / "in" / "theirs"
    hub_args = {"repo_or_dir": str(run), "source": "local", "model": "m"}
    received(world, tmp_path, "python:torch.hub:load", hub_args)
    marker = tmp_path / "hub-ran"
    (run / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef m(**k):\n    raise RuntimeError\n")
    line = one_line_error(cli("spectrum", run / "model.safetensors"), "python:torch.hub:load", "--trust-code")
    assert not marker.exists(), line  # before: the run's hubconf.py was executed


def test_study_status_never_calls_the_factory_its_plan_names(world, tmp_path, monkeypatch):
    from laser_tool.study.plan import request_of
    patch_study(monkeypatch)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes\n")
    request = request_of("quick", train_opts={"arch": "python:logging:basicConfig",
                                                      "arch_args": {"filename": str(victim), "filemode": "w", "force": True}})
    st = tmp_path / "st"
    st.mkdir()
    (st / "plan.json").write_text(json.dumps({"written_by": "laser-tool", "requests": [request], "steps": {}}))
    r = cli("study", "--preset", "quick", "--out", st, "--status", "--device", "cpu",
            "--data-dir", world / "data")
    assert victim.read_text() == "the user's notes\n", r.output  # before: the study replanned and called it
    assert r.exit_code != 0 and "--trust-code" in r.output, r.output


def test_the_working_directory_is_never_searched_for_a_factory(world, tmp_path, monkeypatch):
    """`compare .` beside a received run and the evil_factory.py shipped with it: even for a factory of
    that name the user once named, the module is looked up where their Python looks, never in the cwd."""
    trust.trust_factory("python:evil_factory_p27:small")  # remembered in this user's settings
    received(world, tmp_path, "python:evil_factory_p27:small", {})
    marker = tmp_path / "imported"
    (tmp_path / "in" / "evil_factory_p27.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n" + FACTORY)
    monkeypatch.chdir(tmp_path / "in")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path / "in"))])
    r = cli("compare", ".", "--no-speed")
    assert not marker.exists(), r.output  # before: the cwd was put on sys.path and the file imported
    assert "evil_factory_p27" not in sys.modules
    assert "cannot import evil_factory_p27" in r.output and "PYTHONPATH" in r.output, r.output


def test_a_factory_named_on_the_command_line_is_remembered_by_the_user_not_the_run(world, tmp_path, monkeypatch,
                                                                                  own_settings):
    """The own-model flow (docs/own-model.md): named once with --arch, the user's own later `reduce RUN` needs no
    repetition; the same run on a machine where nobody named it is refused until --trust-code."""
    mine = tmp_path / "code"
    mine.mkdir()
    (mine / "own_factory_p27.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(mine))  # PYTHONPATH=code: the explicit way to make it importable
    arch = "python:own_factory_p27:small"
    r = cli("train", "--arch", arch, "--dataset", "mnist", "--data-dir", world / "data", "--val-size", 50,
            "--epochs", 1, "--batch-size", 50, "--no-augment", "--device", "cpu", "--out", tmp_path, "--name", "mine")
    assert r.exit_code == 0, r.output
    assert json.loads(own_settings.read_text())["factories"] == [arch]
    assert "trust" not in (tmp_path / "mine" / "config.json").read_text()  # the run records no trust
    trust.begin_invocation()  # a later invocation: remembered, so it runs
    reduce = ["reduce", tmp_path / "mine", "-l", "*", "--rank", "2", "--store", "factored"]
    r = cli(*reduce, "--out", tmp_path / "mine-cut")
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))  # the run sent to another user
    trust.begin_invocation()
    refused(tmp_path / "mine", *reduce, "--out", tmp_path / "theirs-cut", words=[arch, "--trust-code"])
    assert not (tmp_path / "theirs-cut").exists()
    r = cli("--trust-code", *reduce, "--out", tmp_path / "theirs-cut")  # the documented opt-in
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "someone-else" / "laser-tool").exists()  # opting in for one call remembers nothing


def test_a_settings_file_that_cannot_be_read_trusts_nothing(own_settings):
    own_settings.parent.mkdir(parents=True)
    own_settings.write_text("{not json")
    with pytest.raises(trust.UntrustedCode):
        trust.check("python:logging:basicConfig")
    assert trust.trust_factory("python:a:b") and trust.remembered() == {"python:a:b"}


def in_a_fresh_process(cases, queue):
    """What a study's spawned worker does first (launch/base.child): take the study's trust, then load;
    one fresh invocation per (granted, arch) case."""
    out = []
    for granted, arch in cases:
        trust.begin_invocation()
        trust.grant(granted)
        try:
            trust.check(arch)
            out.append("allowed")
        except trust.UntrustedCode:
            out.append("refused")
    queue.put(out)


@pytest.mark.parametrize("trust_code", [False, True])
def test_a_studys_workers_hold_its_command_lines_trust_and_no_more(own_settings, trust_code):
    """`laser-tool --trust-code study --jobs 2 ...` (or a factory named only on that command line): the
    workers it spawns and the submitit jobs it submits hold the same trust, not the user's file alone;
    a worker of a fresh invocation inherits nothing."""
    import multiprocessing
    from laser_tool.launch.base import StepJob
    trust.begin_invocation(trust_code=trust_code)
    trust.trust_factory("python:named:here", remember=False)
    job = StepJob(None, own_settings.parent, "cpu", None, 1)
    study, fresh = trust.granted(), ((), False)
    cases = [(study, "python:named:here"), (job.trust, "python:named:here"),
             (study, "python:never:named"), (job.trust, "python:never:named"), (fresh, "python:named:here")]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=in_a_fresh_process, args=(cases, queue))
    p.start()
    got = queue.get(timeout=120)
    p.join(60)
    other = "allowed" if trust_code else "refused"
    assert got == ["allowed", "allowed", other, other, "refused"]


# ------------------------------------------------------------------ B. files the tool did not write


def test_search_report_never_replaces_a_file_the_tool_did_not_write(world, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    search = ["search", world / "runs" / "base", "--budget", "params:0.5", "--layers", "*.ffn.in", "--ranks",
              "params:0.5", "--val-images", 20, "--no-compose", "--device", "cpu"]
    before = snapshot(tmp_path)
    line = one_line_error(cli(*search, "--report", notes), "--report", str(notes), "not written by laser-tool")
    assert snapshot(tmp_path) == before, line  # before: replaced, exit 0
    report = tmp_path / "report.json"
    for _ in range(2):  # a report search wrote itself is replaced by the rerun
        r = cli(*search, "--report", report)
        assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["method"] == "svd"


# ------------------------------------------------------------------ E. nothing half made


def test_a_study_that_fails_its_data_check_writes_no_plan(tmp_path, monkeypatch):
    patch_study(monkeypatch)
    write_fashion(tmp_path / "data" / "fashion-mnist")
    st = tmp_path / "st"
    r = cli(*study_args(st, tmp_path, "--val-size", 100000))  # more validation images than the data has
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert not (st / "plan.json").exists() and not (st / "runs").exists()  # before: plan.json recorded
    r = cli(*study_args(st, tmp_path, "--val-size", 50))  # the corrected command is not "planned with other settings"
    assert r.exit_code == 0, r.output
    assert json.loads((st / "plan.json").read_text())["requests"][0]["train"] == {"val_size": 50}
