"""The answer a frontier study opens with, chosen on validation and confirmed on test.

Per budget the winner is the row with the best VALIDATION accuracy (never test), and a small set of
tests declared before looking, all on the test set, is confirmatory:
  (a) the winner against the best (by validation) row of the other kind (train-time vs post-hoc);
  (b) the seed's claim: narrower against train-time low-rank at the seed's parameterisation;
  (c) the winner against its baseline.
Holm's adjustment runs over exactly these distinct tests; every test in the full table is exploratory
and has its own Holm family (compare.py). Each confirmatory comparison gets its difference, the test
that made its p (McNemar for one seed, paired t over shared seeds, ...), a 95% paired bootstrap interval
over seeds and images and a verdict: better, worse, equivalent within the margin (TOST), or
inconclusive (bootstrap.py). Where test accuracy alone would pick another winner, the answer says so.

Rows of several training lengths (`study --epochs-grid`) are answered per length: a row's length is
the epochs its baseline trained, and each length has its own winners and tests (one Holm family).
With compute-matched rows (`study --match-compute`) the answer is given twice: at equal parameters
(the rows trained for the baseline's epochs, post-hoc and healed rows), and at equal parameters AND
training FLOPs (the compute-matched train-time and narrower rows against the healed rows); one Holm
family holds the confirmatory tests of both.

Works on comparison rows (compare.py's, or results.json's): a budget is the `budget` a run's config
records, else the rows' `keep` clustered (families reach a budget only to their own granularity, so
0.498 and 0.5 are one budget). Only rows tested against a same-recipe baseline take part.
"""
import math

from . import seeds
from .bootstrap import effect, verdict
from .describe import POSTHOC_FAMILIES
from .paired import versus
from .stats import holm

KEEP_TOLERANCE = 0.15  # keeps within 15% of each other (on a log scale) are one budget
MARGIN = 0.005  # equivalence margin: 0.5 pp of accuracy (`study --margin`)
ALPHA = 0.05
# (name, which rows take part); the second only where compute-matched rows exist
SCOPES = (("parameters", lambda r: not r.get("iso_compute")),
          ("parameters + training FLOPs", lambda r: bool(r.get("iso_compute")) or r["family"] == "healed"))


def budgets(rows) -> list:
    """[(section, budget, rows)] for slimmed rows with a baseline, largest budget first per section."""
    seen, unique = set(), []
    for r in rows:
        if r.get("status", "ok") != "ok" or r["family"] == "baseline" or r.get("keep") is None:
            continue
        if r.get("baseline") is None or (r["section"], r["label"]) in seen or r["keep"] >= 1:
            continue
        seen.add((r["section"], r["label"]))
        unique.append(r)
    out = []
    for sec in dict.fromkeys(r["section"] for r in unique):
        rs = sorted((r for r in unique if r["section"] == sec), key=lambda r: -(r.get("budget") or r["keep"]))
        clusters = []
        for r in rs:
            b = r.get("budget") or r["keep"]
            last = clusters[-1] if clusters else None
            same = last is not None and (b == last[0] if r.get("budget") else
                                         abs(math.log(b / last[0])) <= math.log(1 + KEEP_TOLERANCE))
            if same:
                last[1].append(r)
            else:
                clusters.append((b, [r]))
        out += [(sec, b if rs_[0].get("budget") else sum(x["keep"] for x in rs_) / len(rs_), rs_)
                for b, rs_ in clusters]
    return out


def _is_posthoc(r) -> bool:
    return r["family"] in POSTHOC_FAMILIES


def _is_seed_lowrank(r) -> bool:
    """Train-time low-rank at the seed's parameterisation (standard, default init): curve 'lowrank ROLES'."""
    words = r["curve"].removesuffix(" iso-compute").split()
    return r["family"] == "train-time" and words[0] == "lowrank" and len(words) == 2


def _first(rows, keep):
    return next((r for r in rows if keep(r)), None)


def answer(rows, margin: float = MARGIN, seed: int = 0) -> list:
    """One dict per (section, budget): the winner chosen on validation, test's own pick, and the
    confirmatory tests (Holm-adjusted over all of them, each with an interval and a verdict), per scope
    (what the rows are matched in)."""
    out = []
    scopes = SCOPES if any(r.get("iso_compute") for r in rows) else SCOPES[:1]
    for length in lengths(rows):
        for scope, member in scopes:
            items = _answer_scope(rows, [r for r in rows if member(r) and r.get("length") == length], scope, margin, seed)
            out += [dict(i, length=length) for i in items]
    _adjust([t for item in out for t in item["tests"]], margin)
    return out


