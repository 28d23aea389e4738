"""stats.py against hand-computed values and scipy; predictions files; the choice of test in paired.py."""
import json
import math

import pytest
import torch
from scipy.stats import ttest_rel

from laser_tool.analysis import paired
from laser_tool.analysis import stats
from laser_tool.runs.predictions import load_predictions, mismatch, save_predictions


def test_mcnemar_exact_hand_values():
    # 30 vs 10 discordant images: 2 * P(X <= 10), X ~ Binomial(40, 1/2) = 2 * sum_{k<=10} C(40,k) / 2^40
    hand = 2 * sum(math.comb(40, k) for k in range(11)) / 2 ** 40
    assert stats.mcnemar_exact(30, 10) == pytest.approx(hand, rel=1e-12)
    assert round(stats.mcnemar_exact(30, 10), 5) == 0.00222
    assert stats.mcnemar_exact(10, 30) == stats.mcnemar_exact(30, 10)       # two-sided: symmetric
    assert stats.mcnemar_exact(5, 0) == pytest.approx(2 / 32)                # 2 * (1/2)^5
    assert stats.mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0  # capped; nothing discordant


def test_paired_t_matches_scipy_and_the_t_interval():
    a = [0.861, 0.872, 0.858, 0.866]
    b = [0.850, 0.869, 0.851, 0.857]
    p, half = stats.paired_t(a, b)
    assert p == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-10)
    d = [x - y for x, y in zip(a, b)]
    sd = math.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3)
    assert half == pytest.approx(3.182446305284263 * sd / 2, rel=1e-9)  # t(0.975, 3 df), table value
    assert stats.paired_t([0.8], [0.7]) == (None, None)
    assert stats.paired_t([0.8, 0.9], [0.7, 0.8]) == (None, 0.0)  # every difference equal: t undefined
    with pytest.raises(ValueError):
        stats.paired_t([0.8, 0.9], [0.7])


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02 0.03 0.06 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]  # None: no test
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_paired_interval_and_unpaired_z_hand_formulas():
    n, b, c = 100, 10, 4
    d, half = stats.paired_diff_interval(n, b, c)
    assert d == pytest.approx(0.06)
    assert half == pytest.approx(1.959963984540054 * math.sqrt((0.14 - 0.06 ** 2) / 100))
    assert stats.paired_counts([1, 1, 0, 0, 1], [1, 0, 1, 0, 0]) == (5, 2, 1)
    p1, p2, n1, n2 = 0.88, 0.86, 10_000, 10_000
    pool = (p1 + p2) / 2
    z = (p1 - p2) / math.sqrt(pool * (1 - pool) * 2 / 10_000)
    assert stats.two_proportion_z(p1, n1, p2, n2) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert stats.two_proportion_z(0.8, None, 0.7, 10) is None


def _side(run, acc, val=None, seed=0, root=None):
    return dict(accs=[acc], val_accs=[val], seeds=[seed], roots=[root], runs=[str(run)], test_size=None, val_size=None)


def test_predictions_file_round_trip_and_mismatch(tmp_path):
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    save_predictions(tmp_path / "a", "fashion-mnist", torch.tensor([0, 1, 2, 0, 0, 5]), y,
                     val=torch.tensor([1, 1]), val_labels=torch.tensor([1, 0]), val_indices=[3, 7])
    pa, why = load_predictions(tmp_path / "a")
    assert why is None and pa.tensors["test"].dtype == torch.int16
    assert pa.correct("test").tolist() == [True, True, True, False, False, True]
    assert pa.meta["dataset"] == "fashion-mnist" and pa.meta["test_size"] == 6
    save_predictions(tmp_path / "b", "mnist", y, y)
    save_predictions(tmp_path / "c", "fashion-mnist", y[:5], y[:5])
    save_predictions(tmp_path / "d", "fashion-mnist", y, y, val=torch.tensor([1, 0]), val_labels=torch.tensor([1, 0]),
                     val_indices=[3, 8])
    pb, pc, pd = (load_predictions(tmp_path / k)[0] for k in "bcd")
    assert "different datasets" in mismatch(pa, pb, "test")
    assert "differ in length (6 vs 5)" in mismatch(pa, pc, "test")
    assert mismatch(pa, pd, "test") is None and "another val split" in mismatch(pa, pd, "val")
    assert load_predictions(tmp_path / "none") == (None, "no predictions.safetensors")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "predictions.safetensors").write_bytes(b"junk")
    assert "unreadable" in load_predictions(tmp_path / "e")[1]


