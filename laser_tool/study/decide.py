"""Choose on exploration seeds, confirm on fresh seeds, until decided (`study --confirm-seeds N`).

A study's own seeds (`--seeds`, 1 for quick) explore: every row is trained and the contenders of each
budget are chosen on their VALIDATION accuracy (analysis/answer.py's choice: the best train-time row, the
best post-hoc row, narrower, the seed's low-rank, the baseline), with the comparisons the answer makes
between them, and so are the winners per measured latency (analysis/latency_frontier.py). Both are
written to STUDY/decision.json before any confirmation seed trains. Then:

  confirm  fresh seeds (after the exploration ones) train only the runs the contenders need: their own
           steps and the steps those start from (a heal's cut, a cut's baseline)
  look     after each round the comparisons are decided over the confirmation seeds alone
           (analysis/seeds.py: a paired t over per-seed test differences, TOST, one Holm family), at the
           look's share of alpha
  extend   with --until-decided, the undecided comparisons' rows get `step` more seeds, up to
           --max-seeds, and the next look decides again; a decided comparison stays as decided.

Everything is found again by run name (a run is STEM-sSEED), so a rerun resumes where it stopped and
reaches the same choice from the same exploration runs.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..analysis import seeds as seed_stats
from ..analysis.answer import ALPHA, answer, budgets
from ..analysis.describe import POSTHOC_FAMILIES
from ..analysis.paired import versus
from ..analysis.compare import compare_runs
from ..analysis import latency_frontier
from ..errors import UserError
from ..fileio import atomic_write_json
from ..runs.reader import finished_run

FILE = "decision.json"
SEED_PART = re.compile(r"-s(\d+)$")


@dataclass(frozen=True)
class Confirm:
    """How a study confirms: `seeds` fresh seeds at the first look, then (`until_decided`) `step` more per
    look for the undecided comparisons, at most `max_seeds` confirmation seeds in all."""
    seeds: int
    until_decided: bool = False
    max_seeds: int = 10
    step: int = 2

    def validate(self) -> None:
        if self.seeds < seed_stats.MIN_SEEDS:
            raise UserError(f"--confirm-seeds {self.seeds}: the seed-level test needs at least "
                            f"{seed_stats.MIN_SEEDS} seeds to decide anything; give --confirm-seeds "
                            f"{seed_stats.MIN_SEEDS} or more")
        if self.max_seeds < self.seeds:
            raise UserError(f"--max-seeds {self.max_seeds} is below --confirm-seeds {self.seeds}; give a cap at "
                            f"least as large")

    def looks(self) -> tuple:
        """The confirmation seeds at each planned look: (seeds, seeds + step, ..., max_seeds)."""
        if not self.until_decided:
            return (self.seeds,)
        return seed_stats.looks_plan(self.seeds, self.max_seeds, self.step)


def stem(run_name: str) -> str:
    """A run's name without its seed: the row it is a seed of (`svd-k0.25-heal1-s3` -> `svd-k0.25-heal1`)."""
    return SEED_PART.sub("", run_name)


def seed_of(run_name: str) -> int:
    m = SEED_PART.search(run_name)
    return int(m.group(1)) if m else None


def choose(runs: Path, explore: range, margin: float, speed: bool = True) -> dict:
    """The contenders and the comparisons, chosen on the exploration seeds' validation accuracy (`speed`:
    also per measured latency)."""
    dirs = [runs / name for name in explored(runs, explore)]
    result = compare_runs(dirs, speed=speed)  # the latency budgets are the rows' measured latencies
    comparisons = []
    for item in answer(result.rows, margin):
        for t in item["tests"]:
            a, b = (_row_stem(t["a"]), _row_stem(t["b"]))
            comparisons.append(dict(name=t["name"], section=item["section"], budget=item["budget"],
                                    scope=item["scope"], length=item.get("length"), a=a, b=b,
                                    a_label=t["a"]["label"], b_label=t["b"]["label"],
                                    val_diff=_val_diff(t["a"], t["b"])))
    points = latency_frontier.frontier(result.rows)
    comparisons += ties(result.rows, comparisons) + compute_matched(result.rows) + at_latency(points)
    if not comparisons:
        raise UserError(f"the exploration runs under {runs} give no comparison to confirm (no slimmed row with "
                        f"a baseline); check that their trainings finished")
    unique = {}
    for c in comparisons:  # one pair of rows tested twice (two names) is one comparison
        unique.setdefault(frozenset((c["a"], c["b"])), c)
    return dict(chosen_on=list(explore), explored=[d.name for d in dirs], metric="validation accuracy",
                comparisons=list(unique.values()), latency_frontier=latency_frontier.to_json(points))


