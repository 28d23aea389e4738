"""The files of a run directory: their names, and the schema, the reader and the writer of each JSON
file. No module outside laser_tool/runs/ names a run file (tests/test_layout.py checks it).

    RUN/config.json              what was asked and built: read_config / write_config (below)
    RUN/metrics.jsonl            one MetricsRow per finished epoch: read_metrics / write_metrics
    RUN/final.json               the result, written last: TrainFinal | ReducedFinal | ImportFinal;
                                 read_final / write_final
    RUN/model.safetensors        the selected checkpoint (best by validation), checkpoint.py
    RUN/last.safetensors         the last epoch's checkpoint, checkpoint.py
    RUN/state.safetensors        the resume point, state.py
    RUN/predictions.safetensors  per-image predictions, predictions.py
    RUN/reduce.json              a post-hoc reduction's report (per layer): read_reduce_report
    RUN/search.json              a rank search's report, beside reduce.json
    RUN/export/latency.json      the exported model's latency, latency.py

config.json stays a dict: its keys follow the run's kind ("train": trainers/records.py's run_config;
"post-hoc": the parent's config plus a "reduction" list; "import"), it is written as built and its
bytes are digested by final.json, and every key an older run holds is read as it is.
"""
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, deferred_commit

CONFIG, FINAL, METRICS = "config.json", "final.json", "metrics.jsonl"
MODEL, LAST, STATE = "model.safetensors", "last.safetensors", "state.safetensors"
PREDICTIONS, REDUCE, SEARCH = "predictions.safetensors", "reduce.json", "search.json"
LATENCY = "export/latency.json"
# The files final.json summarises: it records their digests, and every read checks them, so a swapped or
# edited file (another run's checkpoint or predictions, a hand-edited config) is a corrupt run, not a row.
DIGESTED = (CONFIG, MODEL, PREDICTIONS)


