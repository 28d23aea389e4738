"""How many seeds a study's confirmatory family needs to be decided, by simulation from its own per-seed spread.

    .venv/bin/python bench/decided_power.py --study studies/quick     # the main job's answer (results.json)
    .venv/bin/python bench/decided_power.py --tiny --out FILE          # smoke test from the recorded inputs

Issue 29 asks that at least 2/3 of the main job's comparisons be decided, or that a simulation show why
the seed cap was reached. This takes each comparison of a study's decided answer (results.json `answer`:
its per-seed test-accuracy differences), and simulates the same family again at n confirmation seeds,
each comparison's per-seed differences drawn from N(estimate, sd^2) with the observed estimate and sd
(a plug-in: the observed effect taken as the truth), decided as the study decides (analysis/seedsim.run:
the paired t, TOST against the margin and one Holm-Shaffer step-down family at alpha 0.05, one look).
A second scenario sets every estimate inside the margin to exactly 0 (the most favourable truth for an
equivalence verdict). Reported per n: the mean share of comparisons decided, P(at least 2/3 decided) and
each comparison's P(decided).
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
from laser_tool.analysis.answer import MARGIN  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "decided_power.json"
SEEDS, ALPHA = (5, 7, 10, 15, 20, 30), 0.05
TINY = dict(reps=200)


def observed(study: Path) -> dict:
    """The family as the study decided it: per comparison its name, per-seed differences and verdict."""
    doc = json.loads((study / "results.json").read_text())
    answer = doc.get("answer")
    if not answer:
        sys.exit(f"error: {study / 'results.json'} has no decided answer; run the study with --confirm-seeds")
    margin = answer[0].get("margin") or MARGIN  # recorded in each entry since this script; the default before
    return dict(study=str(study), margin=margin, comparisons=[
        dict(comparison=c["comparison"], a=c["a"], b=c["b"], per_seed=c["per_seed"], verdict=c["verdict"])
        for c in answer])


def simulate(family: dict, reps: int, rng, zero_inside: bool) -> dict:
    margin = family["margin"]
    est = np.array([np.mean(c["per_seed"]) for c in family["comparisons"]])
    sd = np.array([np.std(c["per_seed"], ddof=1) for c in family["comparisons"]])
    if zero_inside:
        est = np.where(np.abs(est) < margin, 0.0, est)
    out = {}
    for n in SEEDS:
        d = est[None, :, None] + sd[None, :, None] * rng.standard_normal((reps, len(est), n))
        verdict, _, _ = seedsim.run(d, margin, (n,), (ALPHA,))
        settled = verdict != seedsim.INCONCLUSIVE
        share = settled.mean(axis=1)
        out[str(n)] = dict(mean_decided=float(share.mean()), p_two_thirds=float((share >= 2 / 3 - 1e-9).mean()),
                           per_comparison=[round(float(x), 4) for x in settled.mean(axis=0)])
    return dict(estimates_pp=[round(100 * x, 3) for x in est], sd_pp=[round(100 * x, 3) for x in sd], by_seeds=out)


def table(doc) -> str:
    lines = ["| confirmation seeds | " + " | ".join(doc["results"]) + " |", "|---|" + "---|" * len(doc["results"])]
    for n in map(str, SEEDS):
        cells = [f"{r['by_seeds'][n]['mean_decided']:.2f} / {r['by_seeds'][n]['p_two_thirds']:.2f}"
                 for r in doc["results"].values()]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", help="a study directory with a decided answer (default: the recorded inputs)")
    ap.add_argument("--reps", type=int, default=20_000, help="simulated studies per seed count (20,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help=f"results file (default {RESULTS})")
    a = tiny.parse(ap, argv, TINY, str(RESULTS))
    if a.study:
        family = observed(Path(a.study))
    elif RESULTS.exists():
        family = json.loads(RESULTS.read_text())["observed"]
    else:
        sys.exit("error: no recorded inputs; give --study DIR (a study run with --confirm-seeds)")
    start, rng = time.time(), np.random.default_rng(a.seed)
    doc = dict(about=__doc__.split("\n")[0], observed=family,
               settings=dict(alpha=ALPHA, margin=family["margin"], seeds=SEEDS, reps=a.reps, rng_seed=a.seed),
               results={"plug-in": simulate(family, a.reps, rng, False),
                        "inside the margin set to 0": simulate(family, a.reps, rng, True)},
               tiny=bool(a.tiny))
    doc["seconds"] = round(time.time() - start, 1)
    atomic_write_json(Path(a.out or RESULTS), doc)
    print(table(doc))


if __name__ == "__main__":
    main()
