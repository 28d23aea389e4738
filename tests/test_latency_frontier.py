"""The answer per measured latency (analysis/latency_frontier.py): budgets are the slimmed rows' own
latencies widened by the tolerance, the winner within each is chosen on validation (never test), a
budget where the winner changes is a frontier point, and its rival is the best row of the other kind as
fast."""
import pytest

from laser_tool.analysis import latency_frontier as lf


def row(label, family, ms, val, test=None, keep=0.1, **kw):
    return dict(status="ok", section="s", label=label, family=family, keep=keep, baseline="baseline",
                val_acc_mean=val, acc_mean=val if test is None else test, runs=[f"runs/{label}-s0"],
                latency={"batch": {"64": {"median_ms": ms, "iqr_ms": 0.1}}}, **kw)


ROWS = [row("baseline", "baseline", 16.0, 0.90, keep=1.0) | {"baseline": None},
        row("narrower", "narrower", 9.0, 0.88),
        row("cut", "healed", 14.0, 0.87, test=0.95),          # test would pick it: the choice ignores test
        row("progressive", "progressive", 14.5, 0.885),       # within 10% of the cut's 14.0: same budget
        row("lowrank", "train-time", 17.0, 0.86),
        row("control", "continued", 15.5, 0.91, keep=1.0),    # slims nothing: never a contender
        row("narrower-iso", "narrower", 9.0, 0.95, iso_compute=True)]  # more training: not this answer


def test_the_frontier_is_the_validation_winner_per_latency_budget_with_its_rival():
    points = lf.frontier(ROWS)
    assert [(p["best"]["label"], p["rival"] and p["rival"]["label"]) for p in points] == [
        ("narrower", None), ("progressive", "cut")]
    assert points[0]["budget_ms"] == pytest.approx(9.0 * 1.1) and points[1]["budget_ms"] == pytest.approx(14.0 * 1.1)
    assert points[0]["baseline_ms"] == 16.0


def test_the_table_shows_the_decided_verdict_of_each_point_or_says_it_is_exploratory():
    points = lf.to_json(lf.frontier(ROWS))
    decided = lf.markdown(points, {frozenset(("progressive", "cut")): "better"}, chosen_on=[0])
    assert "| 15.40 | progressive | 14.50 | 88.50 |" in decided and decided.rstrip().endswith("| cut | 14.00 | better |")
    assert "no rival this fast" in decided and "seed(s) 0" in decided
    assert "| exploratory |" in lf.markdown(points)
    assert lf.markdown([]) == ""
