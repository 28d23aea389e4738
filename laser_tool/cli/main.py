"""The `laser-tool` command line: a thin Click group; each verb group lives in its own module, and
imports the work it calls only when run (start-up time)."""
import sys

import click

from ..errors import UserError
from ..signals import Interrupted, signal_name, sigterm_raises
from .compare import compare
from .export import export_cmd
from .importing import import_cmd
from .info import info
from .posthoc import reduce_cmd, search_cmd, spectrum_cmd
from .study import study
from .train import train


OWN_SIGNALS = ("train", "study")  # they stop at a step and save a resume point (signals.StopFlag)


class Group(click.Group):
    """Turns a UserError (or a bad option value) anywhere below into one line on stderr and exit code 2,
    no traceback."""

    def invoke(self, ctx):
        try:
            verb = next(iter(getattr(ctx, "_protected_args", None) or ctx.args), None)  # Click 9: ctx.args
            if verb in OWN_SIGNALS:
                return super().invoke(ctx)
            with sigterm_raises():
                return super().invoke(ctx)
        except Interrupted as e:  # nothing half-written: every output is written whole or not at all
            click.echo(f"error: interrupted by {signal_name(e.signum)}; nothing unfinished was written, run the "
                       f"same command again", err=True)
            sys.exit(e.exit_code)
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
@click.option("--trust-code", is_flag=True, help="Call the python:MODULE:FUNCTION factories the inputs name even "
              "if you never named them with --arch (docs/safety.md: only for runs from people you trust).")
def main(trust_code):
    """Train small or cut after? Train ViTs with structured layers, reduce them post hoc, compare."""
    from ..models.trust import begin_invocation
    begin_invocation(trust_code)


for _command in (info, train, import_cmd, compare, study, reduce_cmd, search_cmd, spectrum_cmd, export_cmd):
    main.add_command(_command)
