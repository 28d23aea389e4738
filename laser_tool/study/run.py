"""`laser-tool study`: the whole experiment in one resumable command.

For a preset, plan.py lists every step (train the rows for every seed, cut the baseline post hoc,
heal); the launcher (launch/) runs the unfinished ones; report.py writes STUDY/report.md: the answer,
the compare table, the plot and the command that reproduces each row.

Everything lands in STUDY/runs/NAME with deterministic names, so a second invocation finds finished
runs and skips them, and the trainer resumes an interrupted one from its last state. One live
invocation per study directory (STUDY/.study.lock).
"""
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from trainers.train import settings
from ..data import load_dataset
from ..errors import UserError
from ..launch.base import Launch, check_launch
from ..launch.execute import execute
from ..launch.status import status_lines, study_lock_target
from ..lock import output_lock
from ..analysis import seeds as seed_stats
from ..analysis.answer import ALPHA, MARGIN
from ..runs.reader import check_input_run, finished_run
from ..runs.schema import config_path, read_config
from . import decide, journal, record
from .plan import plan_request, request_of
from .report import write_report


def _busy(target, path, pid, host, since) -> str:
    who = f"pid {pid} on host {host}, since {since}" if pid else "holder unknown"
    return (f"{target.parent} is in use by another live `laser-tool study` ({who}); wait for it to end "
            f"or stop it, then run again")


def study_lock(out: Path):
    """Hold STUDY/.study.lock while an invocation runs (an flock: the kernel releases it when the process
    ends, even by kill -9); a second live invocation is refused in one line naming the holder."""
    return output_lock(study_lock_target(out), busy=_busy)


def check_same_settings(runs: Path, steps: list) -> None:
    """Refuse to reuse runs trained with other settings: a study's runs are found again by name, so a
    second invocation with, say, other --epochs into the same --out would otherwise mix the two."""
    for st in steps:
        f = config_path(runs / st.name)
        if st.cfg is None or not f.exists():
            continue
        try:
            config, why = read_config(f.parent)
            if why:
                raise ValueError(why)
            old = settings(config)
        except (ValueError, AttributeError):
            raise UserError(f"{f} is unreadable; move {f.parent} away to retrain it") from None
        new = settings(st.cfg.to_dict())
        if st.kind == "heal":  # the trainer takes a healed run's model from its source
            old.pop("model", None), new.pop("model", None)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise UserError(f"{runs.parent} holds runs made with other settings ({st.name}: "
                            f"{', '.join(diff)} differ); use another --out for these settings")


def union(requests: list, out: Path, device, data_dir):
    """(steps, notes) of every request of an extended study, each step once, in the order first planned."""
    steps, notes, seen = [], [], set()
    for r in requests:
        more, more_notes = plan_request(r, out, device, data_dir)
        steps += [st for st in more if st.name not in seen]
        seen |= {st.name for st in more}
        notes += [n for n in more_notes if n not in notes]
    return steps, notes


@dataclass(frozen=True)
class StudyRequest:
    """What one invocation of `laser-tool study` asks for, built once by the command and handed on whole.
    None is the preset's own value. `train_opts` are training settings for every row (`train`'s option
    names), `frontier_opts` the frontier presets' own (budgets, targets, families, lr_grid, match_compute,
    epochs_grid, as the command line gives them). `extend` lets this invocation add rows to a study planned
    with other settings (record.py); `margin` is the answer's equivalence margin (a fraction of accuracy)."""
    preset: str
    seeds: int = None
    out: Path = None
    epochs: float = None
    heal_epochs: int = None
    device: str = "auto"
    data_dir: str = None
    train_opts: dict = field(default_factory=dict)
    frontier_opts: dict = field(default_factory=dict)
    tensorboard: bool = False
    extend: bool = False
    margin: float = MARGIN
    confirm: decide.Confirm = None  # choose on the study's seeds, confirm on fresh ones (decide.py)
    speed: bool = True  # time every row's latency (report.py) and choose the answer per latency (decide.py)

    @property
    def study_dir(self) -> Path:
        return Path(self.out or f"studies/{self.preset}")

    def recorded(self) -> dict:
        """What the study's record keeps and replans (plan.request_of)."""
        r = request_of(self.preset, self.seeds, self.epochs, self.heal_epochs, self.train_opts,
                       self.frontier_opts)
        if self.confirm is not None:  # absent without confirmation, so older studies replan alike
            r["confirm"] = asdict(self.confirm)
        return r


