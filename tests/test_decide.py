"""`study --confirm-seeds N`: contenders chosen on the exploration seed's validation, the answer's
comparisons decided on fresh seeds alone (study/decide.py, analysis/seeds.py), in results.json."""
import json

import pytest
from scipy.stats import ttest_rel

from laser_tool.study import decide, frontier
from laser_tool.study.decide import Confirm, needed_steps, stem
from laser_tool.study.plan import plan

from conftest import cli, one_line_error, study_args

pytestmark = pytest.mark.usefixtures("one_thread")

# Three families at one budget: every comparison the answer declares has rows to stand on.
THREE = frontier.Frontier("quick", (0.5,), "ffn", ("narrower", "lowrank", "svd"))


def _runs(out):
    return sorted(p.name for p in (out / "runs").iterdir() if p.is_dir())


def _acc(run_dir):
    return json.loads((run_dir / "final.json").read_text())["test_acc"]


def test_stems_and_the_steps_a_row_needs(tmp_path):
    assert stem("svd-k0.25-heal1-s3") == "svd-k0.25-heal1" and stem("baseline-e6-s12") == "baseline-e6"
    steps, _ = plan("quick-wide", 3, tmp_path, device="cpu")
    got = needed_steps(steps, {"svd-k0.25-heal1"}, {2})
    # the heal, its cut, the cut's baseline: of seed 2 only, in plan order
    assert [st.name for st in got] == ["baseline-s2", "svd-k0.25-s2", "svd-k0.25-heal1-s2"]
    assert [st.name for st in needed_steps(steps, {"narrower-k0.1"}, {1, 2})] == ["narrower-k0.1-s1",
                                                                                  "narrower-k0.1-s2"]


def test_each_rows_twin_name_is_the_planners(tmp_path):
    """decide's name of a row's FLOP-matched twin is the one frontier.py plans, for every train-time row,
    with an lr grid and an epochs grid of whole and fractional lengths."""
    steps, _ = plan("quick-wide", 1, tmp_path, device="cpu",
                    frontier_opts=dict(epochs_grid="2,7.2867", match_compute=True, lr_grid="0.5,1"))
    twins = {stem(s.name) for s in steps if "-iso" in s.name}
    rows = {stem(s.name) for s in steps if s.kind == "train" and "-iso" not in s.name and "baseline" not in s.name}
    assert len(rows) == 2 * len(twins) and any("-e7.2867" in r for r in rows)
    assert {decide._iso_stem(r) for r in rows} == twins


def test_looks_plan_alpha_over_the_planned_looks():
    assert Confirm(5).looks() == (5,)
    assert Confirm(3, until_decided=True, max_seeds=7, step=2).looks() == (3, 5, 7)
    assert Confirm(4, until_decided=True, max_seeds=5, step=2).looks() == (4, 5)


def test_confirmed_answer_stands_on_fresh_seeds(tiny_study, monkeypatch):
    tmp, calls = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", THREE)
    out = tmp / "st"
    res = cli(*study_args(out, tmp, "--confirm-seeds", 3))
    assert res.exit_code == 0, res.output
    decision = json.loads((out / decide.FILE).read_text())
    assert decision["chosen_on"] == [0] and decision["comparisons"]
    wanted = {c[x] for c in decision["comparisons"] for x in ("a", "b")} | {"baseline"}
    # seed 0 trained every row; seeds 1-3 only the contenders (and what they start from)
    assert {stem(n) for n in _runs(out) if n.endswith("-s0")} == {"baseline", "narrower-k0.5", "lowrank-k0.5", "svd-k0.5"}
    for s in (1, 2, 3):
        assert {stem(n) for n in _runs(out) if n.endswith(f"-s{s}")} == wanted
    answer = json.loads((out / "results.json").read_text())["answer"]
    assert len(answer) == len(decision["comparisons"])
    for c in answer:
        assert c["chosen_on"] == [0] and c["seeds"] == [1, 2, 3]
        assert [p.rsplit("-s", 1)[1] for p in c["a_runs"]] == ["1", "2", "3"]
        a = [_acc(out / "runs" / p.split("/")[-1]) for p in c["a_runs"]]
        b = [_acc(out / "runs" / p.split("/")[-1]) for p in c["b_runs"]]
        assert c["per_seed"] == pytest.approx([x - y for x, y in zip(a, b)])
        if c["p"] is not None:  # equal per-seed differences have no t test
            assert c["p"] == pytest.approx(ttest_rel(a, b).pvalue)
        assert c["verdict"] in ("better", "worse", "equivalent", "inconclusive")
        if c["ci"] is not None and c["verdict"] in ("better", "worse"):
            assert c["ci"][0] > 0 or c["ci"][1] < 0   # the interval shown is the verdict's
    report = (out / "report.md").read_text()
    assert "## The decided answer" in report and (out / "decided.png").stat().st_size > 0
    # a rerun finds every run: nothing is trained again, the same answer
    n_train = len(calls["train"])
    assert cli(*study_args(out, tmp, "--confirm-seeds", 3)).exit_code == 0
    assert len(calls["train"]) == n_train
    assert json.loads((out / "results.json").read_text())["answer"] == answer


