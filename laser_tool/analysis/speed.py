"""Inference latency of the rows being compared: each group's model timed as deployed, all of a section's
groups in shared rounds (export/latency.py), so machine noise hits every row alike."""
from ..errors import UserError
from ..export.latency import measure_models
from ..models import ModelSpec
from ..runs.checkpoint import load_run


def measure_latencies(groups: list, device="cpu", threads: int = 2) -> dict:
    """{id(group): latency record} of the first loadable run of each group (its seeds share an
    architecture); a group none of whose runs loads gets a warning on its runs and no record."""
    models, first = {}, {}
    for g in groups:
        for r in g.runs:
            try:
                model, config = load_run(r.path, "cpu")
                models[id(g)], first[id(g)] = (model, ModelSpec.from_dict(config["model"])), r
                break
            except (UserError, RuntimeError, KeyError, ValueError) as e:
                r.warnings.append(f"could not time inference: {str(e)[:120]}")
    records, errors = measure_models(models, threads=threads, device=device)
    for key, why in errors.items():
        first[key].warnings.append(f"could not time inference: {why[:160]}")
    return records


def latency_ms(row: dict, batch: str = "64"):
    """A row's measured median milliseconds per batch of `batch` images, or None where it was not timed."""
    entry = ((row.get("latency") or {}).get("batch") or {}).get(batch)
    return entry["median_ms"] if entry else None
