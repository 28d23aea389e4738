"""Test one comparison row against another: which test applies, and its difference, interval and p.

A side is a row as compare.py builds it (or as results.json stores it): `accs` and `val_accs` (one per
run), `seeds`, `roots` (the trained run each run's weights descend from), `runs` (directories, where
predictions.safetensors lives), `test_size`, `val_size`. Two runs are the same sample of the
training noise when they share root and seed (a post-hoc cut of baseline seed 3 and baseline seed 3);
those are paired over seeds; so are two rows of one seed set, whatever their families (a seed fixes the
split, the batch order and the augmentation, data/). Welch only where the seed sets differ. With one
seed on a side, the runs are paired image by image instead.
"""
from functools import lru_cache
from statistics import mean

from ..runs.predictions import load_predictions, mismatch, predictions_path
from . import stats


@lru_cache(maxsize=1024)
def _predictions(run: str, mtime: float):
    return load_predictions(run)


def predictions(run):
    """(Predictions, None) or (None, why), cached per file version."""
    f = predictions_path(run)
    return _predictions(str(run), f.stat().st_mtime if f.exists() else -1.0)


def _accs(side, metric):
    return side["accs" if metric == "test" else "val_accs"]


def _size(side, metric):
    return side.get("test_size" if metric == "test" else "val_size")


def lineage_keys(side) -> list:
    return [(root, seed) for root, seed in zip(side.get("roots") or [None] * len(side["runs"]), side["seeds"])]


def _pick_partner(single: int, side, other) -> int:
    """Index in `other` of the run to pair with side's run `single`: same weights' lineage, else same seed,
    else the first."""
    key = lineage_keys(side)[single]
    keys = lineage_keys(other)
    if key in keys:
        return keys.index(key)
    return other["seeds"].index(key[1]) if key[1] in other["seeds"] else 0


def versus(a, b, metric="test") -> dict:
    """{diff, ci, ci_kind, p, p_kind, note} of side a against side b on `metric` (test | val).
    diff is in accuracy (fraction), ci the 95% half-width; any may be None; note explains a fallback."""
    out = dict(diff=None, ci=None, ci_kind=None, p=None, p_kind=None, note=None)
    xa, xb = _accs(a, metric), _accs(b, metric)
    if not xa or not xb or any(x is None for x in xa + xb):
        out["note"] = f"no {metric} accuracy on a side"
        return out
    if len(xa) >= 2 and len(xb) >= 2:
        ka, kb = lineage_keys(a), lineage_keys(b)
        shared = [(ka.index(k), kb.index(k)) for k in dict.fromkeys(ka) if k in kb and k[0] is not None]
        sa, sb = a["seeds"], b["seeds"]
        if len(shared) < 2 and len(set(sa)) == len(sa) >= 2 and set(sa) == set(sb):
            # The same seeds on both sides: each pair shares its split and batch order (data/), so the
            # seeds pair whatever the rows' families
            shared = [(i, sb.index(seed)) for i, seed in enumerate(sa)]
        if len(shared) >= 2:
            pa, pb = [xa[i] for i, _ in shared], [xb[j] for _, j in shared]
            p, half = stats.paired_t(pa, pb)
            out.update(diff=mean(pa) - mean(pb), ci=half, ci_kind="paired-seeds", p=p, p_kind="paired-t")
            if len(shared) < max(len(xa), len(xb)):
                out["note"] = f"paired over the {len(shared)} seeds both rows share"
            return out
        half, kind = stats.diff_halfwidth(xa, xb)
        out.update(diff=mean(xa) - mean(xb), ci=half, ci_kind=kind, p=stats.welch_p(xa, xb), p_kind="welch")
        return out
    # One seed on a side: pair one run of each image by image.
    ia, ib = (0, _pick_partner(0, a, b)) if len(xa) == 1 else (_pick_partner(0, b, a), 0)
    pa, why_a = predictions(a["runs"][ia])
    pb, why_b = predictions(b["runs"][ib])
    why = why_a or why_b or mismatch(pa, pb, metric)
    if why is None:
        n, bb, cc = stats.paired_counts(pa.correct(metric), pb.correct(metric))
        d, half = stats.paired_diff_interval(n, bb, cc)
        out.update(diff=d, ci=half, ci_kind="paired-images", p=stats.mcnemar_exact(bb, cc), p_kind="mcnemar",
                   discordant=[bb, cc])
        if len(xa) > 1 or len(xb) > 1:
            out["note"] = "one seed on a side: paired with the other side's run of the same seed only"
        return out
    half, kind = stats.diff_halfwidth(xa, xb, _size(a, metric), _size(b, metric))
    p = stats.two_proportion_z(mean(xa), _size(a, metric), mean(xb), _size(b, metric)) \
        if len(xa) == 1 and len(xb) == 1 else None
    out.update(diff=mean(xa) - mean(xb), ci=half, ci_kind=kind, p=p, p_kind="z-unpaired" if p is not None else None,
               note=f"unpaired test: {why}")
    return out
