"""The one reader of a run directory: finding runs, and reading one (config.json, final.json,
metrics.jsonl through schema.py's readers, and the checkpoint's header) with its status: complete,
incomplete, failed or corrupt, and the reason, never an exception for a bad run.

Every question "is this run done, and what did it score?" is answered here: the study skips a
finished step, a reduction or a heal waits for its parent, the trainer returns at once, and compare
reads its rows, all through `read_run` / `finished_run`, so they cannot disagree.
"""
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..models import ModelSpec
from .checkpoint import check_checkpoint
from .predictions import load_predictions
from .schema import (CONFIG, DIGESTED, FINAL, METRICS, MODEL, PREDICTIONS, file_digest, final_path, read_config,
                     read_final, read_metrics)

RUN_FILES = (CONFIG, FINAL, MODEL, METRICS, PREDICTIONS)


@dataclass
class Run:
    path: Path
    status: str                  # complete | incomplete | failed | corrupt | mismatch (files final.json does not vouch for)
    reason: str = ""
    config: dict = None
    final: dict = None
    warnings: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def acc(self) -> float:
        return float(self.final["test_acc"])

    @property
    def val_acc(self):
        v = self.final.get("val_acc")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def seed(self):
        return self.config.get("seed")


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in RUN_FILES)


def find_run_dirs(paths) -> list:
    """Run directories named directly or found one or two levels below the given folders."""
    found = []
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; pass run directories or folders that hold them")
        if _is_run_dir(p):
            found.append(p)
            continue
        if not p.is_dir():
            raise UserError(f"{p} is not a directory; pass run directories or folders that hold them")
        for child in sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")):
            if _is_run_dir(child):
                found.append(child)
            else:
                found += [g for g in sorted(child.iterdir()) if not g.name.startswith(".") and _is_run_dir(g)]
    unique = list({p.resolve(): p for p in found}.values())
    if not unique:
        where = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
        raise UserError(f"no runs found in {where} (a run directory holds config.json and final.json; "
                        f"looked two levels deep)")
    return unique


def _stamp(path: Path):
    """What identifies the run's files as they are now (a cache key): size and mtime of each."""
    out = []
    for name in RUN_FILES:
        try:
            st = os.stat(path / name)
            out.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


_cache = {}  # resolved path -> (stamp, Run): a study asks about the same runs every poll


def read_run(path) -> Run:
    """A Run with its status; never raises for a bad run, the reason goes in Run.reason."""
    path = Path(path)
    key, stamp = str(path.absolute()), _stamp(path)
    hit = _cache.get(key)
    if hit is None or hit[0] != stamp:
        hit = _cache[key] = (stamp, _read(path))
    return replace(hit[1], path=path, warnings=list(hit[1].warnings))  # callers may add warnings


def finished_run(path):
    """The run if it is complete (final.json, its accuracy and its checkpoint check out), else None."""
    run = read_run(path)
    return run if run.status == "complete" else None


def check_input_run(path, what: str) -> None:
    """Refuse (one line) an input run directory whose final.json does not vouch for its files: a swapped
    checkpoint or predictions file, an edited config, a lying accuracy. A run still training (no
    final.json yet, or a torn one) or a bare checkpoint file passes; the checkpoint's own checks apply."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    if not final_path(root).is_file() or not (root / CONFIG).is_file():
        return
    run = read_run(root)
    if run.status == "mismatch":
        raise UserError(f"{what} {root}: {run.reason}")


def check_rescored(path, test_acc: float, test_size: int, what: str) -> None:
    """Refuse (one line) a run from before digests whose checkpoint, scored again now, does not give the
    test accuracy its final.json claims: nothing else vouches that the checkpoint is the run's."""
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    if not final_path(root).is_file():
        return
    run = read_run(root)
    if run.final is None or run.status != "complete" or vouched(run.final):
        return
    if abs(test_acc - run.acc) >= 0.5 / max(test_size, 1):
        raise UserError(f"{what} {root}: final.json (no digests: a run from before they were written) says "
                        f"test_acc {run.acc:.4f} but its checkpoint scores {test_acc:.4f} on the test set now; "
                        f"the checkpoint is not the one that scored it: move the run away and redo it")



