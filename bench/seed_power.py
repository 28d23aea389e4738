"""Sizes and power of the verdicts over seeds (issue 29; laser_tool/analysis/seeds.py), by simulation.

    .venv/bin/python bench/seed_power.py [--reps 20000] [--out bench/results/seed_power.json]
    .venv/bin/python bench/seed_power.py --tiny --out FILE   # smoke test, a second

Each replicate is one study: a family of K = 6 comparisons, per seed a paired difference d_i = delta +
u_i + e_i with a seed-level random effect u_i ~ N(0, tau^2) (tau 0.1, 0.3, 0.5 pp) and the test-set
noise e_i of two models on 10,000 images that disagree on 8% of them (sd 0.28 pp; analysis/seedsim.py).
Margin 0.5 pp, family alpha 0.05. Fixed studies decide once at 3, 5 or 10 seeds; sequential ones
(`--until-decided`) look at 3, 4, ..., 10 seeds with alpha spent over the 8 looks ("uniform": 0.05/8
each; "seeds": proportional to the look's seed count, the default of seeds.look_alphas).
  size:  the family-wise rate of rejecting a true null, three families: every delta 0 (false better or
         worse), every |delta| = margin (false equivalence; signs alternate), and a mix (0, 0, 0, +M,
         -M, +M): all three should stay <= 0.05 up to Monte Carlo error (se beside each rate).
  power: P(better) of a comparison with delta = 1 pp in a family whose 5 others have delta 0 (K = 6),
         or 2 others (K = 3); the sequential rows add the mean seeds it used and P(worse).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402

from laser_tool.analysis import seedsim  # noqa: E402
from laser_tool.analysis.seeds import look_alphas, looks_plan  # noqa: E402

MARGIN, ALPHA, TAUS, PP = 0.005, 0.05, (0.001, 0.003, 0.005), 0.01
PLAN = looks_plan(3, 10, 1)
FAMILIES = {"null": [0.0] * 6, "margin": [MARGIN, -MARGIN] * 3, "mix": [0, 0, 0, MARGIN, -MARGIN, MARGIN]}
TINY = dict(reps=400)


def designs():
    """{name: (plan, per-look alphas)}: fixed studies and the two sequential spendings."""
    out = {f"fixed {n}": ((n,), (ALPHA,)) for n in (3, 5, 10)}
    out.update({f"sequential 3..10, {s}": (PLAN, look_alphas(PLAN, ALPHA, s)) for s in ("uniform", "seeds")})
    return out


def sizes(reps: int, rng) -> dict:
    out = {}
    for tau in TAUS:
        for fam, deltas in FAMILIES.items():
            d = seedsim.simulate(rng, reps, deltas, max(PLAN), tau)
            for name, (plan, alphas) in designs().items():
                _, rejected, _ = seedsim.run(d, MARGIN, plan, alphas)
                out.setdefault(f"tau {100 * tau:g} pp", {}).setdefault(fam, {})[name] = \
                    seedsim.rate(seedsim.family_errors(deltas, rejected, MARGIN))
    return out


def powers(reps: int, rng) -> dict:
    out = {}
    for tau in TAUS:
        for k in (3, 6):
            d = seedsim.simulate(rng, reps, [PP] + [0.0] * (k - 1), max(PLAN), tau)
            for name, (plan, alphas) in designs().items():
                verdict, _, used = seedsim.run(d, MARGIN, plan, alphas)
                row = dict(better=seedsim.rate(verdict[:, 0] == seedsim.BETTER)["rate"],
                           worse=seedsim.rate(verdict[:, 0] == seedsim.WORSE)["rate"])
                if len(plan) > 1:
                    row["mean_seeds"] = float(used[:, 0].mean())
                out.setdefault(f"tau {100 * tau:g} pp", {}).setdefault(f"K={k}", {})[name] = row
    return out


def table(doc) -> str:
    """The power table, in markdown (P(better) for delta = 1 pp, K = 6; mean seeds for the sequential)."""
    names = list(designs())
    lines = ["| tau | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for tau, fams in doc["power"].items():
        cells = [f"{r['better']:.3f}" + (f" ({r['mean_seeds']:.1f} seeds)" if "mean_seeds" in r else "")
                 for r in (fams["K=6"][n] for n in names)]
        lines.append(f"| {tau} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20_000, help="simulated studies per cell (20,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="results file (default bench/results/seed_power.json)")
    a = tiny.parse(ap, argv, TINY, "bench/results/seed_power.json")
    a.out = a.out or str(Path(__file__).parent / "results" / "seed_power.json")
    start, rng = time.time(), np.random.default_rng(a.seed)
    doc = dict(about=__doc__.split("\n")[0], settings=dict(
        K=6, margin=MARGIN, alpha=ALPHA, taus=TAUS, delta_power=PP, plan=PLAN, discordant=seedsim.DISCORDANT,
        images=seedsim.IMAGES, image_noise_sd=seedsim.image_noise_sd(), reps=a.reps, rng_seed=a.seed,
        designs={k: dict(plan=p, alphas=al) for k, (p, al) in designs().items()}),
        size=sizes(a.reps, rng), power=powers(a.reps, rng), tiny=bool(a.tiny))
    doc["seconds"] = round(time.time() - start, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(table(doc))


if __name__ == "__main__":
    main()
