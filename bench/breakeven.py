"""Where a cut stops paying: per layer shape of the models laser-tool builds, the rank below which a factored
layer (two matmuls, rank r) runs faster than its dense layer on this CPU, at a batch of 1 and of 64 images.

    .venv/bin/python bench/breakeven.py [--out bench/results/breakeven.json] [--threads 2] [--rounds 15]
    .venv/bin/python bench/breakeven.py --tiny --out FILE      # smoke test, seconds

For each preset's model (quick, quick-narrow, the seed's ViT-tiny) every distinct (d_out, d_in, rows per
image) of its attention and FFN layers is timed dense and at a grid of ranks (posthoc/layer_time.py: torch
eager, fixed threads, every case of one batch size in shared rounds, median). The break-even rank is the
largest grid rank below which every grid rank's factor pair is faster than the dense layer (the first
crossing from below: noise can make a single higher rank look faster); the FLOP break-even
d_in d_out / (d_in + d_out) is beside it: the rank below which the factor pair does fewer multiply-adds.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from laser_tool.device import cpu_name  # noqa: E402
from laser_tool.models import ModelSpec, build_model  # noqa: E402
from laser_tool.models.surgery import slots  # noqa: E402
from laser_tool.posthoc.layer_time import layer_times, tokens_per_image  # noqa: E402
from trainers.presets import PRESETS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "breakeven.json"
MODELS = {"quick": dict(PRESETS["quick"]["model"], image_size=28, channels=1),
          "quick-narrow": dict(PRESETS["quick-narrow"]["model"], image_size=28, channels=1),
          "seed-vit-tiny": dict(arch="vit-tiny", image_size=32, channels=3)}
TINY = dict(models="quick", rounds=3, steps=3, batches="1")


def shapes(spec: ModelSpec) -> dict:
    """{(d_out, d_in, rows per image): [layer names]} of a model's attention and FFN layers."""
    model = build_model(spec)
    names = [s.name for s in slots(model)]
    rows = tokens_per_image(model, spec, names)
    out = {}
    for s in slots(model):
        out.setdefault((s.module.out_features, s.module.in_features, rows[s.name]), []).append(s.name)
    return out


def rank_grid(d_out: int, d_in: int, steps: int) -> list:
    """About `steps` ranks from 1 to the full rank, denser below the FLOP break-even."""
    full, flop = min(d_out, d_in), d_out * d_in / (d_out + d_in)
    ranks = {max(1, round(flop * i / steps)) for i in range(1, steps + 1)}
    ranks |= {max(1, round(flop + (full - flop) * i / 4)) for i in range(1, 5)}
    return sorted(ranks)


def breakeven(model_shapes: dict, batch: int, threads: int, rounds: int, steps: int) -> list:
    cases, rows = {}, {}
    for (d_out, d_in, per_image) in model_shapes:
        for r in [None] + rank_grid(d_out, d_in, steps):
            cases[(d_out, d_in, per_image, r)] = (d_out, d_in, r)
            rows[(d_out, d_in, per_image, r)] = batch * per_image
    ms = layer_times(cases, rows, threads, rounds)
    out = []
    for (d_out, d_in, per_image), names in model_shapes.items():
        dense = ms[(d_out, d_in, per_image, None)]
        ranks = {r: ms[(d_out, d_in, per_image, r)] for r in rank_grid(d_out, d_in, steps)}
        first_loss = next((r for r, t in ranks.items() if t >= dense), None)
        paying = [r for r in ranks if first_loss is None or r < first_loss]
        out.append(dict(shape=[d_out, d_in], rows_per_image=per_image, layers=names, dense_ms=round(dense, 4),
                        rank_ms={str(r): round(t, 4) for r, t in ranks.items()},
                        breakeven_rank=max(paying) if paying else None,
                        flop_breakeven_rank=round(d_out * d_in / (d_out + d_in), 1),
                        ratio_at_breakeven=round(ranks[max(paying)] / dense, 3) if paying else None))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=12, help="grid ranks up to the FLOP break-even")
    ap.add_argument("--batches", default="1,64")
    args = tiny.parse(ap, argv, TINY, RESULTS)
    t0 = time.time()
    results = {}
    with torch.inference_mode():
        for name in args.models.split(","):
            spec = ModelSpec.from_dict(MODELS[name]).resolved()
            found = shapes(spec)
            results[name] = {b: breakeven(found, int(b), args.threads, args.rounds, args.steps)
                             for b in args.batches.split(",")}
    doc = dict(about=__doc__.split("\n")[0], machine=dict(processor=cpu_name(), threads=args.threads,
                                                          torch=torch.__version__, python=platform.python_version()),
               settings=dict(rounds=args.rounds, steps=args.steps, runtime="torch eager, CPU"),
               results=results, seconds=round(time.time() - t0, 1))
    tiny.write(doc, args, RESULTS)


if __name__ == "__main__":
    main()
