"""The frontier's allocated post-hoc families, svd-alloc and whiten-alloc: the baseline cut post hoc with
per-layer ranks that `search` chooses on validation, under the parameter budget of the uniform cut at the
same `keep` (budget uniform:KEEP: at most the parameters the uniform svd/whiten row holds), so the two are
compared at equal parameters. Every budget of one baseline and method shares one sensitivity sweep.

The search is kept cheap enough for the quick study (SEARCH): the sweep scores each layer at each grid rank
on the first 500 validation images, by validation loss (single-layer accuracy drops on so few images are
mostly 0, which would leave most of the budget unused), and the threshold allocation is taken as it is (no
greedy compose, which would chase the noise of a small split below the budget). The rows themselves report the whole
validation and test splits. Each step is exactly `laser-tool search ... --apply` (its command says so).
"""
from pathlib import Path

from ..posthoc.methods import cut_methods
from .steps import search_step

ALLOCATED = tuple(f"{m}-alloc" for m in cut_methods())
SEARCH = dict(val_images=500, criterion="loss", compose=False)


def allocated_steps(runs: Path, base: str, families, budgets, selectors, seed: int, sfx: str = None) -> list:
    """The reduce steps of the allocated families among `families`, one per budget, cutting `base`; `sfx`
    ends each run name (default -sSEED)."""
    sfx = f"-s{seed}" if sfx is None else sfx
    steps = []
    for fam in (f for f in families if f in ALLOCATED):
        method = fam[:-len("-alloc")]
        for keep in budgets:
            steps.append(search_step(runs, base, f"{fam}-k{keep:g}{sfx}", list(selectors), method, seed,
                                     f"uniform:{keep:g}", SEARCH, group=f"{base}|{fam}"))
    return steps