def test_versus_picks_mcnemar_paired_t_welch_or_unpaired(tmp_path):
    y = torch.arange(40) % 10
    right = torch.ones(40, dtype=torch.bool)
    ca, cb = right.clone(), right.clone()
    ca[:3] = False   # A wrong on 3 images B gets right
    cb[3:12] = False  # B wrong on 9 images A gets right
    for name, c in (("a", ca), ("b", cb)):
        save_predictions(tmp_path / name, "fashion-mnist", torch.where(c, y, (y + 1) % 10), y)
    t = paired.versus(_side(tmp_path / "a", 37 / 40), _side(tmp_path / "b", 31 / 40))
    assert t["p_kind"] == "mcnemar" and t["discordant"] == [9, 3]
    assert t["p"] == pytest.approx(stats.mcnemar_exact(9, 3)) and t["diff"] == pytest.approx(6 / 40)
    assert t["ci_kind"] == "paired-images"
    # without a predictions file: the unpaired z-test, and the reason
    t = paired.versus(_side(tmp_path / "a", 37 / 40) | {"test_size": 40},
                      _side(tmp_path / "nope", 31 / 40) | {"test_size": 40})
    assert t["p_kind"] == "z-unpaired" and t["note"] == "unpaired test: no predictions.safetensors"
    assert t["p"] == pytest.approx(stats.two_proportion_z(37 / 40, 40, 31 / 40, 40))
    # several seeds sharing their weights' lineage: paired t; independent seeds: Welch
    base = dict(accs=[0.86, 0.87, 0.85], val_accs=[None] * 3, seeds=[0, 1, 2], roots=["b0", "b1", "b2"],
                runs=["x", "y", "z"])
    cut = dict(base, accs=[0.84, 0.86, 0.845])
    t = paired.versus(cut, base)
    assert t["p_kind"] == "paired-t" and t["p"] == pytest.approx(ttest_rel(cut["accs"], base["accs"]).pvalue)
    other = dict(cut, roots=["o0", "o1", "o2"])  # another lineage, the same seeds: paired by seed
    t = paired.versus(other, base)
    assert t["p_kind"] == "paired-t" and t["p"] == pytest.approx(ttest_rel(other["accs"], base["accs"]).pvalue)
    apart = dict(other, seeds=[3, 4, 5])  # other seeds: independent samples, Welch
    t = paired.versus(apart, base)
    assert t["p_kind"] == "welch" and t["p"] == pytest.approx(stats.welch_p(apart["accs"], base["accs"]))


def _pair(n, p_a, p_b, agree, g):
    """Per-image correctness of two models on n images: equal where they agree (probability `agree`),
    independent otherwise, with marginal accuracies p_a and p_b."""
    shared = torch.rand(n, generator=g) < agree
    u = torch.rand(n, generator=g)
    a = torch.where(shared, u < p_a, torch.rand(n, generator=g) < p_a)
    b = torch.where(shared, u < p_b, torch.rand(n, generator=g) < p_b)
    return a, b


