"""The run files' schemas (laser_tool/runs/schema.py, runs/state.py): a run directory written in the
format of b2c8974 (before the schemas), built here by hand, and older shapes of it still load; the
schemas write the keys in the order the files have always had; one safetensors header parser."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import save as st_save

from laser_tool.fileio import safetensors_header
from laser_tool.models import ModelSpec, build_model
from laser_tool.runs.checkpoint import load_run
from laser_tool.runs.reader import check_input_run, find_run_dirs, read_run
from laser_tool.runs.safety import is_laser_run
from laser_tool.runs.schema import (ImportFinal, MetricsRow, ReducedFinal, TrainFinal, read_config, read_final,
                                    read_metrics, write_final)
from laser_tool.runs.state import read_state

SPEC = dict(arch="vit-tiny", image_size=28, channels=1, num_classes=10, patch_size=7, dim=32, depth=1, heads=2,
            dim_head=16, mlp_dim=64)
TRAIN_KEYS = ["dataset", "data_dir", "download", "val_size", "train_subset", "augment", "skip_bad_images", "epochs",
              "batch_size", "grad_accum", "lr", "weight_decay", "warmup_epochs", "grad_clip", "label_smoothing", "seed",
              "device", "amp", "compile", "decay_all", "init_from", "eval_batch_size", "out", "name", "reduce_at",
              "reduce_to", "reduce_layers", "reduce_method", "reduce_tolerance", "reduce_window", "tensorboard",
              "matched_to", "lr_grid"]
# final.json's keys as b2c8974's writers put them (trainers/records.py, posthoc/reduce.py, trainers/importing.py).
TRAIN_FINAL = ["status", "kind", "test_acc", "test_acc_last", "val_acc", "val_acc_last", "best_epoch", "epochs",
               "params", "train_seconds", "images_per_s", "device", "dataset", "arch", "seed", "eval_precision",
               "threads"]
REDUCED_FINAL = ["status", "kind", "parent", "test_acc", "val_acc", "test_loss", "val_loss", "params",
                 "params_before", "test_acc_before", "val_acc_before", "train_seconds", "reduce_seconds", "device",
                 "eval_precision"]
IMPORT_FINAL = ["status", "kind", "test_acc", "val_acc", "test_loss", "val_loss", "params", "epochs",
                "train_seconds", "eval_seconds", "device", "dataset", "arch", "seed", "eval_precision", "threads"]
METRICS_ROW = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_images", "seconds",
               "images_per_s"]


def b2c8974_config(model: dict, params: int) -> dict:
    """config.json of a training run, with the keys (and their order) of b2c8974's run_config."""
    train = {k: None for k in TRAIN_KEYS} | dict(dataset="mnist", val_size=4, epochs=2, seed=3, name="old")
    train_dict = dict(train, model=model)
    return {"kind": "train", "written_by": "laser-tool", "train": train_dict, "model": model, "params": params,
            "schedule": {"kind": "linear warmup then cosine to 0, stepped per optimizer step", "steps_per_epoch": 2,
                         "warmup_steps": 1, "total_steps": 4},
            "batching": {"micro_batch_per_rank": 2, "world_size": 1, "grad_accum": 1},
            "split": {"train": 4, "val": 4, "test": 10, "val_indices": [0, 1, 2, 3], "source": "files"},
            "resolved": {"augment": {}, "amp": "fp32", "eval_precision": "fp32", "weight_decay_on": "matrices (ndim >= 2)"},
            "versions": {"torch": torch.__version__}, "git_commit": "b2c8974", "threads": 1, **train}


