"""The learning rate of each row, chosen on validation (`study --lr-grid`).

A study with an lr grid trains every train-time row (and every heal) at several multiples of its
learning rate; each run is an ordinary run whose config labels it `lr_grid = {base_lr, mult}`, and the
points of one grid differ in nothing but the lr (describe.py's `grid_key`). Per grid, the point with the
best mean VALIDATION accuracy over its seeds stands for the row; the others leave the table, the answer
and the plot (their test accuracy is never shown), and one note per grid lists every point's validation
accuracy, so the choice can be checked.
"""
from statistics import mean


def _val(g) -> float:
    vals = [r.val_acc for r in g.runs if r.val_acc is not None]
    return mean(vals) if vals else float("-inf")


def choose_lr(groups: list, notes: list) -> list:
    """The groups with every lr grid reduced to its validation-best point; a note per grid."""
    grids = {}
    for g in groups:
        if g.desc.get("grid_key"):
            grids.setdefault(g.desc["grid_key"], []).append(g)
    dropped = set()
    for points in grids.values():
        points.sort(key=lambda g: g.desc["lr_grid"].get("mult", 0))
        best = max(points, key=_val)
        dropped |= {id(g) for g in points if g is not best}
        tried = ", ".join(f"×{g.desc['lr_grid'].get('mult'):g} {100 * _val(g):.2f}%" for g in points)
        notes.append(f"lr grid: {best.label} was chosen on validation accuracy among {tried}.")
    return [g for g in groups if id(g) not in dropped]