def lengths(rows) -> list:
    """The training lengths (a row's: its baseline's epochs) among the rows, shortest first; [None] for
    rows that record none."""
    found = {r.get("length") for r in rows}
    return sorted(found - {None}) + ([None] if None in found else [])


def _answer_scope(rows, members, scope, margin, seed) -> list:
    out = []
    for sec, b, rs in budgets(members):
        rs = sorted((r for r in rs if r.get("val_acc_mean") is not None), key=lambda r: -r["val_acc_mean"])
        if not rs:
            continue
        best = rs[0]
        base = _first(rows, lambda r: r["family"] == "baseline" and r["section"] == sec and
                      r["label"] == best["baseline"])
        other = _first(rs[1:], lambda r: _is_posthoc(r) != _is_posthoc(best))
        kind = "train-time" if _is_posthoc(best) else "post-hoc"
        planned = [(f"winner vs the best {kind} row", best, other),
                   ("narrower vs low-rank (the seed's claim)", _first(rs, lambda r: r["family"] == "narrower"),
                    _first(rs, _is_seed_lowrank)),
                   ("winner vs the baseline", best, base)]
        test_pick = max(rs, key=lambda r: r["acc_mean"])
        out.append(dict(section=sec, budget=b, best=best, test_pick=test_pick, n_rows=len(rs),
                        disagree=test_pick["label"] != best["label"], scope=scope,
                        tests=[_test(name, a, o, margin, seed) for name, a, o in planned
                               if a is not None and o is not None and a is not o]))
    return out


def _test(name, a, b, margin, seed) -> dict:
    return dict(name=name, section=a["section"], a=a, b=b, **versus(a, b, "test"), **effect(a, b, margin, seed=seed))


def _adjust(tests: list, margin: float) -> None:
    """Verdicts. Rows that share two or more seeds are judged over seeds (seeds.py: a paired t over the
    per-seed differences, TOST, one Holm family with the equivalence claims; under 3 seeds: too few);
    rows of one seed are judged as two trained models (McNemar on the test images, the bootstrap's TOST,
    Holm over the distinct comparisons; the verdict says so). The same pair of rows tested twice counts once."""
    shared = {id(t): _shared_seeds(t) for t in tests}
    _over_seeds([t for t in tests if len(shared[id(t)]) >= 2], margin)
    models = [t for t in tests if len(shared[id(t)]) < 2]
    distinct = _distinct(models)
    keys = list(distinct)
    size = sum(distinct[k][0]["p"] is not None for k in keys)  # the comparisons Holm adjusts over
    for k, adj in zip(keys, holm([distinct[k][0]["p"] for k in keys])):
        for t in distinct[k]:
            t["p_holm"], t["family_size"] = adj, size
    for t in models:
        v = verdict(t["diff"], t.get("p_holm"), t["equivalent"], margin, ALPHA)
        t["verdict"] = v if v == "inconclusive" else f"{v} (these trained models)"


def _distinct(tests: list) -> dict:
    """{(section, {label a, label b}): [tests]}: one comparison however many names test it."""
    out = {}
    for t in tests:
        out.setdefault((t["section"], frozenset((t["a"]["label"], t["b"]["label"]))), []).append(t)
    return out


def _shared_seeds(t) -> dict:
    """{seed: (a's test accuracy, b's)} over the seeds both rows hold once each."""
    def by_seed(row):
        seeds = row.get("seeds") or []
        return {s: acc for s, acc in zip(seeds, row["accs"]) if seeds.count(s) == 1}
    a, b = by_seed(t["a"]), by_seed(t["b"])
    return {s: (a[s], b[s]) for s in sorted(set(a) & set(b))}


def _over_seeds(tests: list, margin: float) -> None:
    """seeds.decide over the distinct comparisons of rows that share seeds: its verdict, adjusted p and the
    interval the verdict used replace the bootstrap's."""
    distinct = _distinct(tests)
    if not distinct:
        return
    pairs = [_shared_seeds(ts[0]) for ts in distinct.values()]
    results = seeds.decide([([a for a, _ in p.values()], [b for _, b in p.values()]) for p in pairs], margin, ALPHA)
    for ts, r in zip(distinct.values(), results):
        for t in ts:
            ci, _ = seeds.shown_interval(r)
            t.update(diff=r["estimate"], p=r["p"], p_kind="paired-t", p_holm=r["p_adjusted"], ci95=ci,
                     family_size=r.get("family"), verdict=r["verdict"], seeds=r["n"],
                     note=r.get("note") or t.get("note"))