def write_b2c8974_run(run, digests=True, written_by=True, metrics=None):
    """A finished training run as b2c8974 wrote it, file by file, without laser-tool's writers."""
    run.mkdir()
    spec = ModelSpec.from_dict(SPEC)
    torch.manual_seed(0)
    model = build_model(spec)
    config = b2c8974_config(spec.to_dict(), sum(p.numel() for p in model.parameters()))
    if not written_by:  # runs from before "written_by" are recognised by their shape
        config.pop("written_by")
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                      metadata={"laser_tool_config": json.dumps(config)})
    (run / "model.safetensors").write_bytes(weights)
    (run / "last.safetensors").write_bytes(weights)
    rows = metrics or [dict(epoch=e, train_loss=2.0 / e, train_acc=0.2 * e, val_loss=1.5, val_acc=0.25 * e,
                            lr=1e-3, train_images=4, seconds=0.5, images_per_s=8.0) for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = torch.arange(10, dtype=torch.int16)
    guesses = torch.where(torch.arange(10) < 7, labels, (labels + 1) % 10).to(torch.int16)  # 7 of 10 right
    sha = hashlib.sha256(torch.arange(10, dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]
    preds = st_save({"test": guesses, "test_labels": labels}, metadata={"laser_tool_predictions": json.dumps(
        dict(dataset="mnist", test_size=10, test_labels_sha=sha))})
    (run / "predictions.safetensors").write_bytes(preds)
    counters = dict(epoch=2, step_in_epoch=0, global_step=4, best_val_acc=0.5, best_epoch=2, history=rows, partial=None)
    (run / "state.safetensors").write_bytes(st_save(
        {**{f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, "rng.cpu": torch.get_rng_state()},
        metadata={"counters": json.dumps(counters), "param_groups": "[]", "scaler": "{}", "config": json.dumps(config)}))
    final = dict(zip(TRAIN_FINAL, ["complete", "train", 0.7, 0.6, 0.5, 0.5, 2, 2, config["params"], 1.0, 8.0, "cpu",
                                   "mnist", "vit-tiny", 3, "fp32", 1]))
    if digests:
        final["digests"] = {name: hashlib.sha256((run / name).read_bytes()).hexdigest()
                            for name in ("predictions.safetensors", "config.json", "model.safetensors")}
    (run / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    return model


def test_a_run_directory_in_b2c8974s_format_loads(tmp_path):
    run = tmp_path / "old"
    model = write_b2c8974_run(run)
    got = read_run(run)
    assert (got.status, got.reason) == ("complete", "")
    assert (got.acc, got.val_acc, got.seed, got.config["train"]["epochs"]) == (0.7, 0.5, 3, 2)
    assert find_run_dirs(tmp_path) == [run] and is_laser_run(run)
    check_input_run(run, "--init-from")  # its final.json vouches for its files
    rows, problem = read_metrics(run)
    assert problem is None and [r.epoch for r in rows] == [1, 2] and rows[1].val_acc == 0.5 and rows[0].extra == {}
    assert read_final(run)[0]["best_epoch"] == 2 and read_config(run)[0]["kind"] == "train"
    loaded, config = load_run(run)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    point = read_state(run / "state.safetensors")
    assert point.counters["epoch"] == 2 and point.config == config and "rng.cpu" in point.tensors
    assert read_state(run / "state.safetensors", tensors=False).tensors == {}


def test_older_shapes_still_load(tmp_path):
    """No digests in final.json, no written_by in config.json, metrics rows with fewer keys or extra ones."""
    run = tmp_path / "older"
    rows = [dict(epoch=1, train_loss=2.0, val_acc=0.3), dict(epoch=2, val_acc=0.5, spectral={"fc": {"srank": 2.0}})]
    write_b2c8974_run(run, digests=False, written_by=False, metrics=rows)
    assert read_run(run).status == "complete" and is_laser_run(run)
    got, problem = read_metrics(run)
    assert problem is None and (got[0].train_loss, got[0].train_acc, got[0].images_per_s) == (2.0, None, None)
    assert got[1].extra == {"spectral": {"fc": {"srank": 2.0}}}


def test_bad_files_are_problems_not_exceptions(tmp_path):
    run = tmp_path / "bad"
    write_b2c8974_run(run)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n[2]\n')
    rows, problem = read_metrics(run)
    assert len(rows) == 1 and problem == "metrics.jsonl line 2 is not an object"
    (run / "final.json").write_text("[]")
    assert read_final(run) == (None, "final.json is not an object")
    assert read_run(run).status == "corrupt"
    (run / "config.json").unlink()
    assert read_config(run) == (None, "no config.json")


def test_the_schemas_write_the_keys_in_b2c8974s_order(tmp_path):
    train = TrainFinal(*range(15)).to_dict()
    assert list(train) == TRAIN_FINAL and train["kind"] == "train"
    assert list(TrainFinal(*range(15), init_val_acc=0.4).to_dict()) == TRAIN_FINAL + ["init_val_acc"]
    assert list(ReducedFinal(*range(13)).to_dict()) == REDUCED_FINAL
    assert list(ImportFinal(*range(14)).to_dict()) == IMPORT_FINAL
    row = MetricsRow(*range(9), extra={"spectral": {}})
    assert list(row.to_dict()) == METRICS_ROW + ["spectral"] and MetricsRow.from_dict(row.to_dict()) == row


def test_write_final_vouches_for_the_files_beside_it(tmp_path):
    run = tmp_path / "run"
    write_b2c8974_run(run)
    preds = (run / "predictions.safetensors").read_bytes()
    for name in ("final.json", "predictions.safetensors"):
        (run / name).unlink()
    write_final(run, TrainFinal(0.7, 0.6, 0.5, 0.5, 2, 2, 1, 1.0, 8.0, "cpu", "mnist", "vit-tiny", 3, "fp32", 1),
                predictions=preds)
    assert (run / "predictions.safetensors").read_bytes() == preds
    assert read_run(run).status == "complete"
    assert list(json.loads((run / "final.json").read_text())["digests"]) == \
        ["predictions.safetensors", "config.json", "model.safetensors"]
    (run / "config.json").write_text((run / "config.json").read_text() + " ")  # edited after the fact
    assert read_run(run).status == "mismatch"


def test_one_safetensors_header_parser(tmp_path):
    blob = st_save({"x": torch.zeros(2, 3)}, metadata={"k": "v"})
    (tmp_path / "f.safetensors").write_bytes(blob)
    header = safetensors_header(blob)
    assert header == safetensors_header(tmp_path / "f.safetensors")
    assert header["__metadata__"] == {"k": "v"} and header["x"]["shape"] == [2, 3]
    for broken in (blob[:5], blob[:20], (10 ** 6).to_bytes(8, "little") + blob[8:], (2).to_bytes(8, "little") + b"[]"):
        with pytest.raises(ValueError):
            safetensors_header(broken)