def _vouches(path: Path, final: dict):
    """Why final.json does not vouch for the files beside it, or None: each recorded digest must match,
    and the test accuracy must be the one its per-image predictions give."""
    recorded = final.get("digests")
    if isinstance(recorded, dict):
        for name, want in recorded.items():
            f = path / name
            if name in DIGESTED and (not f.is_file() or file_digest(f) != want):
                return (f"{name} is not the file final.json summarises (its digest differs: another run's file, "
                        f"or edited); move the run away and redo it")
    if not (path / PREDICTIONS).is_file():
        return None
    preds, why = load_predictions(path)
    if preds is None:
        return f"{why}; move the run away and redo it"
    for split in ("test", "val"):
        correct, claimed = preds.correct(split), final.get(f"{split}_acc")
        if correct is None or claimed is None:
            continue
        n = max(len(correct), 1)
        got = int(correct.sum()) / n
        if abs(got - claimed) >= 0.5 / n:  # not the count of images its predictions get right
            return (f"final.json says {split}_acc {claimed:.4f} but its predictions score {got:.4f}; the "
                    f"files do not belong together: move the run away and redo it")
    return None


def _bad_accuracy(final: dict):
    """Why final.json's accuracies are not accuracies (test_acc required, val_acc where recorded), or None."""
    for key in ("test_acc", "val_acc"):
        acc = final.get(key)
        if key == "val_acc" and acc is None:
            continue
        if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 1:  # NaN fails too
            return f"final.json {key} {acc!r} is not an accuracy in [0, 1]"
    return None


# A run from before final.json recorded digests: nothing vouches that its checkpoint is the one that
# scored its accuracy, so it is shown with this warning and a reduction re-scores it before cutting it.
UNVOUCHED = ("final.json records no file digests (a run from before they were written): its files and "
             "accuracy are unverified")


def vouched(final: dict) -> bool:
    """Whether final.json records the digests of the files it summarises."""
    return isinstance(final.get("digests"), dict)


def _read(path: Path) -> Run:
    config, why = read_config(path)
    if why or not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return Run(path, "corrupt", why or "config.json has no model spec")
    try:
        ModelSpec.from_dict(config["model"]).resolved()
    except (UserError, TypeError, ValueError, KeyError) as e:
        return Run(path, "corrupt", f"config.json model spec is invalid: {e}")
    rows, metrics_problem = read_metrics(path)
    epochs = len(rows)
    if not final_path(path).exists():
        planned = config.get("epochs", "?")
        extra = f"; {metrics_problem}" if metrics_problem else ""
        return Run(path, "incomplete", f"no final.json: training or stopped after {epochs} of {planned} epochs{extra}",
                   config)
    final, why = read_final(path)
    if why:
        return Run(path, "corrupt", why, config)
    if final.get("status", "complete") != "complete":
        detail = final.get("error") or final.get("reason") or ""
        return Run(path, "failed", f"status {final.get('status')!r}" + (f": {detail}" if detail else ""), config, final)
    why = _bad_accuracy(final)
    if why:
        return Run(path, "corrupt", why, config, final)
    why = _vouches(path, final)
    if why:
        return Run(path, "mismatch", why, config, final)
    ckpt = path / MODEL
    if ckpt.exists():  # header only: a corrupt or foreign checkpoint is a problem row, not a number
        try:
            check_checkpoint(ckpt)
        except UserError as e:
            return Run(path, "corrupt", f"model.safetensors: {str(e)[:160]}", config, final)
    run = Run(path, "complete", config=config, final=final)
    if metrics_problem:
        run.warnings.append(f"{metrics_problem}; accuracy taken from final.json")
    if not vouched(final):
        run.warnings.append(UNVOUCHED)
    return run
