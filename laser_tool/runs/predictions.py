"""predictions.safetensors: every run's predicted class per test (and validation) image, so any two
runs scored on the same images can be compared image by image (paired tests, analysis/paired.py).

Tensors (int16): `test` (predicted class per test image, in the dataset's test order), `test_labels`,
and where the run has a validation split, `val` and `val_labels`. The metadata names the dataset and
fingerprints both label sequences and the validation indices: two files are only paired when they
describe the same images in the same order.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..fileio import atomic_write_bytes, safetensors_header
from .schema import PREDICTIONS as FILE
META_KEY = "laser_tool_predictions"


def _sha(t) -> str:
    return hashlib.sha256(torch.as_tensor(t, dtype=torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def predictions_bytes(dataset: str, test, test_labels, val=None, val_labels=None, val_indices=None) -> bytes:
    """The file's bytes (for a run directory built in a temp folder and renamed into place)."""
    tensors = {"test": torch.as_tensor(test).to(torch.int16),
               "test_labels": torch.as_tensor(test_labels).to(torch.int16)}
    meta = dict(dataset=str(dataset), test_size=len(tensors["test"]), test_labels_sha=_sha(test_labels))
    if len(tensors["test"]) != len(tensors["test_labels"]):
        raise ValueError("test predictions and labels differ in length")
    if val is not None and len(val):
        tensors.update(val=torch.as_tensor(val).to(torch.int16), val_labels=torch.as_tensor(val_labels).to(torch.int16))
        meta.update(val_size=len(tensors["val"]), val_labels_sha=_sha(val_labels),
                    val_split_sha=_sha(val_indices if val_indices is not None else []))
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)})


def save_predictions(run_dir, dataset: str, test, test_labels, val=None, val_labels=None, val_indices=None) -> Path:
    """Write RUN/predictions.safetensors atomically; returns its path."""
    path = predictions_path(run_dir)
    atomic_write_bytes(path, predictions_bytes(dataset, test, test_labels, val, val_labels, val_indices))
    return path


def predictions_path(run_dir) -> Path:
    return Path(run_dir) / FILE


@dataclass
class Predictions:
    path: Path
    meta: dict
    tensors: dict

    def correct(self, split: str):
        """Bool tensor: was image i of `split` (test | val) classified right? None without that split."""
        if split not in self.tensors:
            return None
        return self.tensors[split] == self.tensors[f"{split}_labels"]


def load_predictions(run_dir):
    """(Predictions, None), or (None, why) when the run has no readable predictions file."""
    path = predictions_path(run_dir)
    if not path.is_file():
        return None, "no predictions.safetensors"
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        meta = json.loads(safetensors_header(data)["__metadata__"][META_KEY])
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same fact for the reader
        return None, f"predictions.safetensors unreadable ({type(e).__name__})"
    if "test" not in tensors or "test_labels" not in tensors:
        return None, "predictions.safetensors holds no test predictions"
    why = _inconsistent(tensors)
    if why:
        return None, f"predictions.safetensors is inconsistent ({why})"
    return Predictions(path, meta, tensors), None


def _inconsistent(tensors: dict):
    """Why the splits' predictions and labels cannot be compared image by image, or None."""
    for split in ("test", "val"):
        pred, labels = tensors.get(split), tensors.get(f"{split}_labels")
        if (pred is None) != (labels is None):
            return f"{split} predictions without their labels, or the reverse"
        if pred is not None and (pred.dim() != 1 or pred.shape != labels.shape):
            return f"{split}: {tuple(pred.shape)} predictions but {tuple(labels.shape)} labels"
    return None


def mismatch(a: Predictions, b: Predictions, split: str):
    """Why the two files cannot be paired on `split`, or None when they describe the same images."""
    ma, mb = a.meta, b.meta
    if ma.get("dataset") != mb.get("dataset"):
        return f"predictions are from different datasets ({ma.get('dataset')} vs {mb.get('dataset')})"
    if split not in a.tensors or split not in b.tensors:
        return f"a run has no {split} predictions"
    if len(a.tensors[split]) != len(b.tensors[split]):
        return f"{split} predictions differ in length ({len(a.tensors[split])} vs {len(b.tensors[split])})"
    if ma.get(f"{split}_labels_sha") != mb.get(f"{split}_labels_sha") or \
            (split == "val" and ma.get("val_split_sha") != mb.get("val_split_sha")):
        return f"{split} predictions are of different images (another {split} split or order)"
    return None