def test_the_paired_bootstrap_covers_a_null_difference_and_tost_rarely_calls_1_pp_equivalent():
    """Two models of equal accuracy (85%), one seed and 2 seeds: the 95% paired bootstrap interval covers
    0 in >= 93% of 200 simulations; with a true 1 pp difference TOST at M = 0.5 pp declares them
    equivalent in <= 5%."""
    from laser_tool.analysis.bootstrap import draws, interval
    g = torch.Generator().manual_seed(0)
    for seeds in (1, 2):
        covered = equivalent = 0
        for sim in range(200):
            null = [_pair(1000, 0.85, 0.85, 0.8, g) for _ in range(seeds)]
            lo, hi = interval(draws({s: a for s, (a, _) in enumerate(null)},
                                    {s: b for s, (_, b) in enumerate(null)}, n=2000, seed=sim), 0.95)
            covered += lo <= 0 <= hi
            apart = [_pair(1000, 0.86, 0.85, 0.8, g) for _ in range(seeds)]
            lo, hi = interval(draws({s: a for s, (a, _) in enumerate(apart)},
                                    {s: b for s, (_, b) in enumerate(apart)}, n=2000, seed=sim), 0.90)
            equivalent += -0.005 < lo and hi < 0.005
        assert covered >= 0.93 * 200, (seeds, covered)
        assert equivalent <= 0.05 * 200, (seeds, equivalent)


def test_verdicts_follow_the_holm_test_and_the_equivalence_check():
    from laser_tool.analysis.bootstrap import verdict
    assert verdict(0.01, 0.001, False, 0.005) == "better" and verdict(-0.01, 0.01, True, 0.005) == "worse"
    assert verdict(0.001, 0.4, True, 0.005) == "equivalent within 0.5 pp"
    assert verdict(0.004, 0.4, False, 0.005) == "inconclusive" and verdict(None, None, None, 0.005) == "inconclusive"


def test_bootstrap_draws_resample_images_as_indexing_would():
    """One seed: the draws' mean and spread are those of resampling the N images (the per-image
    difference is +1 b times, -1 c times: variance ((b + c)/N - d^2)/N), and the seed is reproducible."""
    from laser_tool.analysis.bootstrap import draws
    a, b = torch.zeros(1000, dtype=torch.bool), torch.zeros(1000, dtype=torch.bool)
    a[:900], b[:870], b[950:] = True, True, True       # b: 30 images only A gets, c: 50 only B gets
    s = draws({0: a}, {0: b}, n=20000, seed=1)
    d, sd = (30 - 50) / 1000, ((80 / 1000 - 0.02 ** 2) / 1000) ** 0.5
    assert abs(float(s.mean()) - d) < 0.1 * sd and abs(float(s.std()) / sd - 1) < 0.03
    assert torch.equal(s, draws({0: a}, {0: b}, n=20000, seed=1))


def test_runs_of_one_seed_share_split_and_batch_order_whatever_their_family(tmp_path, monkeypatch):
    """What pairing rows by seed rests on: a baseline, a narrower and a low-rank run of seed 3 see the same
    validation images and the same batches in the same order (the augmentation draws are keyed the same)."""
    from dataclasses import replace
    from laser_tool.data.loader import BatchLoader
    from synthetic import write_tiny_mnist
    from conftest import TINY
    from trainers.config import TrainConfig
    from trainers.train import train
    data = write_tiny_mnist(tmp_path / "mnist", n_train=300, n_test=50)
    seen, real = {}, BatchLoader.epoch

    def record(self, epoch, start_step=0):
        batches = list(real(self, epoch, start_step))
        seen.setdefault(current[0], []).append([y.tolist() for _, y in batches])
        return iter(batches)
    monkeypatch.setattr(BatchLoader, "epoch", record)
    current = [None]
    base = TrainConfig(model=TINY, dataset="mnist", data_dir=str(data), val_size=50, epochs=2, batch_size=50,
                       device="cpu", out=str(tmp_path / "runs"), seed=3, augment=True)
    for name, model in (("base", TINY), ("narrow", replace(TINY, mlp_dim=16)),
                        ("low", replace(TINY, variant="lowrank", targets=["ffn"], keep=0.5))):
        current[0] = name
        train(replace(base, model=model, name=name), progress=False)
    splits = {n: json.loads((tmp_path / "runs" / n / "config.json").read_text())["split"]["val_indices"]
              for n in seen}
    assert splits["base"] == splits["narrow"] == splits["low"]
    assert seen["base"] == seen["narrow"] == seen["low"] and len(seen["base"]) == 2