def test_until_decided_adds_seeds_only_where_undecided(tiny_study, monkeypatch):
    tmp, _ = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", THREE)
    out = tmp / "st"
    res = cli(*study_args(out, tmp, "--confirm-seeds", 3, "--until-decided", "--max-seeds", 4))
    assert res.exit_code == 0, res.output
    decision = json.loads((out / decide.FILE).read_text())
    assert decision["looks"] == [3, 4]
    first = decision["history"][0]
    assert first["seeds"] == [1, 2, 3]
    extra = {stem(n) for n in _runs(out) if n.endswith("-s4")}
    if len(decision["history"]) == 1:   # all decided at the first look: no fourth seed
        assert first["undecided"] == [] and not extra
    else:
        comps = decision["comparisons"]
        needed = {comps[i][x] for i in first["undecided"] for x in ("a", "b")}
        assert extra - {"baseline"} == needed - {"baseline"}
    status = cli(*study_args(out, tmp, "--confirm-seeds", 3, "--until-decided", "--max-seeds", 4, "--status")).output
    for name in _runs(out):   # every run the confirmation made is listed, and nothing it did not ask for
        assert name in status
    total = len(_runs(out))
    assert f"waiting 0  failed 0  done {total}" in status   # all listed as done, none waiting
    for r in decision["result"]:
        assert len(r["seeds"]) in (3, 4) and r["look_alpha"] == pytest.approx(0.05 * len(r["seeds"]) / 7)


@pytest.mark.parametrize("args, words", [
    (("--confirm-seeds", 2), ["--confirm-seeds 2", "3"]),
    (("--until-decided",), ["--until-decided", "--confirm-seeds"]),
    (("--confirm-seeds", 5, "--until-decided", "--max-seeds", 4), ["--max-seeds 4", "--confirm-seeds 5"]),
])
def test_bad_confirmation_settings_are_one_line(tiny_study, args, words):
    tmp, calls = tiny_study
    out = tmp / "st"
    one_line_error(cli(*study_args(out, tmp, *args)), *words)
    assert not out.exists() and not calls["train"]


def test_confirmation_needs_a_frontier_preset(tmp_path):
    one_line_error(cli("study", "--preset", "seed-xt", "--out", tmp_path / "st", "--confirm-seeds", 3),
                   "--confirm-seeds", "seed-xt")


