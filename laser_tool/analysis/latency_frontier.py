"""The answer per measured latency: which way of slimming loses least at a given batch-64 latency.

A row's latency is its model's as deployed (export/latency.py: the faster of its own form and its dense
multiply-out), every row timed in the same rounds. The budgets are the slimmed rows' own latencies, each
widened by TOLERANCE (two rows of one architecture measure within it on a shared machine, so a row this
much slower is not measurably slower). Within a budget the winner is the row with the best VALIDATION
accuracy among the rows at most that slow; a budget where the winner changes is a point of the Pareto
frontier of validation accuracy against latency. Each point names its rival: the best row of the other
kind (train-time vs post-hoc) within the same budget, the comparison the decided answer confirms on fresh
seeds (study/decide.py); a point with no such rival is one that only its own kind reaches.
"""
from .describe import POSTHOC_FAMILIES
from .speed import latency_ms

TOLERANCE = 0.10
SCOPE = "latency (batch 64)"
NAME = "at equal latency: the winner vs the best row of the other kind as fast"


def _slimmed(rows) -> list:
    seen, out = set(), []
    for r in rows:
        if r.get("status", "ok") != "ok" or r["family"] == "baseline" or r.get("iso_compute"):
            continue
        if r.get("keep") is None or r["keep"] >= 1:  # a compute control or a continued run slims nothing
            continue
        if r.get("baseline") is None or latency_ms(r) is None or r.get("val_acc_mean") is None:
            continue
        if (r["section"], r["label"]) not in seen:
            seen.add((r["section"], r["label"]))
            out.append(r)
    return out


def frontier(rows, tolerance: float = TOLERANCE) -> list:
    """[{section, length, budget_ms, best, rival, baseline_ms}] per (section, training length), fastest budget
    first: the frontier points (see the module docstring). `rival` is None where no row of the other kind is
    as fast."""
    out = []
    members = _slimmed(rows)
    for key in dict.fromkeys((r["section"], r.get("length")) for r in members):
        rs = sorted((r for r in members if (r["section"], r.get("length")) == key), key=latency_ms)
        base = next((r for r in rows if r["family"] == "baseline" and r["section"] == key[0]
                     and latency_ms(r) is not None), None)
        last = None
        for r in rs:
            budget = latency_ms(r) * (1 + tolerance)
            within = [x for x in rs if latency_ms(x) <= budget]
            best = max(within, key=lambda x: x["val_acc_mean"])
            if last is not None and best["label"] == last["label"]:
                continue
            last = best
            other = [x for x in within if (x["family"] in POSTHOC_FAMILIES) != (best["family"] in POSTHOC_FAMILIES)]
            rival = max(other, key=lambda x: x["val_acc_mean"]) if other else None
            out.append(dict(section=key[0], length=key[1], budget_ms=budget, best=best, rival=rival,
                            baseline_ms=latency_ms(base) if base else None))
    return out


def _side(r):
    return None if r is None else dict(label=r["label"], runs=r["runs"], ms=latency_ms(r), val=r["val_acc_mean"],
                                       test=r["acc_mean"], family=r["family"])


def to_json(points) -> list:
    """The frontier as results.json and STUDY/decision.json record it: each side's label, runs, ms, accuracies."""
    return [dict(p, best=_side(p["best"]), rival=_side(p["rival"])) for p in points]


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"


def markdown(points, verdicts=None, chosen_on=None) -> str:
    """The frontier (to_json's form) as a table; `verdicts` ({frozenset of the two labels: verdict}) from the
    decided answer, `chosen_on` the seeds the winners were chosen on (None: on these rows' own validation,
    exploratory)."""
    if not points:
        return ""
    base = next((p["baseline_ms"] for p in points if p["baseline_ms"]), None)
    ref = f" The baseline measures {base:.2f} ms." if base else ""
    where = (f"the validation accuracy of seed(s) {', '.join(map(str, chosen_on))}" if chosen_on is not None
             else "the rows' validation accuracy (exploratory: no comparison here was confirmed on fresh seeds)")
    lines = [f"Per latency budget (a row's measured batch-64 latency + {100 * TOLERANCE:g}%), the winner among "
             f"the slimmed rows at most that slow, chosen on {where}, and its rival of the other kind.{ref}", "",
             "| ≤ ms (batch 64) | winner | its ms | val acc % | test acc % | rival of the other kind | its ms | "
             "verdict (winner vs rival, fresh seeds) |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        b, r = p["best"], p["rival"]
        pair = frozenset((b["label"], r["label"])) if r else None
        v = ("no rival this fast" if r is None else "exploratory" if verdicts is None
             else verdicts.get(pair, "not confirmed"))
        rival = f"{r['label']} | {r['ms']:.2f}" if r else "- | -"
        lines.append(f"| {p['budget_ms']:.2f} | {b['label']} | {b['ms']:.2f} | {_pct(b['val'])} | {_pct(b['test'])} | "
                     f"{rival} | {v} |")
    return "\n".join(lines) + "\n"
