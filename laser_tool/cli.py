"""The `laser-tool` command line: a thin Click group; each command's work lives in its own module."""
import json
import sys

import click

from .errors import UserError
from .options import model_options, spec_from_options


class Group(click.Group):
    """Turns a UserError (or a bad option value) anywhere below into one line on stderr and exit code 2,
    no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except click.UsageError as e:  # a bad option value: one line too, with where to look
            sub = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ""
            msg = " ".join(e.format_message().split())
            click.echo(f"error: {msg} (see `laser-tool{sub} --help`)", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="laser-tool")
def main():
    """Train small or cut after? Train ViTs with structured layers, reduce them post hoc, compare."""


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
