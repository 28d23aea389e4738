"""What the tests share: the strict one-line-error check, the CLI runner, the tiny model and run, the
shrunk quick study. Plain helpers are imported as `from conftest import ...` (pytest puts tests/ on
sys.path, as for synthetic.py); fixtures need no import."""
import hashlib
import json
import struct
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from laser_tool.cli import main
from laser_tool.data import files as data
from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.models.evaluate import evaluate
from laser_tool.posthoc import reduce as reducer
from laser_tool.runs.checkpoint import save_model
from laser_tool.runs.predictions import save_predictions
from laser_tool import study
from laser_tool.study import frontier
from trainers import presets
from trainers import train as trainer
from trainers.config import TrainConfig

# CPU-sized model settings shared by the model and CLI tests (n_dyad 4 divides every width here).
SMALL = dict(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128, image_size=16, patch_size=4)
# The tiny ViT the training tests train on 28px MNIST-format images (16 patches of 7), in a few seconds.
TINY = ModelSpec(arch="vit-tiny", dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64, patch_size=7,
                 dropout=0.1, emb_dropout=0.1)


def tiny_cfg(data_dir, out, **kw):
    """A TrainConfig of TINY on the synthetic MNIST in data_dir, with `kw` over it. No augmentation: the
    synthetic task is then learnt in a few dozen steps (test_train's quick-preset test augments real data)."""
    base = TrainConfig(model=TINY, dataset="mnist", data_dir=str(data_dir), val_size=200, epochs=2, augment=False,
                       batch_size=50, lr=3e-3, warmup_epochs=0.5, weight_decay=0.01, device="cpu",
                       out=str(out), name="run")
    return replace(base, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _clock_only_where_tested(request, monkeypatch):
    """Timing models and layers (every compare and study report, every factored reduce) exports each row to
    ONNX and runs it for seconds; only the tests marked `timing` pay for it, and they test it. Elsewhere
    rows get no latency and cuts no timing warning, which nothing else reads."""
    if request.node.get_closest_marker("timing") is None:
        monkeypatch.setattr("laser_tool.analysis.compare.measure_latencies", lambda *a, **k: {})
        monkeypatch.setattr("laser_tool.posthoc.reduce.no_time_saved", lambda *a, **k: [])
        monkeypatch.setattr("laser_tool.posthoc.search.no_time_saved", lambda *a, **k: [])


@pytest.fixture
def small():
    return dict(SMALL)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core box OpenMP spinning makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_per_module():
    """one_thread for a whole module (`pytestmark = pytest.mark.usefixtures(...)`): a 96x32 SVD took
    0.6 s with 2 spinning threads and 1 ms with one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def isolated(monkeypatch):
    """No dataset found in the default or system folders: a test sees only the data it wrote."""
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [])
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})


# ------------------------------------------------------------------ the command line

def cli(*args):
    """`laser-tool ARGS` in this process (arguments may be paths or numbers)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, *words):
    """A refused command: a non-zero exit, handled (SystemExit, not a crash), exactly one line of output
    starting with "error: " and naming every one of `words`, no traceback. Returns the line."""
    out = res.output
    assert res.exit_code not in (0, None), (res.exit_code, out)
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def hashes(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder`: to show a command left it untouched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ a tiny trained run (post-hoc tests)

def _idx(arr, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_mnist(folder, n_train=600, n_test=200, seed=0):
    """Class templates plus noise, in the MNIST IDX format data.py reads."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, 28, 28)).astype(np.float32)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = np.clip(0.6 * templates[y] + rng.normal(0, 50, (n, 28, 28)) + 50, 0, 255).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(x, 0x803))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(y.astype(np.uint8), 0x801))


# The post-hoc tests' model settings (any arch): TINY's widths with two blocks and no dropout.
TINY_RUN = dict(dim=TINY.dim, heads=TINY.heads, dim_head=TINY.dim_head, mlp_dim=TINY.mlp_dim,
                patch_size=TINY.patch_size, image_size=28, channels=1, num_classes=10, depth=2, dropout=0.0,
                emb_dropout=0.0)


def make_run(root: Path, name="base", steps=40, **spec_kw):
    """A finished-looking run directory: config.json, model.safetensors, final.json."""
    datadir = root / "data"
    if not datadir.exists():
        write_mnist(datadir)
    spec = ModelSpec(**{"arch": "vit-tiny", **TINY_RUN, **spec_kw})
    cfg = dict(model=spec.to_dict(), dataset="mnist", data_dir=str(datadir), val_size=100, train_subset=None,
               seed=0, epochs=1)
    sp = data.load_dataset("mnist", str(datadir), False, 100, 0, None)
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(sp.train_x), (32,), generator=g)
        loss = F.cross_entropy(model(sp.train_x[i].float() / 255), sp.train_y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    run = root / name
    run.mkdir()
    save_model(run / "model.safetensors", model, cfg)
    (run / "config.json").write_text(json.dumps(cfg))
    val, test = evaluate(model, sp.val_x, sp.val_y)[1], evaluate(model, sp.test_x, sp.test_y)[1]
    (run / "final.json").write_text(json.dumps(dict(status="complete", test_acc=test, val_acc=val,
                                                    params=count_params(model), train_seconds=1.0, device="cpu")))
    return run


# ------------------------------------------------------------------ the quick study, shrunk

TINY_PRESET = {
    "model": dict(arch="vit-tiny", dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, patch_size=7,
                  dropout=0.0, emb_dropout=0.0),
    "dataset": "fashion-mnist", "epochs": 1, "batch_size": 50, "lr": 1e-3, "weight_decay": 0.0,
    "warmup_epochs": 0.0, "grad_clip": 1.0, "val_size": 50,
}


def write_fashion(folder, n_train=250, n_test=60):
    """Fashion-MNIST in its real IDX format (big-endian magic and dims, then uint8 data)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n, dtype=np.uint8)
        x = (rng.integers(0, 60, (n, 28, 28)) + y[:, None, None] * 19).astype(np.uint8)  # learnable a little
        for base, arr, magic in zip(data.IDX_FILES[split], (x, y), (0x803, 0x801)):
            (folder / base).write_bytes(_idx(arr, magic))


# The quick frontier, shrunk: two budgets of attention + FFN, every family of the main job.
TINY_FRONTIER = frontier.Frontier("quick", (0.5, 0.25), "all",
                                  ("narrower", "lowrank", "lowrank-structured", "progressive", "svd", "whiten"),
                                  heal_epochs=1)
# The shape of the old row grid, for the runner and fault tests: baseline, narrower and low-rank FFN at
# half the parameters, the baseline cut post hoc with svd and whiten (3 trains, 2 reductions).
SMALL_FRONTIER = frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "lowrank", "svd", "whiten"))


# Two families at one budget (baseline, narrower, svd cut: 3 runs), for the study-trust tests.
TWO = frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "svd"))


def patch_two_family_study(mp):
    """Point the quick preset and frontier at the tiny two-family study, and the data search at nothing."""
    mp.setattr(data, "DEFAULT_ROOTS", [])
    mp.setattr(data, "SYSTEM_DIRS", {})
    mp.setitem(presets.PRESETS, "quick", TINY_PRESET)
    mp.setitem(frontier.FRONTIERS, "quick", TWO)


def study_args(out, tmp, *more):
    """`study` on the tiny quick preset, CPU, data under tmp/data."""
    return ["study", "--preset", "quick", "--out", out, "--device", "cpu", "--data-dir", tmp / "data", *more]


@pytest.fixture
def tiny_study(tmp_path, monkeypatch, isolated):
    """The quick frontier on a tiny model and tiny data; counts the calls that do the work."""
    monkeypatch.setitem(presets.PRESETS, "quick", TINY_PRESET)
    monkeypatch.setitem(frontier.FRONTIERS, "quick", TINY_FRONTIER)
    write_fashion(tmp_path / "data" / "fashion-mnist")
    calls = {"train": [], "reduce": [], "heal": []}
    real_train, real_reduce = trainer.train, reducer.reduce_run_budgets

    def train(cfg, *a, **k):  # healing is a trainer run started from the reduced run (--init-from)
        calls["heal" if cfg.init_from else "train"].append(cfg.name)
        return real_train(cfg, *a, **k)

    def reduce(run, selectors_by_budget, *a, **k):
        calls["reduce"].append(sorted(selectors_by_budget))
        return real_reduce(run, selectors_by_budget, *a, **k)
    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(reducer, "reduce_run_budgets", reduce)
    return tmp_path, calls


def train_step_80(out, data_dir):
    """A train step with 80 optimizer steps per epoch (the tiny preset, batch 10 on 800 images)."""
    cfg = study.train_config("quick", dict(seed=0, out=str(out), device="cpu", data_dir=str(data_dir), name="run"))
    cfg = replace(cfg, batch_size=10, epochs=3)
    return study.Step("train", "run", "laser-tool train ...", cfg=cfg)


# ------------------------------------------------------------------ run directories written, not trained (compare)

# TINY on 8px images (4 patches), two blocks, no dropout: built only to count and time, never trained.
COMPARE_TINY = replace(TINY, image_size=8, channels=1, num_classes=10, patch_size=4, depth=2, dropout=0.0,
                       emb_dropout=0.0)


def written_run(root, name, acc, seed=0, spec=COMPARE_TINY, dataset="fashion-mnist", params=10_000, reduction=None,
                final=True, model=False, epochs=2, heal=None, parent=None, correct=None, pred_dataset=None,
                train=None, **final_extra):
    """A run directory as the trainer / reducer write it (config.json flattened keys + model spec).
    `correct` (bools, one per test image) also writes predictions.safetensors; `train` a "train" entry."""
    d = root / name
    d.mkdir(parents=True)
    config = {"kind": "train", "model": spec.to_dict(), "dataset": dataset, "seed": seed, "epochs": epochs,
              "lr": 1e-3, "batch_size": 32}
    if train is not None:
        config["train"] = train
    if reduction:
        config.update(kind="post-hoc", reduction=reduction, parent=str(parent or root / "parent"))
    if correct is not None:
        c = torch.as_tensor(correct, dtype=torch.bool)
        y = torch.arange(len(c)) % 10
        save_predictions(d, pred_dataset or dataset, torch.where(c, y, (y + 1) % 10), y)
        acc = c.float().mean().item()
    if heal:
        config["heal"] = {"epochs": heal}
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": acc}) + "\n")
    if model:
        m = build_model(spec)
        params = count_params(m)
        save_model(d / "model.safetensors", m, config)
    if final:
        (d / "final.json").write_text(json.dumps({"status": "complete", "test_acc": acc, "params": params,
                                                  "train_seconds": 10.0 + seed, **final_extra}))
    return d


def ranks(role, r, depth=2):
    """{layer: rank} for one role (as `ffn.in`) in every block."""
    return {f"blocks.{b}.{role}": r for b in range(depth)}


def red(method, role, r):
    """The reduction entry a post-hoc run's config records for a cut of one role in every block."""
    return [{"method": method, "ranks": ranks(role, r), "store": "factored"}]


def user_factory(tmp_path, monkeypatch, module: str, source: str) -> str:
    """`python:MODULE` for a factory module of the user's written from `source` into tmp_path, importable as
    PYTHONPATH=DIR makes it (the working directory is never searched), with the user's settings, where a
    factory named with --arch is remembered (models/trust.py), in a temp dir."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"python:{module}"