def confirmatory_pairs(items) -> dict:
    """{(section, {label a, label b}): p_holm} of the answer's tests, for the table to show the same p."""
    return {(t["section"], frozenset((t["a"]["label"], t["b"]["label"]))): t.get("p_holm")
            for i in items for t in i["tests"]}


def _pp(x):
    return "n/a" if x is None else f"{100 * x:+.2f}"


def _ci(ci):
    return "n/a" if ci is None else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _p(p):
    return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"


def _sentence(item, timed=False) -> str:
    best = item["best"]
    matched = f" (matched in {item['scope']})" if item.get("scope", SCOPES[0][0]) != SCOPES[0][0] else ""
    length = f"After {item.get('length')} epochs, at" if timed else "At"
    s = (f"{length} keep ≈ {item['budget']:.2f}{matched}, validation chooses {best['curve']} ({best['label']}): "
         f"{_pct(best['val_acc_mean'])}% validation, {_pct(best['acc_mean'])}% test accuracy.")
    for t in item["tests"]:
        s += (f" {t['name'].capitalize()} ({t['a']['label']} vs {t['b']['label']}): {_pp(t['diff'])} pp "
              f"{_ci(t['ci95'])}, Holm p = {_p(t.get('p_holm'))}: {t['verdict']}.")
    if item["disagree"]:
        tp = item["test_pick"]
        s += (f" Validation and test disagree: test accuracy alone would pick {tp['curve']} ({tp['label']}, "
              f"{_pct(tp['acc_mean'])}%); the choice stands on validation.")
    return s


def markdown(rows, margin: float = MARGIN, items=None) -> str:
    """The answer table, the confirmatory tests and one plain paragraph per budget ('' when no row has a
    budget)."""
    items = answer(rows, margin) if items is None else items
    if not items:
        return ""
    multi = len({i["section"] for i in items}) > 1
    scoped = len({i.get("scope") for i in items}) > 1
    timed = len({i.get("length") for i in items}) > 1
    head = ("section | " if multi else "") + ("epochs | " if timed else "") + ("matched in | " if scoped else "")
    extra = int(multi) + int(timed) + int(scoped)
    pre = lambda i: ((f"{i['section']} | " if multi else "") + (f"{i.get('length')} | " if timed else "")
                     + (f"{i['scope']} | " if scoped else ""))
    n = sum(len(i["tests"]) for i in items)
    out = [f"| {head}keep | winner (chosen on validation) | val acc % | test acc % | test's own pick |",
           "|" + "---|" * (5 + extra)]
    for i in items:
        b = i["best"]
        pick = i["test_pick"]["curve"] + " (disagrees)" if i["disagree"] else "the same"
        out.append(f"| {pre(i)}{i['budget']:.2f} | {b['curve']} | {_pct(b['val_acc_mean'])} | {_pct(b['acc_mean'])} | "
                   f"{pick} |")
    out += ["", f"Confirmatory tests ({n}, Holm-adjusted together; test accuracy; margin ±{100 * margin:g} pp):", "",
            f"| {head}keep | comparison | Δ test (pp) | 95% CI, bootstrap | p | test | p (Holm) | verdict |",
            "|" + "---|" * (8 + extra)]
    for i in items:
        for t in i["tests"]:
            out.append(f"| {pre(i)}{i['budget']:.2f} | {t['name']}: {t['a']['curve']} vs {t['b']['curve']} | "
                       f"{_pp(t['diff'])} | {_ci(t['ci95'])} | {_p(t['p'])} | {t['p_kind'] or 'none'} | "
                       f"{_p(t.get('p_holm'))} | {t['verdict']} |")
    out.append("")
    out += [f"- {_sentence(i, timed)}" for i in items]
    out += ["", "The winner is the row with the best validation accuracy; the test set only confirms. Confirmatory "
                "tests, declared before looking, per budget: the winner against the best row of the other kind "
                "(post-hoc or train-time), narrower against standard low-rank (the seed's claim), the winner against "
                "its baseline; Holm over exactly these. Verdict: better or worse when the Holm-adjusted p < 0.05; "
                f"equivalent within {100 * margin:g} pp when the 90% bootstrap interval lies inside ±{100 * margin:g} "
                "pp (two one-sided tests at 0.05); otherwise inconclusive. Intervals: paired bootstrap over seeds, then "
                "test images within each (2,000 draws, seeded, percentile). Every p in the table below is "
                "exploratory (its own Holm), except where it marks a confirmatory comparison (ᶜ)."]
    return "\n".join(out) + "\n"