def run_study(study: StudyRequest, launch=None, log=lambda s: print(s, file=sys.stderr, flush=True)):
    """Run (or continue) a study; returns the path of its report.md, or None while steps are still
    queued on a cluster (`launch`: how steps run, launch/base.py; default one after another)."""
    t_start = time.time()
    out, seeds, margin, device, data_dir = study.study_dir, study.seeds, study.margin, study.device, study.data_dir
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds}: need at least one seed")
    if not (isinstance(margin, (int, float)) and 0 < margin < 1):  # NaN fails this too
        raise UserError(f"--margin {100 * margin if isinstance(margin, (int, float)) else margin}: give the "
                        f"equivalence margin in percentage points, a number > 0 (default 0.5)")
    if study.confirm is not None:
        study.confirm.validate()
    request = study.recorded()
    steps, notes = plan_request(request, out, device, data_dir)
    for st in steps:  # every setting in range before any data is read or any run starts
        if st.kind in ("train", "heal"):
            st.cfg.validate()
    launch = check_launch(launch or Launch(), device)
    record.check_study_dir(out)
    runs = out / "runs"
    with study_lock(out):
        check_same_settings(runs, steps)  # a run of this name made with other settings: named exactly
        requests, plan = record.settle(out, request, steps, study.extend)
        if len(requests) > 1:
            steps, notes = union(requests, out, device, data_dir)
        if study.tensorboard:  # watching changes nothing trained (a volatile setting)
            steps = [replace(st, cfg=replace(st.cfg, tensorboard=True)) if st.cfg is not None else st for st in steps]
        check_same_settings(runs, steps)
        for st in steps:  # never a number shown as right, never someone's swapped files redone
            check_input_run(runs / st.name, "study:")
        todo = [st for st in steps if st.kind == "train" and finished_run(runs / st.name) is None]
        if todo:  # a missing dataset is one clear error up front, not one per run
            c = todo[0].cfg
            load_dataset(c.dataset, c.data_dir, c.download, c.val_size, c.seed, c.train_subset,
                         c.model.image_size, c.model.channels, c.skip_bad_images)
        record.write_plan(out, plan)  # only now: a study refused by a check above is not half made
        me = journal.start(out, request)  # logged before any work, so a killed invocation still counts
        launch.on_done = lambda name: journal.step_done(out, me)
        res = execute(steps, out, launch, device, data_dir, lambda s: (log(s), journal.update(out, me)))
        if res.pending:
            log(f"{len(res.pending)} step(s) queued in Slurm; `laser-tool study ... --status` shows them; "
                f"run the same command again once they end to write the report")
            journal.end(out, me, time.time() - t_start, res.work)
            return None
        failed, decided = res.failed, None
        if study.confirm is not None and not failed:
            decided, failed, work = confirm(study, request, out, launch, log)
            if decided is None:
                journal.end(out, me, time.time() - t_start, res.work + work)
                return None
            res.work += work
        report = write_report(out, study, steps, notes, t_start, res.work, me, requests, decided) \
            if runs.exists() else None
        if report is None:
            journal.end(out, me, time.time() - t_start, res.work)
    if failed:
        more = "..." if len(failed) > 4 else ""
        raise UserError(f"{len(failed)} run(s) did not finish ({', '.join(failed[:4])}{more}); "
                        f"the report lists them; run the same command again to retry")
    return report


