"""STUDY/plan.json: the mark that a study directory is laser-tool's, and its one plan.

A study directory is one the tool made (plan.json, or study.json of a study from before plan.json) or an
empty one; never a folder of someone's files, never inside a run. The first invocation records what it
asked (its request) and the fingerprint of every step it planned; a later one must plan the same steps,
or it is refused in one line naming the settings that differ. `--extend` adds rows on purpose: the
study is then the union of every recorded request's plan (a step of one name must mean the same run in
each), and the report lists the requests.
"""
import json
from pathlib import Path

from trainers.train import settings
from ..errors import UserError, flag_name
from ..fileio import atomic_write_json, check_path_length, check_writable_dir
from ..runs.safety import WRITER, is_laser_run
from . import journal

FILE = "plan.json"
OWNED = {FILE, journal.FILE, "runs", "logs", "submitit", "slurm_jobs.json", "report.md", "results.json", "plot.png",
         ".study.lock"}
FLAGS = {"seeds": "--seeds", "epochs": "--epochs", "heal_epochs": "--heal-epochs", "budgets": "--budgets",
         "targets": "--targets", "families": "--families", "epochs_grid": "--epochs-grid"}


def fingerprint(step) -> str:
    """What makes a step's run the run it is: the training settings (not where or how it runs), or what a
    reduction cuts."""
    if step.cfg is not None:
        return json.dumps([step.kind, settings(step.cfg.to_dict())], sort_keys=True, default=str)
    what = [step.kind, step.parent, list(step.selectors), step.method]
    if getattr(step, "calibrate", "original") != "original":  # the default adds nothing: old plans still match
        what.append(step.calibrate)
    return json.dumps(what + ([step.search] if getattr(step, "search", None) else []), sort_keys=True)


def _marked(out: Path) -> bool:
    try:
        return json.loads((out / FILE).read_text()).get("written_by") == WRITER
    except (OSError, ValueError, AttributeError):
        return False


def _legacy(out: Path, names: set) -> bool:
    """A study made before plan.json: only the names a study writes, and its journal or runs of ours."""
    runs = out / "runs"
    ours = runs.is_dir() and all(is_laser_run(r) for r in runs.iterdir() if not r.name.startswith("."))
    return names <= OWNED and (bool(journal.read(out)) or ours)


def check_study_dir(out: Path) -> None:
    """Before any work: `--out` is a study directory laser-tool made, or empty, or new; a real directory
    (no symlink, file or device), not inside a run, in a place that can be written."""
    check_path_length(out, "--out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a symbolic link" if out.is_symlink() else "not a directory"
        raise UserError(f"--out {out} is {kind}; give a study directory (new, empty, or made by laser-tool)")
    for p in [out.absolute(), *out.absolute().parents]:
        if is_laser_run(p):
            raise UserError(f"--out {out} is inside the run {p}; runs are never written into, pick another place")
    if out.is_dir():
        names = {p.name for p in out.iterdir()} - {".study.lock"}
        if names and not _marked(out) and not _legacy(out, names):
            listed = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
            raise UserError(f"--out {out} holds files laser-tool did not write ({listed}); a study writes only "
                            f"into a new, empty or study directory: pick another --out")
    check_writable_dir(out, "--out")


def read(out: Path):
    """(requests, {step name: fingerprint}) recorded, or ([], {}) for a new study."""
    try:
        d = json.loads((out / FILE).read_text())
        return list(d["requests"]), dict(d["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], {}


def describe_request(r: dict) -> str:
    parts = [f"--preset {r.get('preset')}"] + [f"{FLAGS[k]} {_text(r[k])}" for k in FLAGS if r.get(k) is not None]
    parts += [f"{flag_name(k)} {_text(v)}" for k, v in (r.get("train") or {}).items()]
    return " ".join(parts)


def _text(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in FLAGS if old.get(k) != new.get(k)]
    given = lambda v, none: none if v is None else _text(v)
    out = [f"{FLAGS[k]} {given(new.get(k), 'not given')} (the study has {given(old.get(k), 'none')})" for k in keys]
    ot, nt = old.get("train") or {}, new.get("train") or {}
    out += [f"{flag_name(k)} {nt.get(k, 'not given')} (the study has {ot.get(k, 'not given')})"
            for k in sorted(set(ot) | set(nt)) if ot.get(k) != nt.get(k)]
    return ", ".join(out)


def settle(out: Path, request: dict, steps: list, extend: bool) -> tuple:
    """(requests, plan): the requests the study is made of, after this invocation's: the recorded ones
    when this one plans the same steps; refused when it plans others, unless `extend` (then it is added).
    `plan` is what plan.json must hold from now on (None: unchanged); nothing is written here, so an
    invocation refused by a later check (its data) leaves no plan behind: `write_plan` once all pass."""
    requests, recorded = read(out)
    mine = {st.name: fingerprint(st) for st in steps}
    if not requests:
        return [request], dict(written_by=WRITER, requests=[request], steps=mine)
    if mine == recorded or (request in requests and all(recorded.get(k) == v for k, v in mine.items())):
        return requests, None
    changed = sorted(k for k in mine if k in recorded and recorded[k] != mine[k])
    if not extend:
        what = _differences(requests[0], request) or (f"its steps differ: {len(set(mine) - set(recorded))} new, "
                                                      f"{len(set(recorded) - set(mine))} not asked for")
        raise UserError(f"{out} is a study planned with other settings: {what}; run it with the settings it "
                        f"has, add --extend to add these rows to it, or use another --out")
    if changed:
        raise UserError(f"--extend adds rows to {out}, but this invocation would change {changed[0]} (same name, "
                        f"other settings); use another --out for these settings")
    requests = requests + [request]
    return requests, dict(written_by=WRITER, requests=requests, steps={**recorded, **mine})


def write_plan(out: Path, plan) -> None:
    if plan is not None:
        atomic_write_json(out / FILE, plan)