def explored(runs: Path, explore: range) -> list:
    """The exploration runs a choice is made from (decision.json records them: more rows, a new choice)."""
    return [d.name for d in sorted(runs.iterdir()) if d.is_dir() and seed_of(d.name) in explore]


TIE_P = 0.05  # a validation lead whose paired p (McNemar for one seed) is above this is within noise


def ties(rows: list, comparisons: list) -> list:
    """The runner-up of each budget's winner kind when its validation deficit is within noise: it goes to
    confirmation too, against the same row of the other kind (a tie on validation is not a choice)."""
    out = []
    for c in [c for c in comparisons if c["name"].startswith("winner vs the best")]:
        rs = [r for sec, b, rs in budgets(rows) if sec == c["section"] and b == c["budget"] for r in rs]
        winner = next(r for r in rs if _row_stem(r) == c["a"])
        kind = winner["family"] in POSTHOC_FAMILIES
        rest = sorted((r for r in rs if r is not winner and r.get("val_acc_mean") is not None
                       and (r["family"] in POSTHOC_FAMILIES) == kind), key=lambda r: -r["val_acc_mean"])
        if rest and (versus(winner, rest[0], "val")["p"] or 0) > TIE_P:
            out.append(dict(c, name=f"runner-up (a tie on validation with {winner['label']}) vs the same row",
                            a=_row_stem(rest[0]), a_label=rest[0]["label"], val_diff=_val_diff(rest[0], winner)))
    return [t for t in out if t["a"] != t["b"]]


MATCHED = "at equal training FLOPs: the best train-time row trained to the heal's FLOPs vs the best healed row"


def compute_matched(rows: list) -> list:
    """Per budget, the comparison at equal parameters AND training FLOPs for the user who has no dense model
    yet: the best train-time or narrower row (by validation) trained for the epochs that make its training
    FLOPs equal the best healed row's (its `-iso` twin, study/compute.py), against that healed row. Only
    these twins are trained, on the confirmation seeds alone."""
    out = []
    for sec, b, rs in budgets([r for r in rows if not r.get("iso_compute")]):
        by_val = sorted((r for r in rs if r.get("val_acc_mean") is not None), key=lambda r: -r["val_acc_mean"])
        train = next((r for r in by_val if r["family"] not in POSTHOC_FAMILIES), None)
        healed = next((r for r in by_val if r["family"] == "healed"), None)
        if train is None or healed is None:
            continue
        out.append(dict(name=MATCHED, section=sec, budget=b, scope="parameters + training FLOPs",
                        length=train.get("length"), a=_iso_stem(_row_stem(train)), b=_row_stem(healed),
                        a_label=f"{train['label']} (FLOP-matched)", b_label=healed["label"],
                        val_diff=_val_diff(train, healed)))
    return out


def at_latency(points: list) -> list:
    """Per latency frontier point with a rival (analysis/latency_frontier.py): the winner at that measured
    latency against the best row of the other kind as fast. A pair already compared stays one comparison."""
    return [dict(name=latency_frontier.NAME, section=p["section"], budget=round(p["budget_ms"], 3),
                 scope=latency_frontier.SCOPE, length=p["length"], a=_row_stem(p["best"]), b=_row_stem(p["rival"]),
                 a_label=p["best"]["label"], b_label=p["rival"]["label"], val_diff=_val_diff(p["best"], p["rival"]))
            for p in points if p["rival"] is not None]


