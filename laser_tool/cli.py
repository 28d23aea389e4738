"""The `laser-tool` command line: a thin Click group; each command's work lives in its own module."""
import json
import sys

import click

from .errors import UserError


class Group(click.Group):
    """Turns a UserError anywhere below into one line on stderr and exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="laser-tool")
def main():
    """Train small or cut after? Train ViTs with structured layers, reduce them post hoc, compare."""


def model_options(f):
    """Options that describe a model: shared by `info` and `train`."""
    from .models import ARCHS, VARIANTS
    from .surgery import TARGETS
    opts = [
        click.option("--arch", type=click.Choice(ARCHS), help="Architecture."),
        click.option("--variant", type=click.Choice(VARIANTS), help="Train-time variant (default: baseline)."),
        click.option("--target", "targets", multiple=True, type=click.Choice(list(TARGETS)),
                     help="Layers the variant replaces (repeatable)."),
        click.option("--scale", type=float, help="Low-rank r / SKL scale (default 0.5)."),
        click.option("--blocks", help="Comma-separated block indices the variant applies to (default all)."),
        click.option("--n-dyad", type=int, help="DYAD blocks (default 8)."),
        click.option("--dyad-variant", type=click.Choice(["it", "ot", "dt"]), help="DYAD permutation side."),
        click.option("--dim", type=int), click.option("--depth", type=int), click.option("--heads", type=int),
        click.option("--dim-head", type=int), click.option("--mlp-dim", type=int, help="FFN hidden width."),
        click.option("--patch-size", type=int), click.option("--image-size", type=int),
        click.option("--channels", type=int), click.option("--num-classes", type=int),
        click.option("--dropout", type=float), click.option("--emb-dropout", type=float),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


MODEL_KEYS = ("arch", "variant", "targets", "scale", "blocks", "n_dyad", "dyad_variant", "dim", "depth", "heads",
              "dim_head", "mlp_dim", "patch_size", "image_size", "channels", "num_classes", "dropout",
              "emb_dropout")


def spec_from_options(opts: dict, base=None):
    """A ModelSpec from CLI options; options left unset keep `base`'s values."""
    from dataclasses import replace
    from .models import ModelSpec
    given = {k: opts[k] for k in MODEL_KEYS if opts.get(k) not in (None, ())}
    if "targets" in given:
        given["targets"] = list(given["targets"])
    if "blocks" in given:
        try:
            given["blocks"] = [int(b) for b in given["blocks"].split(",")]
        except ValueError:
            raise UserError(f"--blocks {given['blocks']!r} is not a comma-separated list of integers") from None
    return replace(base or ModelSpec(), **given)


@main.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(as_json, **opts):
    """Print a model's Linear-like layers (name, shape, kind, params) and its parameter count."""
    from .models import build_model, count_params
    from .surgery import named_linears
    spec = spec_from_options(opts)
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


def _register():
    """Commands living in their own modules (imported lazily by Click only when run)."""
    from . import commands
    for cmd in commands.ALL:
        main.add_command(cmd)


_register()
