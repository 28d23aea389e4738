"""Training: loss falls, resume is bitwise exact, crashes lose nothing, DDP matches, bad input is refused."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from laser_tool import load_run
from laser_tool.errors import UserError
from conftest import TINY, cli, one_line_error, tiny_cfg
from synthetic import write_tiny_mnist
from trainers.config import TrainConfig
from trainers.train import train



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


def test_loss_falls_and_run_files(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, tmp_path, epochs=4, lr=1e-2)
    run = train(cfg, progress=False)
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]   # chance level is ln 10 = 2.30
    final = json.loads((run / "final.json").read_text())
    assert final["status"] == "complete" and final["test_acc"] > 0.3   # chance is 0.1
    assert final["best_epoch"] == 1 + max(range(4), key=lambda i: hist[i]["val_acc"])
    written = json.loads((run / "config.json").read_text())
    assert written["split"]["val"] == 200 and len(written["split"]["val_indices"]) == 200
    assert written["schedule"]["steps_per_epoch"] == 1000 // 50
    model, mcfg = load_run(run)  # the checkpoint alone rebuilds its model
    assert mcfg["model"]["channels"] == 1 and mcfg["params"] == sum(p.numel() for p in model.parameters())
    # Per-image predictions of the selected checkpoint, in the dataset's test order, beside final.json.
    from laser_tool.runs.predictions import load_predictions
    preds, why = load_predictions(run)
    assert why is None and preds.meta["dataset"] == "mnist" and len(preds.tensors["test"]) == written["split"]["test"]
    assert preds.correct("test").float().mean().item() == pytest.approx(final["test_acc"])
    assert preds.correct("val").float().mean().item() == pytest.approx(final["val_acc"])
    # A second call finds the finished run and trains nothing.
    mtime = (run / "final.json").stat().st_mtime_ns
    assert train(cfg, progress=False) == run
    assert (run / "final.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_is_bitwise_identical(data_dir, tmp_path, ema):
    """With --ema too: the average (state's ema.*, saved as the run's models) resumes bitwise."""
    straight = train(tiny_cfg(data_dir, tmp_path / "a", ema=ema), progress=False)
    with pytest.raises(KeyboardInterrupt):  # stop mid-epoch 2 (20 steps per epoch)
        train(tiny_cfg(data_dir, tmp_path / "b", ema=ema), progress=False, _interrupt_at_step=27)
    resumed_dir = tmp_path / "b" / "run"
    assert not (resumed_dir / "final.json").exists()
    resumed = train(tiny_cfg(data_dir, tmp_path / "b", ema=ema), progress=False)
    a, b = load_file(straight / "state.safetensors"), load_file(resumed / "state.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) == (ema > 0)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("model.safetensors", "last.safetensors"):
        la, lb = load_file(straight / name), load_file(resumed / name)
        assert all(torch.equal(la[k], lb[k]) for k in la), name
    ma = (straight / "metrics.jsonl").read_text().splitlines()
    mb = (resumed / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "images_per_s")}
                           for x in lines]
    assert strip(ma) == strip(mb)


def test_fractional_epochs_train_their_steps_and_resume_exactly(data_dir, tmp_path):
    """--epochs 1.45 is round(1.45 x 20) = 29 optimizer steps: one whole pass and 9 steps of a second,
    the schedule over those 29; interrupted inside the short pass, the resumed run is bitwise the
    uninterrupted one."""
    straight = train(tiny_cfg(data_dir, tmp_path / "a", epochs=1.45), progress=False)
    config = json.loads((straight / "config.json").read_text())
    assert config["schedule"]["total_steps"] == 29 and config["train"]["epochs"] == 1.45
    hist = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert [h["train_images"] for h in hist] == [20 * 50, 9 * 50]
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(data_dir, tmp_path / "b", epochs=1.45), progress=False, _interrupt_at_step=24)
    resumed = train(tiny_cfg(data_dir, tmp_path / "b", epochs=1.45), progress=False)
    a, b = load_file(straight / "state.safetensors"), load_file(resumed / "state.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    assert TrainConfig(epochs=3.0).epochs == 3 and isinstance(TrainConfig(epochs=3.0).epochs, int)


def test_crash_between_writes_keeps_previous_checkpoint(data_dir, tmp_path, monkeypatch):
    cfg = tiny_cfg(data_dir, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(replace(cfg, epochs=2), progress=False, _interrupt_at_step=21)  # after epoch 1 is saved
    run = tmp_path / "run"
    before = load_file(run / "last.safetensors")
    import laser_tool.fileio as fileio
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("last.safetensors"):
            raise OSError("simulated power cut")
        real_replace(src, dst)
    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError):
        train(cfg, progress=False)
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    after = load_file(run / "last.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    load_run(run / "last.safetensors")
    assert train(cfg, progress=False) == run  # and the run still completes
    assert json.loads((run / "final.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_ddp_two_processes_match_single(data_dir, tmp_path, ema):
    """2-process gloo DDP vs one process on the same global batch: same losses within 1e-4 (with --ema,
    of the average, which every rank keeps of its unwrapped model and rank 0 scores and saves)."""
    common = ["train", "--arch", "vit-tiny", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16",
              "--mlp-dim", "64", "--patch-size", "7", "--dropout", "0", "--emb-dropout", "0",
              "--dataset", "mnist", "--data-dir", str(data_dir), "--val-size", "200", "--epochs", "1",
              "--batch-size", "50", "--lr", "3e-3", "--device", "cpu", "--out", str(tmp_path), "--no-augment",
              "--ema", ema]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "laser_tool", *common, "--name", "one"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29531", "-m", "laser_tool", *common, "--name", "two"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    two = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(one["train_loss"] - two["train_loss"]) < 1e-4
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-4
    wa, wb = load_file(tmp_path / "one" / "last.safetensors"), load_file(tmp_path / "two" / "last.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    sb = load_file(tmp_path / "two" / "state.safetensors")
    if ema != "0":
        assert all(torch.equal(sb[f"ema.{k}"], wb[k]) for k in wb)
    else:
        assert not any(k.startswith("ema.") for k in sb)


def test_refuses_a_different_run_in_the_same_directory(data_dir, tmp_path):
    args = ["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--dim", "32", "--depth", "1",
            "--heads", "2", "--dim-head", "16", "--mlp-dim", "64", "--patch-size", "7", "--val-size", "200",
            "--epochs", "1", "--batch-size", "100", "--out", str(tmp_path), "--name", "r", "--device", "cpu"]
    assert cli(*args).exit_code == 0
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    one_line_error(cli(*args[:-6], "--lr", "0.01", *args[-6:]), "different settings (lr)", "--overwrite")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    assert cli(*args[:-6], "--lr", "0.01", *args[-6:], "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.01


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    cfg = tiny_cfg(data_dir, tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, _interrupt_at_step=20)  # epoch 1 complete and saved
    good = load_file(tmp_path / "run" / "last.safetensors")
    import torch.nn.functional as F
    import trainers.train as loop

    class PoisonedF:  # the loss turns NaN on the 5th micro-batch of epoch 2
        calls = 0

        def __getattr__(self, name):
            return getattr(F, name)

        def cross_entropy(self, *a, **k):
            PoisonedF.calls += 1
            loss = F.cross_entropy(*a, **k)
            return loss * float("nan") if PoisonedF.calls >= 5 else loss
    monkeypatch.setattr(loop, "F", PoisonedF())
    with pytest.raises(UserError, match=r"non-finite at epoch 2, step \d+"):
        train(cfg, progress=False)
    kept = load_file(tmp_path / "run" / "last.safetensors")
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert not (tmp_path / "run" / "final.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_but_absent(data_dir, tmp_path):
    one_line_error(cli("train", "--dataset", "mnist", "--data-dir", data_dir, "--device", "cuda", "--out", tmp_path),
                   "no CUDA device")


def test_missing_data_is_one_line(tmp_path):
    one_line_error(cli("train", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path))


def test_unknown_preset(tmp_path):
    one_line_error(cli("train", "--preset", "nope", "--out", tmp_path), "unknown preset")


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_quick_preset_reaches_85_percent(tmp_path):
    res = cli("train", "--preset", "quick", "--out", tmp_path, "--name", "quick")
    assert res.exit_code == 0, res.output
    final = json.loads((tmp_path / "quick" / "final.json").read_text())
    print(f"quick preset: test acc {final['test_acc']:.4f}, {final['train_seconds']:.0f} s, {final['params']} params")
    assert final["test_acc"] >= 0.85


# ------------------------------------------------------------------ --init-from, recorded settings

def test_init_from_keeps_factored_layers_trains_and_never_ends_worse(data_dir, tmp_path):
    from laser_tool.posthoc.reduce import ReduceSettings, reduce_run
    base = train(tiny_cfg(data_dir, tmp_path, epochs=2, name="base"), progress=False)
    cut = reduce_run(base, ["blocks.0.ffn.*=2"], ReduceSettings(method="svd", store="factored", data_dir=data_dir),
                     out=tmp_path / "cut")
    res = cli("train", "--init-from", cut, "--out", tmp_path, "--name", "healed", "--epochs", "1", "--lr", "3e-4",
              "--warmup-epochs", "0", "--batch-size", "50", "--no-augment", "--device", "cpu", "--data-dir", data_dir)
    assert res.exit_code == 0, res.output
    healed = tmp_path / "healed"
    cfg, final = (json.loads((healed / f).read_text()) for f in ("config.json", "final.json"))
    # the source's structure and split; its reductions carried, so compare files it as healed
    assert cfg["model"]["layers"]["blocks.0.ffn.in"] == {"kind": "factored", "rank": 2, "bias": True}
    assert (cfg["dataset"], cfg["val_size"], cfg["seed"]) == ("mnist", 200, 0)
    assert cfg["split"]["val_indices"] == json.loads((base / "config.json").read_text())["split"]["val_indices"]
    assert cfg["reduction"] and cfg["heal"]["epochs"] == 1 and cfg["init_source"]["run"] == str(cut)
    model, _ = load_run(healed)
    assert type(model.blocks[0]["ffn"].fc_in).__name__ == "FactoredLinear"
    # it trained (the last weights moved) and the starting model was the epoch-0 candidate
    start = load_file(str(cut / "model.safetensors"))
    last = load_file(str(healed / "last.safetensors"))
    assert not torch.equal(start["blocks.0.ffn.fc_in.U"], last["blocks.0.ffn.fc_in.U"])
    hist = [json.loads(line) for line in (healed / "metrics.jsonl").read_text().splitlines()]
    assert final["init_val_acc"] == json.loads((cut / "final.json").read_text())["val_acc"]
    assert final["val_acc"] == max(final["init_val_acc"], *(h["val_acc"] for h in hist))
    assert final["best_epoch"] == (0 if final["val_acc"] == final["init_val_acc"] else 1)


def test_init_from_refuses_another_split_and_model_options(data_dir, tmp_path):
    base = train(tiny_cfg(data_dir, tmp_path, epochs=1, name="base"), progress=False)
    with pytest.raises(UserError, match="data split differs from the source's .*seed 1 vs 0"):
        train(tiny_cfg(data_dir, tmp_path, init_from=str(base), seed=1, name="other"), progress=False)
    res = cli("train", "--init-from", base, "--dim", "64", "--out", tmp_path)
    assert res.exit_code == 2 and res.output.strip() == (f"error: --init-from takes the model from {base}; "
                                                         f"drop --dim")
    assert not (tmp_path / "other").exists()


def test_config_records_request_and_resolved_values_apart(data_dir, tmp_path):
    run = train(tiny_cfg(data_dir, tmp_path, epochs=1, augment=True, decay_all=True), progress=False)
    cfg = json.loads((run / "config.json").read_text())
    final = json.loads((run / "final.json").read_text())
    assert cfg["augment"] is True and cfg["train"]["augment"] is True            # the request
    assert cfg["resolved"]["augment"]["crop_padding"] > 0                          # what ran (MNIST: shifts)
    assert cfg["amp"] == "auto" and cfg["resolved"]["amp"] == "fp32"             # CPU: autocast off
    assert cfg["decay_all"] is True and cfg["resolved"]["weight_decay_on"] == "every parameter"
    assert final["eval_precision"] == cfg["resolved"]["eval_precision"] == "fp32"


def test_compiled_cpu_run_resumes_exactly_and_trains_as_eager_does(data_dir, tmp_path):
    """--compile on the CPU (inductor's C++ backend): an interrupted compiled run (dropout on) resumes to the
    same weights as an uninterrupted one; without dropout (compiled dropout draws its own masks) it learns
    what the eager run learns, to rounding."""
    straight = train(tiny_cfg(data_dir, tmp_path / "a", epochs=1, compile=True), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(data_dir, tmp_path / "b", epochs=1, compile=True), progress=False, _interrupt_at_step=12)
    resumed = train(tiny_cfg(data_dir, tmp_path / "b", epochs=1, compile=True), progress=False)
    a, b = load_file(straight / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    no_dropout = replace(TINY, dropout=0.0, emb_dropout=0.0)
    eager = train(tiny_cfg(data_dir, tmp_path / "e", epochs=1, model=no_dropout), progress=False)
    compiled = train(tiny_cfg(data_dir, tmp_path / "c", epochs=1, model=no_dropout, compile=True), progress=False)
    c, e = load_file(compiled / "last.safetensors"), load_file(eager / "last.safetensors")
    for k in e:
        torch.testing.assert_close(c[k], e[k], rtol=1e-3, atol=1e-4)
    loss = lambda r: json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert loss(compiled) == pytest.approx(loss(eager), rel=1e-4)


# ------------------------------------------------------------------ recipe-neutral settings (vocab.RECIPE_NEUTRAL)

def test_recipe_neutral_settings_neither_split_a_compare_row_nor_block_a_resume(data_dir, tmp_path):
    """Two seeds of one recipe, one trained with --tensorboard, are one row of n = 2 in `compare`; and a
    finished run is found again (not refused) when only recipe-neutral settings differ."""
    pytest.importorskip("torch.utils.tensorboard")
    common = ["train", "--arch", "vit-tiny", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16",
              "--mlp-dim", "64", "--patch-size", "7", "--dataset", "mnist", "--data-dir", str(data_dir),
              "--val-size", "200", "--epochs", "1", "--batch-size", "100", "--no-augment", "--device", "cpu",
              "--out", str(tmp_path / "runs")]
    assert cli(*common, "--seed", "0", "--name", "s0").exit_code == 0
    assert cli(*common, "--seed", "1", "--name", "s1", "--tensorboard").exit_code == 0
    assert (tmp_path / "runs" / "s1" / "tb").is_dir() and not (tmp_path / "runs" / "s0" / "tb").exists()
    res = cli("compare", tmp_path / "runs", "--format", "json", "--no-speed")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [(r["label"], r["n"], sorted(r["seeds"])) for r in rows] == [("baseline", 2, [0, 1])]
    from trainers.train import settle_run_dir
    saved = TrainConfig.from_dict(json.loads((tmp_path / "runs" / "s0" / "config.json").read_text())["train"])
    neutral = replace(saved, tensorboard=True, eval_batch_size=7, compile=True, download=True, device="auto",
                      matched_to={"base_epochs": 1, "heal_epochs": 1}, lr_grid={"base_lr": 1e-3, "mult": 1})
    assert settle_run_dir(tmp_path / "runs" / "s0", neutral, resume=False, overwrite=False) is neutral
    with pytest.raises(UserError, match=r"different settings \(lr\)"):
        settle_run_dir(tmp_path / "runs" / "s0", replace(neutral, lr=0.5), resume=False, overwrite=False)
