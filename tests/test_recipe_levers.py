"""The recipe levers of issue 28: `--ema DECAY` (an average of the weights that a run evaluates and saves,
trainers/ema.py) and `--schedule cosine|linear|wsd` (trainers/optim.py). The average follows its formula,
is what the run scores and writes, resumes bitwise, restarts at a progressive cut; each schedule follows
its formula; the defaults train exactly what the trainer trained before either existed; bad values are one
line. (The resume test of an EMA run is test_train.py's, parametrized.)"""
import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from laser_tool import load_run
from laser_tool.data import load_dataset
from laser_tool.errors import UserError
from laser_tool.models.evaluate import evaluate
from conftest import cli, one_line_error, tiny_cfg
from synthetic import write_tiny_mnist
from trainers import optim
from trainers import train as loop
from trainers.config import TrainConfig
from trainers.ema import EMA, decay_at
from trainers.train import train

SPE = 1000 // 50  # tiny_cfg: 1200 images - 200 held out, batches of 50


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: threads only add scheduling noise on a shared CPU."""


def ema_by_formula(start, sequence, decay, first=0):
    """avg_n = d_n * avg_{n-1} + (1 - d_n) * w_n, d_n = min(decay, (1 + n) / (10 + n)), in float64."""
    avg = start.double()
    for n, w in enumerate(sequence, start=first + 1):
        d = min(decay, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * w.double()
    return avg


def counters_of(run):
    with safe_open(run / "state.safetensors", "pt") as f:
        return json.loads(f.metadata()["counters"])


# ------------------------------------------------------------------ the average itself

def test_ema_of_a_known_sequence_equals_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.register_buffer("count", torch.zeros(()))
    start = model.weight.detach().clone()
    ema = EMA(model, 0.95)
    counters = {"global_step": 0}
    seq = [torch.randn(2, 3) for _ in range(60)]  # 60 steps: the warm-up (up to n = 170) and past it
    for i, w in enumerate(seq):
        with torch.no_grad():
            model.weight.copy_(w)
            model.count.fill_(i)
        counters["global_step"] += 1
        ema.update(model, counters)
    torch.testing.assert_close(ema.module.weight.double(), ema_by_formula(start, seq, 0.95), rtol=1e-6, atol=1e-6)
    assert ema.module.count.item() == 59  # buffers are copied, not averaged
    assert not model.weight.equal(ema.module.weight)
    assert [decay_at(0.999, n) for n in (1, 8, 10**6)] == [2 / 11, 0.5, 0.999]  # the warm-up, then DECAY
    # A restart (a progressive cut) starts the average and its warm-up again from the model of that moment.
    ema.restart(model, counters)
    assert counters["ema_start"] == 60 and ema.module.weight.equal(model.weight)
    more = [torch.randn(2, 3) for _ in range(5)]
    for w in more:
        with torch.no_grad():
            model.weight.copy_(w)
        counters["global_step"] += 1
        ema.update(model, counters)
    torch.testing.assert_close(ema.module.weight.double(), ema_by_formula(seq[-1], more, 0.95), rtol=1e-6,
                               atol=1e-6)


def test_an_ema_run_scores_and_saves_the_average_of_its_live_weights(data_dir, tmp_path, monkeypatch):
    """Every live weight after every optimizer step is recorded; the saved model is their average by the
    formula (not the live weights, which the resume point keeps), and validation and test score it."""
    live, real_step = [], loop.optimizer_step

    def step_and_record(job):
        if not live:
            live.append({k: v.detach().clone() for k, v in job.model.named_parameters()})  # the initial weights
        real_step(job)
        live.append({k: v.detach().clone() for k, v in job.model.named_parameters()})
    monkeypatch.setattr(loop, "optimizer_step", step_and_record)
    run = train(tiny_cfg(data_dir, tmp_path, epochs=1, ema=0.9), progress=False)
    assert len(live) == SPE + 1
    state, last, best = (load_file(run / f) for f in ("state.safetensors", "last.safetensors", "model.safetensors"))
    for k, v in last.items():
        assert torch.equal(state[f"ema.{k}"], v) and torch.equal(best[k], v), k  # one epoch: best is last
    for k in live[0]:
        torch.testing.assert_close(last[k].double(), ema_by_formula(live[0][k], [w[k] for w in live[1:]], 0.9),
                                   rtol=1e-5, atol=1e-6)
        assert torch.equal(state[f"model.{k}"], live[-1][k])  # the resume point keeps the live weights
    assert any(not torch.equal(last[k], live[-1][k]) for k in live[0])
    assert counters_of(run)["ema_start"] == 0
    # Validation (metrics.jsonl) and the test (final.json) scored the average.
    model, config = load_run(run)
    splits = load_dataset("mnist", str(data_dir), False, 200, 0, None)
    val_loss, val_acc = evaluate(model, splits.val_x, splits.val_y)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (row["val_loss"], row["val_acc"]) == pytest.approx((val_loss, val_acc), rel=1e-6)
    final = json.loads((run / "final.json").read_text())
    assert final["test_acc"] == final["test_acc_last"] == pytest.approx(evaluate(model, splits.test_x,
                                                                                 splits.test_y)[1])
    assert config["ema"] == config["train"]["ema"] == 0.9 and "EMA" in config["resolved"]["evaluated_and_saved"]


def test_a_progressive_ema_run_restarts_the_average_at_the_cut_and_resumes_bitwise(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, tmp_path / "a", epochs=2, ema=0.9, reduce_at="1.5", reduce_to="params:0.5",
                   reduce_layers=["*.ffn.*"])
    straight = train(cfg, progress=False)
    assert counters_of(straight)["ema_start"] == round(1.5 * SPE)
    a = load_file(straight / "state.safetensors")
    assert any(k.startswith("ema.") and k.endswith(".U") for k in a)  # the average has the cut's structure
    model, _ = load_run(straight)  # model.safetensors: the average, factored, loads as its config says
    assert torch.equal(dict(model.named_parameters())["blocks.0.ffn.fc_in.U"], a["ema.blocks.0.ffn.fc_in.U"])
    other = replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train(other, progress=False, _interrupt_at_step=33)  # 3 steps after the cut
    b = load_file(train(other, progress=False) / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the schedule shapes

@pytest.mark.parametrize("shape,step,expected", [
    ("cosine", 4, 5 / 10), ("linear", 4, 5 / 10), ("wsd", 4, 5 / 10),            # the shared warmup: (s+1)/W
    ("cosine", 10, 1.0), ("cosine", 55, 0.5 * (1 + math.cos(math.pi * 45 / 90))),
    ("cosine", 99, 0.5 * (1 + math.cos(math.pi * 89 / 90))),
    ("linear", 10, 1.0), ("linear", 55, 1 - 45 / 90), ("linear", 99, 1 - 89 / 90), ("linear", 100, 0.0),
    ("wsd", 10, 1.0), ("wsd", 79, 1.0), ("wsd", 80, 1.0), ("wsd", 90, 1 - 10 / 20), ("wsd", 99, 1 - 19 / 20),
    ("wsd", 100, 0.0),
])
def test_each_schedule_follows_its_formula(shape, step, expected):
    """100 steps, 10 of warmup, peak 2.0; wsd decays over the last 20 (from step 80)."""
    assert optim.lr_at(step, 100, 10, 2.0, shape) == pytest.approx(2.0 * expected, abs=1e-12)


def test_wsd_with_a_warmup_longer_than_its_stable_part_decays_right_after_it():
    assert optim.lr_at(89, 100, 90, 1.0, "wsd") == 1.0 and optim.lr_at(95, 100, 90, 1.0, "wsd") == 0.5


@pytest.mark.parametrize("shape,last_lrs", [("linear", [1 - 9 / 30, 1 - 29 / 30]), ("wsd", [1.0, 1 - 7 / 8])])
def test_a_run_trains_on_its_schedule_and_records_its_shape(data_dir, tmp_path, shape, last_lrs):
    """tiny_cfg: 40 steps, 10 of warmup; the metrics' lr is the last step's of each epoch (19 and 39)."""
    run = train(tiny_cfg(data_dir, tmp_path, schedule=shape), progress=False)
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([3e-3 * f for f in last_lrs], abs=1e-12)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["schedule"] == shape and config["schedule"]["total_steps"] == 2 * SPE
    assert config["schedule"]["kind"] == optim.SCHEDULE_KINDS[shape] + ", stepped per optimizer step"
    assert ("warmup-stable-decay" in config["schedule"]["kind"]) == (shape == "wsd")


# ------------------------------------------------------------------ the defaults change nothing

def old_lr_at(step, total_steps, warmup_steps, base_lr):
    """trainers/optim.lr_at as it was before --schedule (commit eeec71b), verbatim."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def test_defaults_train_what_the_trainer_trained_before_ema_and_schedule(data_dir, tmp_path, monkeypatch):
    """A run with ema=0 and schedule=cosine spelled out is bitwise a run through the code path before
    either existed: the old lr function (every lr, compared exactly), no average ever built, no EMA
    tensor or counter in the resume point, and the schedule's record in the old words."""
    assert TrainConfig().ema == 0.0 and TrainConfig().schedule == "cosine"
    for step in range(2 * SPE + 2):
        assert optim.lr_at(step, 2 * SPE, SPE // 2, 3e-3) == old_lr_at(step, 2 * SPE, SPE // 2, 3e-3)
    explicit = train(tiny_cfg(data_dir, tmp_path / "new", ema=0.0, schedule="cosine"), progress=False)

    def old_path(step, total, warmup, base, shape):
        assert shape == "cosine"
        return old_lr_at(step, total, warmup, base)

    def no_ema(*a, **k):
        raise AssertionError("an EMA was built for a run without --ema")
    monkeypatch.setattr(loop, "lr_at", old_path)
    monkeypatch.setattr(loop, "EMA", no_ema)
    before = train(tiny_cfg(data_dir, tmp_path / "old"), progress=False)
    for name in ("state.safetensors", "model.safetensors", "last.safetensors"):
        a, b = load_file(explicit / name), load_file(before / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not any(k.startswith("ema.") for k in load_file(explicit / "state.safetensors"))
    assert "ema_start" not in counters_of(explicit)
    config = json.loads((explicit / "config.json").read_text())
    assert config["schedule"]["kind"] == "linear warmup then cosine to 0, stepped per optimizer step"
    assert "ema_decay" not in config["resolved"]


# ------------------------------------------------------------------ bad values

@pytest.mark.parametrize("bad,words", [
    (["--ema", "1"], ["--ema", "[0, 1)", "0.999"]), (["--ema", "-0.1"], ["--ema", "[0, 1)"]),
    (["--ema", "nan"], ["--ema"]), (["--ema", "x"], ["--ema"]), (["--schedule", "step"], ["--schedule", "wsd"]),
])
def test_bad_values_are_one_line_before_any_data_is_read(tmp_path, bad, words):
    res = cli("train", "--dataset", "mnist", "--data-dir", tmp_path / "no-data-here", "--device", "cpu",
              "--out", tmp_path / "out", *bad)
    one_line_error(res, *words)
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_them_too():
    with pytest.raises(UserError, match=r"--ema 1.0 is outside \[0, 1\)"):
        TrainConfig(ema=1.0).validate()
    with pytest.raises(UserError, match="--schedule 'step': choose cosine, linear, wsd"):
        TrainConfig(schedule="step").validate()
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.lr_at(0, 10, 0, 1.0, "step")


def test_the_candidate_recipe_trains_within_quicks_flop_budget():
    """quick-narrow (docs/recipe.md, rounds 3-4) is compared with quick at equal training FLOPs: its
    12.2261 epochs on the 55,000 training images stay at or under quick's 2 epochs, and above 99% of them."""
    from laser_tool.data import fit_model
    from laser_tool.models import build_model, count_params
    from laser_tool.study.compute import per_step
    from trainers.config import build_config

    def flops(preset):
        cfg = build_config(preset, {})
        steps = round(cfg.epochs * math.floor(55_000 / cfg.batch_size))
        return steps * per_step(fit_model(cfg.model, cfg.dataset), cfg.batch_size), cfg
    quick, _ = flops("quick")
    narrow, cfg = flops("quick-narrow")
    assert 0.99 * quick <= narrow <= quick <= 4.9e12
    assert count_params(build_model(fit_model(cfg.model, cfg.dataset))) == 69_629