@pytest.mark.timing
def test_equal_compute_scope_trains_only_the_chosen_twin(tiny_study, monkeypatch):
    """With heals, each budget adds the comparison at equal training FLOPs: the best train-time row's
    FLOP-matched twin (trained on the confirmation seeds only) against the best healed row."""
    tmp, _ = tiny_study
    monkeypatch.setitem(frontier.FRONTIERS, "quick", frontier.Frontier("quick", (0.5,), "ffn",
                                                                       ("narrower", "lowrank", "svd"), heal_epochs=1))
    out = tmp / "st"
    assert cli(*study_args(out, tmp, "--confirm-seeds", 3)).exit_code == 0
    decision = json.loads((out / decide.FILE).read_text())
    matched = [c for c in decision["comparisons"] if c["scope"] == "parameters + training FLOPs"]
    assert len(matched) == 1 and matched[0]["a"].endswith("-iso") and "heal1" in matched[0]["b"]
    twins = sorted(n for n in _runs(out) if "-iso" in n)
    assert twins == [f"{matched[0]['a']}-s{s}" for s in (1, 2, 3)]   # none at the exploration seed
    healed = json.loads((out / "runs" / f"{matched[0]['b']}-s1" / "config.json").read_text())
    twin = json.loads((out / "runs" / twins[0] / "config.json").read_text())
    from laser_tool.analysis.costs import trained_flops
    assert trained_flops(twin) == pytest.approx(trained_flops(healed), rel=0.05)
    results = json.loads((out / "results.json").read_text())
    scopes = {c["scope"] for c in results["answer"]}
    assert {"parameters", "parameters + training FLOPs"} <= scopes <= {"parameters", "parameters + training FLOPs",
                                                                        "latency (batch 64)"}
    # every row is timed as deployed, at batch 1 and 64; the answer per latency is chosen on the exploration
    # seed and each of its points with a rival is decided on the confirmation seeds
    assert all(set(r["latency"]["batch"]) == {"1", "64"} for r in results["rows"])
    front = decision["latency_frontier"]
    assert front and results["latency_frontier"] == front
    decided = {frozenset((c["a"], c["b"])): c["verdict"] for c in results["answer"]}
    for p in front:
        if p["rival"] is not None:
            assert frozenset((p["best"]["label"], p["rival"]["label"])) in decided
    report = (out / "report.md").read_text()
    assert "## The answer per measured latency" in report and "not confirmed" not in report


def _row(label, family, val_accs, keep=0.5):
    name = label.replace(" ", "_")
    return dict(status="ok", section="S", label=label, family=family, curve=label, keep=keep, budget=keep,
                baseline="baseline", runs=[f"/x/{name}-s{s}" for s in range(len(val_accs))],
                seeds=list(range(len(val_accs))), roots=[None] * len(val_accs), val_accs=val_accs,
                val_acc_mean=sum(val_accs) / len(val_accs), accs=val_accs, length=2)


def test_a_validation_tie_goes_to_confirmation_too():
    winner = dict(name="winner vs the best post-hoc row", section="S", budget=0.5, scope="parameters",
                  a="lowrank-k0.5", b="svd-k0.5", a_label="lowrank", b_label="svd")
    close = [_row("lowrank-k0.5", "train-time", [0.860, 0.870, 0.865]),
             _row("narrower-k0.5", "narrower", [0.858, 0.871, 0.862]),   # within noise of the winner
             _row("svd-k0.5", "post-hoc", [0.80, 0.81, 0.805])]
    got = decide.ties(close, [winner])
    assert [(t["a"], t["b"]) for t in got] == [("narrower-k0.5", "svd-k0.5")]
    far = [close[0], _row("narrower-k0.5", "narrower", [0.760, 0.771, 0.764]), close[2]]
    assert decide.ties(far, [winner]) == []   # a clear lead is a choice


def test_the_main_job_confirms_by_default_and_zero_turns_it_off(tmp_path):
    """`study --preset quick` (the README's main job) is the decided answer: one budget, seed 0 explores,
    5 fresh seeds confirm; `--confirm-seeds 0` makes it an exploratory one-seed study, and the wide frontier
    (quick-wide) explores without confirming."""
    from laser_tool.cli.study import confirm_of
    given = dict(confirm_seeds=None, until_decided=False, max_seeds=10)
    assert confirm_of("quick", given) == Confirm(5, max_seeds=5)
    assert confirm_of("quick", dict(given, confirm_seeds=0)) is None
    assert confirm_of("quick-wide", given) is None
    assert confirm_of("quick", dict(given, until_decided=True)) == Confirm(5, until_decided=True, max_seeds=10)
    steps, _ = plan("quick", 1, tmp_path, device="cpu")
    assert {s.seed for s in steps} == {0}  # the confirmation seeds are planned only after the choice
    assert sorted(s.name for s in steps if s.kind == "train") == [
        "baseline-s0", "lowrank-k0.1-s0", "narrower-k0.1-s0", "progressive-k0.1-s0"]