# A row's name as frontier.py writes it: FAMILY-kKEEP, then -lrM (a point of an lr grid), then -eE (a length
# of an epochs grid, fractional allowed); every number in `:g` form (1e-05 too).
NUMBER = r"[0-9.]+(?:e[-+]?\d+)?"
ROW_NAME = re.compile(rf"(?P<head>.+?-k{NUMBER})(?:-lr{NUMBER})?(?P<length>-e{NUMBER})?")


def _iso_stem(row_stem: str) -> str:
    """The compute-matched twin's name (frontier.iso_step): FAMILY-kKEEP-iso, then the row's length part;
    the twin trains at the preset's lr, so an lr grid's part is dropped."""
    m = ROW_NAME.fullmatch(row_stem)
    return f"{m['head']}-iso{m['length'] or ''}"


def _row_stem(row: dict) -> str:
    stems = {stem(Path(r).name) for r in row["runs"]}
    if len(stems) != 1:
        raise UserError(f"row {row['label']} holds runs of several names ({', '.join(sorted(stems))}); the "
                        f"study's runs folder holds runs it did not plan")
    return stems.pop()


def _val_diff(a: dict, b: dict):
    if a.get("val_acc_mean") is None or b.get("val_acc_mean") is None:
        return None
    return a["val_acc_mean"] - b["val_acc_mean"]


def stems(comparisons: list, which=None) -> set:
    """The rows (run names without the seed) of the comparisons, or of those at the indices `which`."""
    picked = comparisons if which is None else [comparisons[i] for i in which]
    return {c[side] for c in picked for side in ("a", "b")}


def confirm_request(request: dict, decision: dict, seeds: int) -> dict:
    """The study's request planned for `seeds` seeds, with the FLOP-matched twins (compute_matched) when the
    decision compares one: the plan the confirmation's steps are picked from."""
    matched = {"match_compute": True} if any("-iso" in c["a"] for c in decision["comparisons"]) else {}
    return dict(request, seeds=seeds, **matched)


def needed_steps(all_steps: list, stems: set, seeds: set) -> list:
    """The steps of `seeds` whose runs are the rows `stems`, with every step they start from, in plan order."""
    by_name = {st.name: st for st in all_steps}
    want = {st.name for st in all_steps if st.seed in seeds and stem(st.name) in stems}
    todo = list(want)
    while todo:  # a heal needs its cut, a cut its baseline
        parent = by_name[todo.pop()].parent
        if parent is not None and parent in by_name and parent not in want:
            want.add(parent)
            todo.append(parent)
    return [st for st in all_steps if st.name in want]


def look(runs: Path, decision: dict, confirm_seeds: list, margin: float, look_alpha: float, previous=None) -> list:
    """Every comparison decided over the confirmation seeds both rows have finished, in one family, at this
    look's share of alpha (seeds.look_alphas); `previous`, the last look's answer (a settled one stays)."""
    sides = []
    for c in decision["comparisons"]:
        a, b = _finished(runs, c["a"], confirm_seeds), _finished(runs, c["b"], confirm_seeds)
        seeds = [s for s in confirm_seeds if s in a and s in b]
        sides.append(dict(c, seeds=seeds, a_runs=[str(a[s].path) for s in seeds],
                          b_runs=[str(b[s].path) for s in seeds], a_accs=[a[s].acc for s in seeds],
                          b_accs=[b[s].acc for s in seeds]))
    decided = seed_stats.decide([(s["a_accs"], s["b_accs"]) for s in sides], margin, ALPHA, look_alpha,
                                previous)
    shown = [dict(zip(("ci", "ci_level"), seed_stats.shown_interval(d))) for d in decided]
    return [dict(s, **d, **c) for s, d, c in zip(sides, decided, shown)]


def _finished(runs: Path, row_stem: str, seeds: list) -> dict:
    out = {}
    for s in seeds:
        r = finished_run(runs / f"{row_stem}-s{s}")
        if r is not None:
            out[s] = r
    return out


def read_decision(out: Path):
    f = out / FILE
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        raise UserError(f"{f} is unreadable; move it away to choose the contenders again from the exploration "
                        f"runs") from None


def write_decision(out: Path, decision: dict) -> None:
    atomic_write_json(out / FILE, decision)
