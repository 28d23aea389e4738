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
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from laser_tool.data import canonical_name, fit_model, folder_defaults, is_folder, load_dataset
from laser_tool.device import resolve_device
from laser_tool.errors import UserError
from laser_tool.models import build_model, count_params
from laser_tool.models.evaluate import evaluate_with_predictions, precision_name
from laser_tool.models.surgery import slots
from laser_tool.runs.predictions import predictions_bytes
from laser_tool.runs.safety import WRITER
from laser_tool.runs.schema import FINAL, PREDICTIONS, ImportFinal
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
        # a fresh head helps only when the classifier is all that differs, not a model of another size
        only_head = other_head and not mismatch(expected, tensors, heads)
        hint = " (only the classifier differs: add --new-head for a fresh one)" if only_head else ""
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
    TrainConfig(val_size=val_size, seed=seed, train_subset=train_subset, eval_batch_size=batch_size).validate()


@dataclass(frozen=True)
class ImportRequest:
    """What `laser-tool import` is asked: the weights, the run directory to write, the data the model is
    scored on and split by (a built-in dataset or folder:PATH), and how it is evaluated. Built once by the
    command and handed on whole."""
    weights: Path
    dataset: str
    out: Path
    data_dir: str = None
    val_size: int = None
    seed: int = 0
    train_subset: int = None
    skip_bad_images: bool = False   # folder:PATH: leave unreadable files out (counted) instead of stopping
    new_head: bool = False
    device: str = "cpu"
    batch_size: int = 1000


def import_run(spec, request: ImportRequest):
    """Write run directory `request.out` from `request.weights` for `spec` on `request.dataset`; returns (its
    path, its ImportFinal: the accuracies it measured). For folder:PATH, a spec's image_size or channels of
    None is the folder's own (data/folder.py)."""
    r = request
    weights, out, dataset, seed, val_size = Path(r.weights), Path(r.out), r.dataset, r.seed, r.val_size
    check_split_settings(val_size, seed, r.train_subset, r.batch_size)
    check_output_dir(out, inputs=[weights])
    tensors, fmt = read_weights(weights)
    if is_folder(dataset):  # PATH made absolute, so a reduction or a heal re-opens it from anywhere
        dataset = canonical_name(dataset)
        spec = replace(spec, **dict(zip(("image_size", "channels"),
                                        folder_defaults(dataset, spec.image_size, spec.channels))))
    splits = load_dataset(dataset, r.data_dir, False, val_size, seed, r.train_subset, spec.image_size,
                          spec.channels, r.skip_bad_images)
    spec = fit_model(spec, splits)
    torch.manual_seed(seed)  # a fresh head starts the same way every time
    model = build_model(spec)
    fresh = load_into(model, tensors, weights, r.new_head)
    dev = resolve_device(r.device)
    model = model.to(dev).eval()
    t0 = time.perf_counter()
    val_loss, val_acc, val_pred = evaluate_with_predictions(model, splits.val_x, splits.val_y, r.batch_size, dev)
    test_loss, test_acc, test_pred = evaluate_with_predictions(model, splits.test_x, splits.test_y, r.batch_size,
                                                               dev)
    split = dict(dataset=splits.name, val_size=val_size, seed=seed, train_subset=r.train_subset)
    if r.skip_bad_images:  # recorded only when set, so imports of built-in datasets write what they always did
        split["skip_bad_images"] = True
    config = {
        "kind": "import", "written_by": WRITER, "model": spec.to_dict(), "params": count_params(model),
        "import": {"weights": str(weights), "format": fmt, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                   "new_head": r.new_head, "fresh_keys": fresh},
        # The split settings a reduction or a heal (train --init-from) reads back, nested and flattened.
        "train": split, **split, "data_dir": r.data_dir, "name": out.name,
        "split": {"train": len(splits.train_x), "val": len(splits.val_x), "test": len(splits.test_x),
                  "val_indices": splits.val_indices, "source": splits.source},
        "versions": versions(), "git_commit": git_commit(), "threads": torch.get_num_threads(),
    }
    final = ImportFinal(test_acc=test_acc, val_acc=val_acc, test_loss=test_loss, val_loss=val_loss,
                        params=count_params(model), epochs=0, train_seconds=None,
                        eval_seconds=round(time.perf_counter() - t0, 3), device=device_name(dev), dataset=splits.name,
                        arch=spec.arch, seed=seed, eval_precision=precision_name(None), threads=torch.get_num_threads())
    preds = predictions_bytes(splits.name, test_pred, splits.test_y, val_pred if len(splits.val_x) else None,
                              splits.val_y, splits.val_indices)
    write_run(out, {FINAL: final, PREDICTIONS: preds}, model.cpu(), config)
    return out, final
