"""`study --match-compute`: rows trained for as long as a healed row costs.

A healed row's weights cost the baseline's whole dense training plus the heal's epochs at the cut
model's cost (analysis/costs.trained_flops). A train-time or narrower row at the same budget costs less
per epoch than the dense model, so at the baseline's epochs it has had less compute than the heal it is
compared with. Its compute-matched twin trains for

    E = (E_base * F_dense + E_heal * F_cut) / F_row

epochs (fractional: round(E x steps per epoch) optimizer steps), F_* being the FLOPs of one optimizer step
that analysis/costs counts (every row takes the same steps per epoch); a progressive twin is dense for its first third, so there
F_row = F_dense / 3 + 2 F_cut / 3. The twin records `matched_to` (the healed row's name), which keeps
it apart from the iso-epoch row and lets it be tested against the baseline of the same recipe.
"""
from dataclasses import replace

from ..analysis.costs import step_flops
from ..data import fit_model
from ..errors import UserError
from ..models import build_model
from ..posthoc.ranks import resolve_rank, select

EPOCH_DECIMALS = 2  # E is rounded to this: an error below 0.5% of even a one-epoch run


def cut_spec(base_spec, selectors: list):
    """The baseline's spec with the layers a post-hoc cut (`reduce --layer SELECTOR=params:F ...
    --store factored`) makes factored: the structure a heal trains, known before any cut is made."""
    chosen = select(build_model(base_spec), selectors)
    layers = {}
    for name, (slot, spec) in chosen.items():
        m = slot.module
        rank = resolve_rank(spec, m.out_features, m.in_features, layer=name)
        layers[name] = {"kind": "factored", "rank": rank, "bias": getattr(m, "bias", None) is not None}
    return replace(base_spec, layers=layers)


def per_step(spec, batch_size: int) -> float:
    """FLOPs of one optimizer step of `batch_size` images (per-batch work such as SKL's matrix included)."""
    per_image, per_batch = step_flops(spec)
    return float(per_image * batch_size + per_batch)


def dense_and_cut_steps(base_cfg, selectors: list) -> tuple:
    """FLOPs of one optimizer step of the baseline and of its cut by `selectors` (the model a heal trains)."""
    base = fit_model(base_cfg.model, base_cfg.dataset)
    b = base_cfg.batch_size
    return per_step(base, b), per_step(cut_spec(base, selectors), b)


def matched_epochs(base_cfg, row_cfg, selectors: list, heal_epochs: int, progressive_at: float = None) -> float:
    """The epochs that make `row_cfg`'s training FLOPs equal a heal of `heal_epochs` of the baseline cut
    by `selectors`; `progressive_at` is the fraction of training a progressive row spends dense."""
    f_dense, f_cut = dense_and_cut_steps(base_cfg, selectors)
    target = base_cfg.epochs * f_dense + heal_epochs * f_cut
    if progressive_at is not None:
        f_row = progressive_at * f_dense + (1 - progressive_at) * f_cut
    else:
        f_row = per_step(fit_model(row_cfg.model, row_cfg.dataset), base_cfg.batch_size)
    return round(target / f_row, EPOCH_DECIMALS)


def control_epochs(base_cfg, selectors: list, heal_epochs: int) -> float:
    """The epochs of dense training that cost what a heal of `heal_epochs` of the baseline cut by `selectors`
    costs: the compute control of that budget's heals (matched in FLOPs, not epochs, so the control has not
    trained more than the heals it is measured against)."""
    f_dense, f_cut = dense_and_cut_steps(base_cfg, selectors)
    return round(heal_epochs * f_cut / f_dense, EPOCH_DECIMALS)


def check_match_compute(families, post_hoc, heal_epochs) -> None:
    """--match-compute needs heals to match and rows to match them with, before anything runs."""
    if not any(f in post_hoc for f in families):
        raise UserError("--match-compute matches rows to the healed post-hoc rows' compute: add a post-hoc family "
                        "(svd or whiten) to --families")
    if all(f in post_hoc for f in families):
        raise UserError("--match-compute trains the train-time and narrower rows longer, and --families has only "
                        "post-hoc ones: add narrower or a train-time layer family, or drop --match-compute")
    if not heal_epochs:
        raise UserError("--match-compute matches the healed rows' compute: give --heal-epochs 1 or more")