def confirm(study: StudyRequest, request: dict, out: Path, launch, log) -> tuple:
    """(comparisons decided, failed run names, runs made): the confirmation rounds after the exploration
    seeds (decide.py). The contenders are chosen once, on the exploration runs' validation accuracy, and
    kept in STUDY/decision.json; each look trains only the runs its undecided comparisons still need.
    (None, [], n) while Slurm still holds steps."""
    cf, runs, device, data_dir = study.confirm, out / "runs", study.device, study.data_dir
    explore = list(range(request["seeds"]))
    decision = decide.read_decision(out)
    if decision is None or decision.get("explored") != decide.explored(runs, range(request["seeds"])):
        decision = dict(decide.choose(runs, range(request["seeds"]), study.margin, study.speed), confirm=asdict(cf))
        decide.write_decision(out, decision)
    looks, first = cf.looks(), len(explore)
    alphas = seed_stats.look_alphas(looks, ALPHA)  # alpha spent over the planned looks, by their seeds
    need = decide.stems(decision["comparisons"])
    failed, work, have, results, history = [], 0, 0, None, []
    for k, n in enumerate(looks):
        all_steps, _ = plan_request(decide.confirm_request(request, decision, first + n), out, device, data_dir)
        steps = decide.needed_steps(all_steps, need, set(range(first + have, first + n)))
        check_same_settings(runs, steps)
        for st in steps:
            check_input_run(runs / st.name, "study:")
        log(f"confirmation, look {k + 1} of {len(looks)}: seeds {first}-{first + n - 1}, {len(steps)} step(s)")
        res = execute(steps, out, launch, device, data_dir, log)
        work, failed = work + res.work, failed + res.failed
        if res.pending:
            return None, [], work
        have = n
        results = decide.look(runs, decision, list(range(first, first + n)), study.margin, alphas[k], results)
        for r in results:
            r.setdefault("look", k + 1)  # a settled comparison keeps the look that settled it
        todo = seed_stats.undecided(results)
        history.append(dict(look=k + 1, seeds=list(range(first, first + n)), undecided=todo))
        if not todo or failed:
            break
        need = decide.stems(decision["comparisons"], todo)
    decide.write_decision(out, dict(decision, looks=list(looks), history=history, result=results))
    return results, failed, work


def study_status(study: StudyRequest) -> list:
    """`study --status`: the table's lines from the run directories (and Slurm's queue, if used), for the
    plan the study recorded (this command's settings for a study from before plan.json)."""
    out = study.study_dir
    if not out.is_dir():
        raise UserError(f"--status: there is no study at {out}; start it with the same command without --status")
    requests, _ = record.read(out)
    if not requests:
        requests = [study.recorded()]
    steps, _ = union(requests, out, study.device, study.data_dir)
    return status_lines(steps + confirmation_steps(out, requests[-1], study.device, study.data_dir), out)


def confirmation_steps(out: Path, request: dict, device, data_dir) -> list:
    """The steps a study's confirmation has asked for so far (for --status): the contenders' runs at the
    first look's seeds, and at each later look's new seeds those of the comparisons then undecided."""
    decision = decide.read_decision(out)
    if decision is None or "confirm" not in request:
        return []
    comps, first = decision["comparisons"], request["seeds"]
    looks = decision.get("looks") or list(decide.Confirm(**request["confirm"]).looks())
    history = decision.get("history") or []
    seeds = first + looks[min(len(history), len(looks) - 1)]
    all_steps, _ = plan_request(decide.confirm_request(request, decision, seeds), out, device, data_dir)
    steps, have, need = [], 0, decide.stems(comps)
    for k, n in enumerate(looks[:max(1, len(history) + 1)]):
        steps += decide.needed_steps(all_steps, need, set(range(first + have, first + n)))
        if k < len(history):
            need = decide.stems(comps, history[k]["undecided"])
        have = n
    return steps
