"""Progressive rank reduction: a cut equals `reduce` of that moment, parameter counts, bitwise resume
at and after a cut, rank annealing, the auto rule, spectra over training, compare and study rows, and
the bad-input errors."""
import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from laser_tool.analysis import compare
from laser_tool import study
from laser_tool.runs.checkpoint import load_run
from laser_tool.models.layers import FactoredLinear
from laser_tool.models.budget import fraction_rank
from laser_tool.models import build_model, count_params
from laser_tool.posthoc.reduce import ReduceSettings, reduce_run
from laser_tool.models.surgery import slots
from conftest import TINY, cli, one_line_error
from synthetic import write_tiny_mnist
from trainers import progressive
from trainers import train as loop
from trainers.config import TrainConfig
from trainers.train import train

SPE = 1000 // 50  # steps per epoch: 1200 images - 200 held out, batches of 50


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: threads only add scheduling noise on a shared CPU."""


def cfg_for(data_dir, out, **kw):
    base = TrainConfig(model=TINY, dataset="mnist", data_dir=str(data_dir), val_size=200, epochs=3, augment=False,
                       batch_size=50, lr=3e-3, warmup_epochs=0.5, weight_decay=0.01, device="cpu", out=str(out),
                       name="run", reduce_to="params:0.5", reduce_layers=["*.ffn.*"])
    return replace(base, **kw)


def states_equal(a_dir, b_dir):
    a, b = load_file(a_dir / "state.safetensors"), load_file(b_dir / "state.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda d: [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "images_per_s")}
                       for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(a_dir) == strip(b_dir)


def cuts(run):
    return json.loads((run / "config.json").read_text())["progressive"]["cuts"]


def test_cut_equals_reduce_of_that_checkpoint_and_meets_the_lowrank_count(data_dir, tmp_path):
    cfg = cfg_for(data_dir, tmp_path / "a", epochs=2, reduce_at="1", reduce_method="whiten")
    straight = train(cfg, progress=False)
    # Interrupted when epoch 1 ends, i.e. exactly at the cut step: the cut happens on resume.
    other = replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train(other, progress=False, _interrupt_at_step=SPE)
    run = tmp_path / "b" / "run"
    assert json.loads((run / "config.json").read_text())["progressive"]["cuts"] == []
    moment = tmp_path / "moment.safetensors"
    shutil.copy(run / "last.safetensors", moment)  # the checkpoint of the moment of the cut
    train(other, progress=False)
    states_equal(straight, run)

    (c,) = cuts(run)
    assert c["step"] == SPE and c["epoch"] == 1.0 and c["method"] == "whiten"
    reduced = reduce_run(moment, ["*.ffn.*"], ReduceSettings(rank="params:0.5", method="whiten", store="factored"),
                         out=tmp_path / "reduced")
    rep = json.loads((reduced / "reduce.json").read_text())
    assert {l["name"]: l["rank_after"] for l in rep["layers"]} == {l["name"]: l["rank_after"] for l in c["layers"]}
    after_cut, _ = load_run(run / "cut1.safetensors")
    by_reduce, _ = load_run(reduced)
    a, b = after_cut.state_dict(), by_reduce.state_dict()
    assert a.keys() == b.keys()
    assert any(k.endswith("ffn.fc_in.U") for k in a)
    for k in a:
        assert a[k].shape == b[k].shape and (a[k] - b[k]).abs().max().item() <= 1e-6, k

    # The final model holds what the study's post-hoc twin of the low-rank row holds, and the low-rank
    # row's count less its extra bias (the seed's low-rank layer has a bias on `down` as well).
    final = json.loads((run / "final.json").read_text())
    assert final["params"] == rep["params_after"] == count_params(load_run(run)[0])
    base = replace(TINY, image_size=28, channels=1)
    low = replace(base, variant="lowrank", targets=["ffn"])
    twin = {s.split("=")[0]: int(s.split("=")[1]) for s in study.matched_selectors(base, low)}
    assert twin == {l["name"]: l["rank_after"] for l in c["layers"]}
    assert final["params"] == count_params(build_model(low)) - sum(twin.values())
    assert abs(final["params"] - count_params(build_model(low))) <= compare.PAIR_TOLERANCE * final["params"]
    # The best checkpoint is taken among epochs after the cut, so it holds the factored model.
    assert final["best_epoch"] == 2 and isinstance(slots(load_run(run)[0])[3].module, FactoredLinear)


def test_resume_at_and_after_a_fractional_cut_is_bitwise_identical(data_dir, tmp_path):
    cfg = cfg_for(data_dir, tmp_path / "a", reduce_at="1.5")
    straight = train(cfg, progress=False)
    (c,) = cuts(straight)
    assert c["step"] == round(1.5 * SPE) == 30 and c["reason"] == "plan"
    for stop, cut_done in ((30, False), (33, True)):  # exactly at the cut step, and 3 steps after it
        other = replace(cfg, out=str(tmp_path / f"stop{stop}"))
        with pytest.raises(KeyboardInterrupt):
            train(other, progress=False, _interrupt_at_step=stop)
        run = tmp_path / f"stop{stop}" / "run"
        saved = load_file(run / "state.safetensors")
        assert any(k.endswith(".U") for k in saved) == cut_done
        train(other, progress=False)
        states_equal(straight, run)


def test_a_cut_leaves_the_layout_a_resume_rebuilds(data_dir, tmp_path, monkeypatch):
    """A resumed run rebuilds its factored layers row-major from the resume point, so the cut must leave
    them row-major too (with their fresh Adam moments): an SVD's factors are column-major, and on some CPUs
    (AMD EPYC) a GEMM rounds differently for the two layouts, which made the resumed run drift by a bit."""
    seen = []
    real_cut = progressive.Progressive.cut

    def cut_and_look(self, model, optimizer, *a, **k):
        new = real_cut(self, model, optimizer, *a, **k)
        seen.append([(n, p.stride()) for n, p in model.named_parameters() if not p.is_contiguous()])
        return new
    monkeypatch.setattr(progressive.Progressive, "cut", cut_and_look)
    for method in ("svd", "whiten"):
        train(cfg_for(data_dir, tmp_path / method, reduce_at="1.5", reduce_method=method), progress=False)
    assert seen == [[], []]


def test_rank_annealing_in_two_steps_and_spectra_over_training(data_dir, tmp_path):
    cfg = cfg_for(data_dir, tmp_path, reduce_at="1,2", reduce_to="params:0.5,params:0.25")
    run = train(cfg, progress=False)
    first, second = cuts(run)
    r1, r2 = fraction_rank(32, 64, 0.5), fraction_rank(32, 64, 0.25)
    assert (first["step"], second["step"]) == (SPE, 2 * SPE)
    assert {l["rank_after"] for l in first["layers"]} == {r1}
    assert [l["rank_before"] for l in second["layers"]] == [r1, r1]
    assert {l["rank_after"] for l in second["layers"]} == {r2}
    model, _ = load_run(run)
    assert [s.module.rank for s in slots(model) if "ffn" in s.name] == [r2, r2]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["spectral"]["blocks.0.ffn.in"]["rank"] for r in rows] == [32, r1, r2]
    assert [r.get("cuts") for r in rows] == [None, [1.0], [2.0]]
    assert all(0 < r["spectral"]["blocks.0.ffn.out"]["stable_rank"] <= r["spectral"]["blocks.0.ffn.out"]["rank"]
               for r in rows)

    res = cli("spectrum", run, "--over-training", "--format", "json", "--plot", tmp_path / "over.png")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[:res.output.rindex("}") + 1])
    assert [(r["epoch"], r["rank"]) for r in got["rows"] if r["layer"] == "blocks.0.ffn.in"] == \
        [(0, 32), (1, 32), (2, r1), (3, r2)]
    assert [c["epoch"] for c in got["cuts"]] == [1.0, 2.0]
    assert (tmp_path / "over.png").read_bytes()[:4] == b"\x89PNG"
    res = cli("spectrum", tmp_path, "--over-training")
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_auto_rule_on_numbers():
    hist = [{"a": {"stable_rank": 5.0}, "b": {"stable_rank": 5.0}},
            {"a": {"stable_rank": 5.0}, "b": {"stable_rank": 7.0}},
            {"a": {"stable_rank": 5.02}, "b": {"stable_rank": 9.0}}]
    assert progressive.auto_stable(hist, "a", 2, 0.01) and not progressive.auto_stable(hist, "b", 2, 0.01)
    assert not progressive.auto_stable(hist[:2], "a", 2, 0.01)  # not enough epochs yet
    shapes = {"a": (64, 32), "b": (64, 32)}
    budget = 2 * fraction_rank(32, 64, 0.5) * 96
    ranks = progressive.auto_ranks({"a": 5.0, "b": 10.0}, shapes, budget)
    assert sum(r * 96 for r in ranks.values()) <= budget and ranks["b"] in (2 * ranks["a"], 2 * ranks["a"] + 1)
    assert sum((r + 1) * 96 for r in ranks.values()) > budget  # the largest ranks that fit


def test_auto_cuts_the_layer_held_still_and_leaves_the_moving_one(data_dir, tmp_path, monkeypatch):
    """blocks.0.ffn.in is frozen, so its stable rank is constant by construction; blocks.1.ffn.in trains."""
    real_build = loop.build_model

    def build_frozen(spec):
        model = real_build(spec)
        for s in slots(model):
            if s.name == "blocks.0.ffn.in" and not isinstance(s.module, FactoredLinear):
                s.module.requires_grad_(False)
        return model
    monkeypatch.setattr(loop, "build_model", build_frozen)
    cfg = cfg_for(data_dir, tmp_path, model=replace(TINY, depth=2), reduce_at="auto", reduce_layers=["*.ffn.in"],
                  reduce_window=1, reduce_tolerance=1e-9)
    run = train(cfg, progress=False)
    first, second = cuts(run)
    assert (first["epoch"], first["reason"], [l["name"] for l in first["layers"]]) == \
        (1.0, "stable", ["blocks.0.ffn.in"])
    # the moving layer is left dense until the start of the last epoch, where the budget is enforced
    assert (second["epoch"], second["reason"], [l["name"] for l in second["layers"]]) == \
        (2.0, "deadline", ["blocks.1.ffn.in"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["spectral"]["blocks.1.ffn.in"]["rank"] == 32 and rows[1]["spectral"]["blocks.0.ffn.in"]["rank"] < 32
    budget = 2 * fraction_rank(32, 64, 0.5) * (32 + 64)
    model, config = load_run(run)
    used = sum(s.module.rank * 96 for s in slots(model) if s.name.endswith("ffn.in"))
    assert used <= budget == config["progressive"]["budget_weights"]


def test_compare_puts_progressive_beside_lowrank_and_post_hoc(tmp_path):
    from conftest import COMPARE_TINY as spec, red, written_run as make_run
    make_run(tmp_path, "base", 0.80, spec=spec, params=10_000)
    make_run(tmp_path, "low", 0.78, spec=replace(spec, variant="lowrank", targets=["ffn-in"]), params=8_000)
    make_run(tmp_path, "svd", 0.75, params=7_980, reduction=red("svd", "ffn.in", 10))
    prog = make_run(tmp_path, "prog", 0.79, params=7_980)
    config = json.loads((prog / "config.json").read_text())
    config["progressive"] = {"reduce_at": "1", "cuts": [{"step": 20, "epoch": 1.0, "layers": [
        {"name": f"blocks.{b}.ffn.in", "rank_after": 10} for b in range(2)]}]}
    plan = {"reduce_at": "1", "reduce_to": "10", "reduce_layers": ["*.ffn.in"], "reduce_method": "svd"}
    config.update(plan)  # what the trainer records: the plan in the (flattened) request
    (prog / "config.json").write_text(json.dumps(config))
    c = compare.compare_runs([tmp_path], speed=False)
    got = [(r["label"], r["family"], r["paired_with"]) for r in c.rows]
    assert got == [("baseline", "baseline", None), ("lowrank ffn-in r=0.5", "train-time", None),
                   ("baseline -> svd ffn-in r=10", "post-hoc", "lowrank ffn-in r=0.5"),
                   ("progressive ffn-in 10@1", "progressive", "lowrank ffn-in r=0.5")]
    row = c.rows[-1]
    assert row["diff_vs_paired"] == pytest.approx(0.01) and row["diff_vs_baseline"] == pytest.approx(-0.01)


BAD = [
    (["--reduce-at", "3", "--reduce-to", "params:0.5", "--reduce-layer", "*.ffn.*"], "beyond the end of training"),
    (["--reduce-at", "1", "--reduce-to", "params:0.5", "--reduce-layer", "*.mlp.*"], "no layer matches '*.mlp.*'"),
    (["--reduce-at", "1", "--reduce-to", "rho:0.9", "--reduce-layer", "*.ffn.*"], "would not shrink"),
    (["--reduce-at", "1", "--reduce-to", "rho:0.25", "--reduce-layer", "*.ffn.*", "--reduce-layer", "9:fc_in"],
     "block '9'"),
    (["--reduce-at", "1,2", "--reduce-to", "params:0.5", "--reduce-layer", "*.ffn.*"], "1 SPEC(s) for 2 cut(s)"),
    (["--reduce-at", "1,2", "--reduce-to", "params:0.5,params:0.5", "--reduce-layer", "*.ffn.*"], "would not shrink"),
    (["--reduce-at", "auto", "--reduce-layer", "*.ffn.*"], "needs a budget"),
    (["--reduce-at", "auto", "--reduce-to", "rho:0.5", "--reduce-layer", "*.ffn.*"], "needs a budget"),
    (["--reduce-at", "soon", "--reduce-to", "params:0.5", "--reduce-layer", "*.ffn.*"], "not a number of epochs"),
    (["--reduce-to", "params:0.5", "--reduce-layer", "*.ffn.*"], "need --reduce-at"),
    (["--reduce-at", "1", "--reduce-to", "params:0.5"], "--reduce-layer"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_before_training(data_dir, tmp_path, args, message):
    common = ["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--dim", "32", "--depth", "1",
              "--heads", "2", "--dim-head", "16", "--mlp-dim", "64", "--patch-size", "7", "--epochs", "3",
              "--device", "cpu", "--out", str(tmp_path), "--name", "r"]
    one_line_error(cli(*common, *args), message)
    assert not (tmp_path / "r").exists()  # nothing was written: the check runs before the run directory is made


def test_training_flops_count_what_was_trained(data_dir, tmp_path):
    """A progressive run: its dense phase at dense cost, then the cut structure; a heal of a post-hoc cut:
    the baseline's whole training (dense) and then the heal (factored). Each against a count by hand from
    the per-step FLOPs of each structure."""
    from laser_tool.analysis import costs
    prog = train(cfg_for(data_dir, tmp_path / "p", reduce_at="1.5"), progress=False)
    config = json.loads((prog / "config.json").read_text())
    dense, cut = dict(config["model"], layers={}), config["model"]
    (d_img, d_bat), (c_img, c_bat) = costs.step_flops(dense), costs.step_flops(cut)
    at, total = 30, 3 * SPE  # the cut before step 30 of 60; 50 images a step
    assert costs.trained_flops(config) == d_img * 50 * at + d_bat * at + c_img * 50 * (total - at) + c_bat * (total - at)
    assert c_img < d_img

    base = train(cfg_for(data_dir, tmp_path / "b", reduce_at=None, reduce_to=None, reduce_layers=[]), progress=False)
    red = reduce_run(base, ["*.ffn.*"], ReduceSettings(rank="params:0.5", store="factored"), out=tmp_path / "red")
    healed = train(replace(cfg_for(data_dir, tmp_path / "h", reduce_at=None, reduce_to=None, reduce_layers=[]),
                           init_from=str(red), epochs=1, warmup_epochs=0.0), progress=False)
    hcfg = json.loads((healed / "config.json").read_text())
    (b_img, b_bat), (h_img, h_bat) = costs.step_flops(dict(hcfg["model"], layers={})), costs.step_flops(hcfg["model"])
    assert costs.trained_flops(json.loads((red / "config.json").read_text())) == b_img * 50 * total + b_bat * total
    assert costs.trained_flops(hcfg) == b_img * 50 * total + b_bat * total + h_img * 50 * SPE + h_bat * SPE