def _read_json(path: Path):
    """(object, None) or (None, why)."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} does not parse ({type(e).__name__}: {str(e)[:60]})"


def model_path(run_dir, last: bool = False) -> Path:
    """The run's selected checkpoint (best by validation), or with last=True the last epoch's."""
    return Path(run_dir) / (LAST if last else MODEL)


# ---------------------------------------------------------------------------------------------
# config.json


def config_path(run_dir) -> Path:
    return Path(run_dir) / CONFIG


def read_config(run_dir):
    """(config, None), or (None, why) where the run has no config.json or it does not parse. Any JSON
    value is returned as it is: what a caller needs of it (an object, a model spec) it checks."""
    path = config_path(run_dir)
    if not path.exists():
        return None, f"no {CONFIG}"
    return _read_json(path)


def write_config(run_dir, config: dict) -> None:
    atomic_write_json(config_path(run_dir), config)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


@dataclass
class MetricsRow:
    """One line of metrics.jsonl: an epoch's training and validation figures. A field an older line
    lacks reads as None; keys beyond these (a progressive run's `spectral` statistics) go in `extra`,
    written after them."""
    epoch: int = None
    train_loss: float = None
    train_acc: float = None
    val_loss: float = None
    val_acc: float = None
    lr: float = None
    train_images: int = None
    seconds: float = None
    images_per_s: float = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    @classmethod
    def from_dict(cls, row: dict) -> "MetricsRow":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in row.items() if k in known},
                   extra={k: v for k, v in row.items() if k not in known})


def metrics_path(run_dir) -> Path:
    return Path(run_dir) / METRICS


def read_metrics(run_dir):
    """([MetricsRow] of the lines that parse, problem or None): reading stops at the first bad line."""
    path = metrics_path(run_dir)
    if not path.exists():
        return [], None
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        return [], f"{METRICS} unreadable ({type(e).__name__})"
    rows = []
    for i, ln in enumerate(lines, 1):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            return rows, f"{METRICS} line {i} does not parse"
        if not isinstance(row, dict):
            return rows, f"{METRICS} line {i} is not an object"
        rows.append(MetricsRow.from_dict(row))
    return rows, None


def write_metrics(run_dir, rows) -> None:
    """The whole file, atomically: one JSON line per row (a MetricsRow or its dict)."""
    dicts = (r.to_dict() if isinstance(r, MetricsRow) else r for r in rows)
    atomic_write_text(metrics_path(run_dir), "".join(json.dumps(r) + "\n" for r in dicts))


# ---------------------------------------------------------------------------------------------
# final.json: "status" and "kind" first, then the kind's fields, then the digests of DIGESTED.
# A run that did not finish has none; status "complete" is the only one written today (older runs may
# hold another, with "error" or "reason").


@dataclass
class Final:
    KIND: ClassVar[str] = ""
    OPTIONAL: ClassVar[tuple] = ()  # fields left out of the file when None

    def to_dict(self) -> dict:
        out = {"status": "complete", "kind": self.KIND}
        out.update({f.name: getattr(self, f.name) for f in fields(self)
                    if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)})
        return out


@dataclass
class TrainFinal(Final):
    """A trained run: test accuracy of the best-by-validation checkpoint (`test_acc`) and of the last."""
    KIND: ClassVar[str] = "train"
    OPTIONAL: ClassVar[tuple] = ("init_val_acc",)
    test_acc: float
    test_acc_last: float
    val_acc: float
    val_acc_last: float
    best_epoch: int
    epochs: float
    params: int
    train_seconds: float
    images_per_s: float
    device: str
    dataset: str
    arch: str
    seed: int
    eval_precision: str
    threads: int
    init_val_acc: float = None  # a fine-tune's starting model on validation (the epoch-0 candidate)


@dataclass
class ReducedFinal(Final):
    """A post-hoc reduction: its scores, and its parent's before it was cut."""
    KIND: ClassVar[str] = "post-hoc"
    parent: str
    test_acc: float
    val_acc: float
    test_loss: float
    val_loss: float
    params: int
    params_before: int
    test_acc_before: float
    val_acc_before: float
    train_seconds: float  # the parent's: the training cost of the weights this run holds
    reduce_seconds: float
    device: str
    eval_precision: str


@dataclass
class ImportFinal(Final):
    """Weights trained elsewhere, scored on the dataset's split."""
    KIND: ClassVar[str] = "import"
    test_acc: float
    val_acc: float
    test_loss: float
    val_loss: float
    params: int
    epochs: int
    train_seconds: float
    eval_seconds: float
    device: str
    dataset: str
    arch: str
    seed: int
    eval_precision: str
    threads: int


def final_path(run_dir) -> Path:
    return Path(run_dir) / FINAL


def read_final(run_dir):
    """(final.json as a dict, None), or (None, why). The dict keeps every key the file holds, so runs
    written by older versions read as they are; their status and accuracy are checked by reader.py."""
    final, why = _read_json(final_path(run_dir))
    if why is None and not isinstance(final, dict):
        return None, f"{FINAL} is not an object"
    return final, why


def write_final(run_dir, final: Final, predictions: bytes = None) -> None:
    """final.json with the digests of the files it summarises; `predictions` (the file's bytes) land
    together with it."""
    with deferred_commit():
        if predictions is not None:
            atomic_write_bytes(Path(run_dir) / PREDICTIONS, predictions)
        written = {PREDICTIONS: predictions} if predictions is not None else None
        atomic_write_json(final_path(run_dir), dict(final.to_dict(), digests=digests(run_dir, written)))


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digests(run_dir, written=None) -> dict:
    """{file: sha256} of the summarised files a run directory holds (`written`: {file: bytes} about to be
    written beside them, hashed as they are)."""
    written = written or {}
    out = {name: hashlib.sha256(written[name]).hexdigest() for name in DIGESTED if name in written}
    out.update({name: file_digest(Path(run_dir) / name) for name in DIGESTED
                if name not in out and (Path(run_dir) / name).is_file()})
    return out


# ---------------------------------------------------------------------------------------------
# reduce.json


def read_reduce_report(run_dir) -> dict:
    """A reduction's report (per layer: shape, ranks, params, errors; accuracy before and after)."""
    return json.loads((Path(run_dir) / REDUCE).read_text())
