"""The answer a frontier study opens with: for each budget, the family that loses least, its margin over
the runner-up family and over the best post-hoc row, each with a Holm-adjusted p, in one sentence.

Works on comparison rows (compare.py's, or results.json's): a budget is the `budget` a run's config
records, else the rows' `keep` clustered (families reach a budget only to their own granularity, so
0.498 and 0.5 are one budget). Only rows tested against a same-recipe baseline take part.
"""
import math

from .paired import versus
from .stats import holm

KEEP_TOLERANCE = 0.15  # keeps within 15% of each other (on a log scale) are one budget


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


def _acc(r, metric):
    return r["acc_mean"] if metric == "test" else r.get("val_acc_mean")


def _is_posthoc(r) -> bool:
    return r["family"] in ("post-hoc", "healed")


def answer(rows, metric="test") -> list:
    """One dict per (section, budget): best row, runner-up (best row of another family), and the best
    post-hoc row (the best train-time one when the winner is itself post-hoc), with the comparisons."""
    out = []
    for sec, b, rs in budgets(rows):
        rs = [r for r in rs if _acc(r, metric) is not None]
        if not rs:
            continue
        rs.sort(key=lambda r: -_acc(r, metric))
        best = rs[0]
        runner = next((r for r in rs[1:] if r["curve"] != best["curve"]), None)
        other = next((r for r in rs[1:] if _is_posthoc(r) != _is_posthoc(best)), None)
        item = dict(section=sec, budget=b, best=best, runner_up=runner, other=other,
                    other_kind="train-time" if _is_posthoc(best) else "post-hoc", n_rows=len(rs))
        for name, r in (("vs_runner_up", runner), ("vs_other", other)):
            item[name] = versus(best, r, metric) if r is not None else None
        out.append(item)
    tests = [t for item in out for t in (item["vs_runner_up"], item["vs_other"]) if t is not None]
    for t, adj in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = adj
    return out


def _pp(t):
    return "n/a" if t is None or t["diff"] is None else f"{100 * t['diff']:+.2f}"


def _p(t):
    if t is None or t.get("p_holm") is None:
        return "n/a"
    p = t["p_holm"]
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _sentence(item, metric) -> str:
    best, t = item["best"], item["vs_runner_up"]
    head = (f"At keep ≈ {item['budget']:.2f}, {best['curve']} ({best['label']}) loses least: "
            f"{100 * _acc(best, metric):.2f}% {metric} accuracy")
    if t is None:
        return head + ", the only family at this budget."
    runner = item["runner_up"]
    verdict = ("a real difference" if t.get("p_holm") is not None and t["p_holm"] < 0.05
               else "within the noise")
    s = head + f", {_pp(t)} pp over {runner['curve']} (Holm p = {_p(t)}, {t['p_kind'] or 'no test'}: {verdict})"
    o = item["vs_other"]
    if o is not None and item["other"] is not runner:
        s += f" and {_pp(o)} pp over the best {item['other_kind']} row, {item['other']['label']} (Holm p = {_p(o)})"
    return s + "."


def markdown(rows, metric="test") -> str:
    """The answer table and one plain sentence per budget ('' when no row has a budget)."""
    items = answer(rows, metric)
    if not items:
        return ""
    multi = len({i["section"] for i in items}) > 1
    out = [f"| {'section | ' if multi else ''}keep | best family | {metric} acc % | Δ vs runner-up (pp) | "
           f"p (Holm) | Δ vs best other-kind row (pp) | p (Holm) |",
           "|" + "---|" * (8 if multi else 7)]
    for i in items:
        best = i["best"]
        out.append(f"| {i['section'] + ' | ' if multi else ''}{i['budget']:.2f} | {best['curve']} | "
                   f"{100 * _acc(best, metric):.2f} | {_pp(i['vs_runner_up'])} | {_p(i['vs_runner_up'])} | "
                   f"{_pp(i['vs_other'])} | {_p(i['vs_other'])} |")
    out.append("")
    out += [f"- {_sentence(i, metric)}" for i in items]
    out += ["", "Runner-up: the best row of another family at that budget. Other-kind row: the best post-hoc "
                "row (or the best train-time row where a post-hoc row wins). p: Holm-adjusted across the "
                "comparisons of this table; the test behind each is named (see the footnotes below the tables)."]
    return "\n".join(out) + "\n"
