"""`laser-tool info`: a model's Linear-like layers and its parameter count."""
import json

import click
import torch

from ..errors import UserError
from .options import model_options, spec_from_options


@click.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(as_json, **opts):
    """Print a model's Linear-like layers (name, shape, kind, params) and its parameter count."""
    from ..models import build_model, count_params
    from ..models.surgery import named_linears
    spec = spec_from_options(opts)
    try:
        with torch.device("meta"):  # shapes and counts only: no memory, no init or SVD, for any size
            model = build_model(spec)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - code that cannot run on the meta device (an external arch): build it
        model = build_model(spec)
    rows, total = named_linears(model), count_params(model)
    if as_json:
        click.echo(json.dumps({"arch": spec.arch, "spec": spec.resolved().to_dict(), "params": total,
                               "layers": rows}, indent=2))
        return
    click.echo(f"{'layer':<22} {'shape':>12} {'kind':>10} {'params':>10}")
    for r in rows:
        click.echo(f"{r['name']:<22} {str(r['in_features']) + '->' + str(r['out_features']):>12} "
                   f"{r['kind']:>10} {r['params']:>10,}")
    click.echo(f"total parameters: {total:,}")
