"""Which steps a study preset makes: a frontier (frontier.py) or one of the seed's grids (grids.py)."""
import json
from pathlib import Path

from ..errors import UserError, flag_name
from .frontier import FRONTIERS, parse_budgets, parse_epochs_grid, parse_families, parse_lr_grid, plan_frontier
from .grids import DEFAULT_SEEDS, GRIDS, plan_grid


def plan(preset: str, seeds: int, out: Path, epochs=None, heal_epochs=None, device="auto", data_dir=None,
         train_opts=None, frontier_opts=None):
    """(steps, notes): every step of the study in order (per seed: train, then reduce and heal), and
    sentences for the report (rows that get no post-hoc twin, budgets a family cannot reach)."""
    if preset in FRONTIERS:
        return plan_frontier(preset, seeds, out, epochs, heal_epochs, device, data_dir, train_opts, frontier_opts)
    if frontier_opts:
        raise UserError(f"{flag_name(next(iter(frontier_opts)))} applies to the frontier presets "
                        f"({', '.join(FRONTIERS)}), not to {preset}")
    if preset not in GRIDS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join([*FRONTIERS, *GRIDS])}")
    return plan_grid(preset, seeds, out, epochs, heal_epochs, device, data_dir, train_opts)


def default_seeds(preset: str) -> int:
    return FRONTIERS[preset].seeds if preset in FRONTIERS else DEFAULT_SEEDS.get(preset, 1)


def request_of(preset: str, seeds=None, epochs=None, heal_epochs=None, train_opts=None, frontier_opts=None) -> dict:
    """What an invocation asks for, the study's defaults resolved (so `--seeds 1` and no --seeds on a
    one-seed preset are the same request), as JSON values: what the study's record keeps and replans."""
    if preset not in FRONTIERS and preset not in GRIDS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join([*FRONTIERS, *GRIDS])}")
    if frontier_opts and preset not in FRONTIERS:
        raise UserError(f"{flag_name(next(iter(frontier_opts)))} applies to the frontier presets "
                        f"({', '.join(FRONTIERS)}), not to {preset}")
    r = dict(preset=preset, seeds=default_seeds(preset) if seeds is None else seeds, epochs=epochs,
             train=dict(sorted((train_opts or {}).items())))
    if preset in FRONTIERS:
        fr, fo = FRONTIERS[preset], frontier_opts or {}
        r.update(heal_epochs=fr.heal_epochs if heal_epochs is None else heal_epochs,
                 budgets=list(parse_budgets(fo["budgets"]) if "budgets" in fo else fr.budgets),
                 targets=fo.get("targets") or fr.targets,
                 families=list(parse_families(fo["families"]) if "families" in fo else fr.families))
        if fo.get("match_compute"):  # absent when off, so studies recorded before the flag replan alike
            r["match_compute"] = True
        grid = parse_lr_grid(fo["lr_grid"]) if "lr_grid" in fo else fr.lr_grid
        if grid:
            r["lr_grid"] = list(grid)
        if "epochs_grid" in fo:  # absent without a grid, so studies recorded before the flag replan alike
            r["epochs_grid"] = list(parse_epochs_grid(fo["epochs_grid"]))
    else:
        r["heal_epochs"] = heal_epochs or 0
    return json.loads(json.dumps(r))


def plan_request(r: dict, out: Path, device="auto", data_dir=None):
    """(steps, notes) of a request (request_of's dict), on this machine's device and data."""
    frontier_opts = ({k: ",".join(map(str, r[k])) if isinstance(r[k], list) else r[k]
                      for k in ("budgets", "targets", "families", "match_compute", "lr_grid", "epochs_grid") if k in r}
                     if r["preset"] in FRONTIERS else None)
    return plan(r["preset"], r["seeds"], out, r["epochs"], r["heal_epochs"], device, data_dir, r["train"] or None,
                frontier_opts)
