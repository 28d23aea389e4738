"""Latency as the answer uses it (export/latency.py): models timed in shared rounds, in rotated order, so
that two models of one architecture measure alike on a shared machine, and each model timed in the form
it would be deployed in."""
import torch

from laser_tool.export import latency
from laser_tool.models import ModelSpec, build_model

# The quick preset's model (trainers/presets.py): big enough that its batch-64 time is matmul-bound.
QUICK = ModelSpec(arch="vit-tiny", dim=128, depth=3, heads=4, dim_head=32, mlp_dim=256, patch_size=7,
                  dropout=0.0, emb_dropout=0.0, image_size=28, channels=1, num_classes=10)


def test_rounds_rotate_so_every_model_is_timed_first_in_turn(monkeypatch):
    monkeypatch.setattr(latency, "TARGET_S", 0.0)  # one run per sample
    order = []
    runners = {k: (lambda x, k=k: order.append(k)) for k in "abc"}
    out = latency.time_interleaved(runners, lambda b: torch.zeros(b, 1), batches=(1,), rounds=4, threads=1)
    assert order[:12] == list("aaaabbbbcccc")  # three warm-ups and one calibration run each
    assert "".join(order[12:]) == "aabbcc" + "bbccaa" + "ccaabb" + "aabbcc"  # an untimed run before each sample
    assert set(out) == set("abc") and all(set(v["1"]) == {"median_ms", "iqr_ms"} for v in out.values())


def test_two_models_of_one_architecture_measure_alike_within_their_spread():
    models = {}
    for seed in (0, 1):  # one architecture, two sets of weights: a baseline and its compute control
        torch.manual_seed(seed)
        models[seed] = (build_model(QUICK), QUICK)
    records, errors = latency.measure_models(models, threads=2, rounds=30)
    assert errors == {}
    for b in ("1", "64"):
        a, c = records[0]["batch"][b], records[1]["batch"][b]
        assert abs(a["median_ms"] - c["median_ms"]) <= a["iqr_ms"] + c["iqr_ms"], (b, a, c)
    assert records[0]["form"] == records[1]["form"] == latency.AS_TRAINED  # dense: one form only
