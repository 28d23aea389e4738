"""Which steps a study preset makes: a frontier (frontier.py) or one of the seed's grids (grids.py)."""
from pathlib import Path

from ..errors import UserError
from .frontier import FRONTIERS, plan_frontier
from .grids import DEFAULT_SEEDS, GRIDS, plan_grid


def plan(preset: str, seeds: int, out: Path, epochs=None, heal_epochs=None, device="auto", data_dir=None,
         train_opts=None, frontier_opts=None):
    """(steps, notes): every step of the study in order (per seed: train, then reduce and heal), and
    sentences for the report (rows that get no post-hoc twin, budgets a family cannot reach)."""
    if preset in FRONTIERS:
        return plan_frontier(preset, seeds, out, epochs=epochs, heal_epochs=heal_epochs, device=device,
                             data_dir=data_dir, train_opts=train_opts, **(frontier_opts or {}))
    if frontier_opts:
        raise UserError(f"--{next(iter(frontier_opts))} applies to the frontier presets "
                        f"({', '.join(FRONTIERS)}), not to {preset}")
    if preset not in GRIDS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join([*FRONTIERS, *GRIDS])}")
    return plan_grid(preset, seeds, out, epochs, heal_epochs, device, data_dir, train_opts)


def default_seeds(preset: str) -> int:
    return FRONTIERS[preset].seeds if preset in FRONTIERS else DEFAULT_SEEDS.get(preset, 1)
