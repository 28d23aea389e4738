"""The decided answer of a study with confirmation seeds (study/decide.py): results.json's `answer`, the
report's opening section and the plot people expect from a paired comparison.

Each comparison was declared on the exploration seeds' validation accuracy (`chosen_on`) and is decided
on the confirmation seeds alone, the seed as the unit: one test-accuracy difference per seed, a paired t
over them, TOST against the margin, one Holm family over every comparison's two hypotheses, at the share
of alpha of the look that decided it (seeds.py). The interval shown is the one the verdict used.
"""
from .seeds import SETTLED

# The test behind every verdict here (seeds.py), as the answer names it.
TEST_NAME = ("paired t over the per-seed test-accuracy differences (n - 1 df) and TOST against the margin, in one "
             "Holm step-down family")

FIELDS = ("seeds", "per_seed", "estimate", "ci", "p", "p_adjusted", "verdict")


def answer_json(decision: dict, decided: list) -> list:
    """results.json's `answer`: one entry per comparison, in the order the plan declared them."""
    out = []
    for c in decided:
        out.append(dict(scope=c["scope"], length=c.get("length"), section=c["section"], budget=c["budget"],
                        comparison=c["name"], a=c["a_label"], b=c["b_label"], chosen_on=decision["chosen_on"],
                        val_diff_on_chosen=c.get("val_diff"), a_runs=c["a_runs"], b_runs=c["b_runs"],
                        test=TEST_NAME, look=c.get("look"), alpha=c.get("alpha"),
                        **{k: c.get(k) for k in FIELDS}, ci_level=c.get("ci_level"),
                        p_equivalence=c.get("p_equivalence"), margin=c.get("margin")))
    return out


def _pp(x):
    return "n/a" if x is None else f"{100 * x:+.2f}"


def markdown(decision: dict, decided: list, margin: float) -> str:
    """The report's opening: per comparison its rows, seeds, estimate, interval, p and verdict."""
    chosen = ", ".join(map(str, decision["chosen_on"]))
    lines = [f"Contenders chosen on the validation accuracy of seed(s) {chosen}; every comparison below was "
             f"declared then (STUDY/decision.json) and is decided on fresh seeds alone, the seed as the unit: "
             f"{TEST_NAME}. Verdicts: better or worse (the difference's hypothesis rejected), equivalent within "
             f"{100 * margin:g} pp (TOST rejected), or inconclusive; every comparison's two hypotheses form one "
             f"Holm family, at the share of alpha of the look that decided it. The interval is the one the "
             f"verdict used.", "",
             "| scope | budget | comparison | A | B | seeds | A - B, pp | interval, pp | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in decided:
        ci = c.get("ci")
        ci_text = "n/a" if not ci or None in ci else f"[{_pp(ci[0])}, {_pp(ci[1])}]"
        level = f" ({100 * c['ci_level']:.1f}%)" if c.get("ci_level") else ""
        padj = c.get("p_adjusted")
        p_text = "n/a" if padj is None else f"{padj:.3g}"
        lines.append(f"| {c['scope']} | {c['budget']:g} | {c['name']} | {c['a_label']} | {c['b_label']} | "
                     f"{len(c['seeds'])} | {_pp(c.get('estimate'))} | {ci_text}{level} | {p_text} | "
                     f"**{c['verdict']}** |")
    settled = sum(c["verdict"] in SETTLED for c in decided)
    lines += ["", f"{settled} of {len(decided)} comparisons decided."]
    return "\n".join(lines) + "\n"
