"""`laser-tool import`: a user's trained weights as an ordinary run directory.

The model is built from its spec (fitted to the dataset), the weights are loaded strictly (keys and
shapes must match; with `new_head` the classifier is a fresh one of the dataset's class count, for a
fine-tune with `train --init-from`), and the model is scored on the dataset's validation and test
splits with the evaluation every run uses. The run directory is written whole (runs/writer.py), with
the split settings a reduction or a heal takes from it, so reduce, search, spectrum, heal and compare
treat it as a finished run.
"""
import hashlib
import time
from pathlib import Path

import torch

from laser_tool.data import fit_model, load_dataset
from laser_tool.device import resolve_device
from laser_tool.errors import UserError
from laser_tool.models import build_model, count_params
from laser_tool.models.evaluate import evaluate_with_predictions, precision_name
from laser_tool.models.surgery import slots
from laser_tool.runs.predictions import FILE as PREDICTIONS, predictions_bytes
from laser_tool.runs.safety import WRITER
from laser_tool.runs.weights import mismatch, read_weights
from laser_tool.runs.writer import write_run
from laser_tool.fileio import check_output_dir

from .config import TrainConfig
from .provenance import device_name, git_commit, versions


def head_keys(model) -> set:
    """State-dict keys of the model's classifier (the `head` slot)."""
    head = next((s for s in slots(model) if s.role == "head"), None)
    if head is None:
        return set()
    path = next(n for n, m in model.named_modules() if m is head.module)
    return {f"{path}.{k}" for k in head.module.state_dict()}


def load_into(model, tensors: dict, weights, new_head: bool) -> list:
    """Load `tensors` into `model` (strict; the head skipped with `new_head`); the keys left fresh."""
    expected = model.state_dict()
    skip = head_keys(model) if new_head else set()
    if new_head and not skip:
        raise UserError(f"--new-head: {type(model).__name__} has no classifier layer the tool can find")
    problems = mismatch(expected, tensors, skip)
    if problems:
        heads = set() if new_head else head_keys(model)
        other_head = any(k not in tensors or tuple(tensors[k].shape) != tuple(expected[k].shape) for k in heads)
        hint = " (the classifier differs: add --new-head for a fresh one)" if other_head else ""
        raise UserError(f"--weights {weights} does not fit the model: {'; '.join(problems)}{hint}; check --arch "
                        f"and --arch-arg against the model that saved it")
    bad = [k for k, v in tensors.items() if k not in skip and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"--weights {weights} holds non-finite values (in {', '.join(bad[:3])})")
    state = {k: (expected[k] if k in skip else tensors[k].to(expected[k].dtype)) for k in expected}
    model.load_state_dict(state, strict=True)
    return sorted(skip)


def check_split_settings(val_size, seed, train_subset, batch_size) -> None:
    """The split and evaluation settings, by train's rules (one place: TrainConfig.validate)."""
    if val_size == 0:  # its validation accuracy would read 0.00, and search and heal choose on validation
        raise UserError("--val-size 0 leaves no validation images, which search, heal and compare's --metric val "
                        "need; hold out at least 1 image (default 5000)")
    TrainConfig(val_size=val_size, seed=seed, train_subset=train_subset, eval_batch_size=batch_size).validate()


def import_run(spec, weights, dataset: str, out, data_dir=None, val_size=None, seed: int = 0,
               train_subset=None, new_head: bool = False, device="cpu", batch_size: int = 1000) -> Path:
    """Write run directory `out` from `weights` for `spec` on `dataset`; returns its path."""
    weights, out = Path(weights), Path(out)
    check_split_settings(val_size, seed, train_subset, batch_size)
    check_output_dir(out, inputs=[weights])
    tensors, fmt = read_weights(weights)
    splits = load_dataset(dataset, data_dir, False, val_size, seed, train_subset)
    spec = fit_model(spec, splits)
    torch.manual_seed(seed)  # a fresh head starts the same way every time
    model = build_model(spec)
    fresh = load_into(model, tensors, weights, new_head)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    t0 = time.perf_counter()
    val_loss, val_acc, val_pred = evaluate_with_predictions(model, splits.val_x, splits.val_y, batch_size, dev)
    test_loss, test_acc, test_pred = evaluate_with_predictions(model, splits.test_x, splits.test_y, batch_size, dev)
    split = dict(dataset=splits.name, val_size=val_size, seed=seed, train_subset=train_subset)
    config = {
        "kind": "import", "written_by": WRITER, "model": spec.to_dict(), "params": count_params(model),
        "import": {"weights": str(weights), "format": fmt, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                   "new_head": new_head, "fresh_keys": fresh},
        # The split settings a reduction or a heal (train --init-from) reads back, nested and flattened.
        "train": split, **split, "data_dir": data_dir, "name": out.name,
        "split": {"train": len(splits.train_x), "val": len(splits.val_x), "test": len(splits.test_x),
                  "val_indices": splits.val_indices, "source": splits.source},
        "versions": versions(), "git_commit": git_commit(), "threads": torch.get_num_threads(),
    }
    final = {"status": "complete", "kind": "import", "test_acc": test_acc, "val_acc": val_acc, "test_loss": test_loss,
             "val_loss": val_loss, "params": count_params(model), "epochs": 0, "train_seconds": None,
             "eval_seconds": round(time.perf_counter() - t0, 3), "device": device_name(dev), "dataset": splits.name,
             "arch": spec.arch, "seed": seed, "eval_precision": precision_name(None),
             "threads": torch.get_num_threads()}
    preds = predictions_bytes(splits.name, test_pred, splits.test_y, val_pred if len(splits.val_x) else None,
                              splits.val_y, splits.val_indices)
    write_run(out, {"final.json": final, PREDICTIONS: preds}, model.cpu(), config)
    return out
