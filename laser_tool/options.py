"""Click options shared by several commands (model description, ...) and their conversion to specs.

Commands import these; cli.py only assembles the group, so no command module imports cli.py.
"""
import click

from .errors import UserError


def model_options(f):
    """Options that describe a model: shared by `info` and `train`."""
    from .models import ARCHS, INITS, PARAMS, VARIANTS
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
        click.option("--monarch-blocks", type=int, help="Monarch blocks (default 4)."),
        click.option("--btt-rank", type=int, help="BTT rank (default 1)."),
        click.option("--keep", type=float, help="Fraction of each targeted layer's parameters to keep, in (0, 1]; "
                                                "sets the variant's rank / blocks (replaces --scale etc.)."),
        click.option("--param", type=click.Choice(PARAMS),
                     help="standard (the seed's) or structured: per-factor init and lr multipliers (Qiu et al.)."),
        click.option("--init", type=click.Choice(INITS), help="spectral: low-rank factors from a dense init's SVD."),
        click.option("--dim", type=int), click.option("--depth", type=int), click.option("--heads", type=int),
        click.option("--dim-head", type=int), click.option("--mlp-dim", type=int, help="FFN hidden width."),
        click.option("--patch-size", type=int), click.option("--image-size", type=int),
        click.option("--channels", type=int), click.option("--num-classes", type=int),
        click.option("--dropout", type=float), click.option("--emb-dropout", type=float),
        click.option("--attn-dropout", type=float, help="Dropout on attention probabilities (0; the seed has none)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


MODEL_KEYS = ("arch", "variant", "targets", "scale", "blocks", "n_dyad", "dyad_variant", "monarch_blocks", "btt_rank",
              "keep", "param", "init", "dim", "depth", "heads",
              "dim_head", "mlp_dim", "patch_size", "image_size", "channels", "num_classes", "dropout",
              "emb_dropout", "attn_dropout")


def spec_from_options(opts: dict, base=None):
    """A ModelSpec from CLI options; options left unset keep `base`'s values."""
    from dataclasses import replace
    from .models import ModelSpec
    given = {k: opts[k] for k in MODEL_KEYS if opts.get(k) not in (None, ())}
    setting = [f"--{k.replace('_', '-')}" for k in ("scale", "n_dyad", "monarch_blocks", "btt_rank") if k in given]
    if "keep" in given and setting:
        raise UserError(f"give --keep or {setting[0]}, not both: --keep sets the structure from the budget")
    if "targets" in given:
        given["targets"] = list(given["targets"])
    if "blocks" in given:
        try:
            given["blocks"] = [int(b) for b in given["blocks"].split(",")]
        except ValueError:
            raise UserError(f"--blocks {given['blocks']!r} is not a comma-separated list of integers") from None
    return replace(base or ModelSpec(), **given)
