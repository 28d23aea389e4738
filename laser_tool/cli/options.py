"""Click options shared by several commands (the model description, the data, the training recipe that
`train` and `study` both take, the device, a gradient-clip value, a time limit) and their conversion to
specs: each option is declared here once. Commands import these; main.py only assembles the group.
"""
import json
import re
from dataclasses import fields, replace

import click

from ..errors import UserError, flag_name
from ..lists import comma_list
from ..vocab import ARCHS, DATASETS, DYAD_VARIANTS, EXTERNAL_ARCHS, INITS, PARAMS, SCHEDULES, TARGETS


class Arch(click.ParamType):
    """vit-tiny, xt-vit, timm:NAME or python:MODULE:FUNCTION (checked when the model is built)."""
    name = "|".join(ARCHS) + "|timm:NAME|python:MODULE:FUNCTION"

    def convert(self, value, param, ctx):
        if str(value).startswith("python:"):  # named by you on this command line: it may be called (trust.py)
            from ..models.trust import settings_file, trust_factory
            if not trust_factory(value):
                click.echo(f"note: could not remember {value} in {settings_file()}; name it again with --arch "
                           f"next time", err=True)
        if value in ARCHS or str(value).startswith(EXTERNAL_ARCHS):
            return value
        self.fail(f"{value!r}: choose {', '.join(ARCHS)}, timm:NAME (e.g. timm:vit_tiny_patch16_224) or "
                  f"python:MODULE:FUNCTION (your factory)", param, ctx)


class RegistryChoice(click.Choice):
    """A choice among a registry's names (the layer families, the post-hoc methods), read from it each
    time the option is used or shown: a registry imports torch, which a bare `laser-tool` goes without,
    and a family or method registered later is a choice too."""

    def __init__(self, names):
        self.names = names      # () -> the names, importing the registry only when called
        super().__init__(())

    @property
    def choices(self):
        return tuple(self.names())

    @choices.setter
    def choices(self, _):  # click.Choice sets its list once at construction; this one is read each time
        pass


def variants() -> tuple:
    """--variant's choices: the structured layer families (models/families/) and half-ffn."""
    from ..models.spec import variants
    return variants()


def reduce_methods() -> tuple:
    """`reduce --method`'s choices: every post-hoc method (posthoc/methods.py)."""
    from ..posthoc.methods import METHODS
    return tuple(METHODS)


def cut_methods() -> tuple:
    """`train --reduce-method`'s choices: the methods a progressive cut uses (posthoc/methods.py)."""
    from ..posthoc.methods import cut_methods
    return cut_methods()


def arch_args(pairs) -> dict:
    """--arch-arg KEY=VALUE pairs -> {KEY: VALUE}, each VALUE read as JSON (7, 0.5, true, null, [1, 2]),
    else kept as text."""
    out = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserError(f"--arch-arg {pair!r}: write KEY=VALUE with a Python argument name, e.g. embed_dim=32")
        try:
            value = json.loads(text)
        except ValueError:
            value = {"True": True, "False": False, "None": None}.get(text, text)
        out[key.strip()] = value
    return out


def apply(options, f):
    """Decorate `f` with `options` in the order listed (the order `--help` shows them)."""
    for opt in reversed(options):
        f = opt(f)
    return f


# Model options `study` takes too (its other model settings are the preset's).
ARCH = click.option("--arch", type=Arch(), metavar="ARCH",
                    help="Architecture: vit-tiny, xt-vit, timm:NAME (built offline) or python:MODULE:FUNCTION (your "
                         "factory). In a study: another architecture than the preset's (its recipe stays; the sizes "
                         "are the arch's own).")
ARCH_ARG = click.option("--arch-arg", "arch_args", multiple=True, metavar="KEY=VALUE",
                        help="Constructor argument of a timm:/python: arch (repeatable), e.g. embed_dim=32.")
SIGMA_REPARAM = click.option("--sigma-reparam/--no-sigma-reparam", default=None,
                             help="A structured layer replacing a sigmaReparam projection (vit-tiny's attention) keeps "
                                  "sigmaReparam on its own matrix (default), or drops it (the behaviour before "
                                  "2026-12).")
IMAGE_SIZE = click.option("--image-size", type=int,
                          help="Input size; folder:PATH: the size images are resized to (default: their own).")
CHANNELS = click.option("--channels", type=int,
                        help="Input channels; folder:PATH: 1 (greyscale) or 3 (RGB) (default: most images' own).")


def model_options(f):
    """Options that describe a model: shared by `info`, `train` and `import`."""
    opts = [
        ARCH,
        ARCH_ARG,
        click.option("--variant", type=RegistryChoice(variants), help="Train-time variant (default: baseline)."),
        click.option("--target", "targets", multiple=True, type=click.Choice(list(TARGETS)),
                     help="Layers the variant replaces (repeatable)."),
        click.option("--scale", type=float, help="Low-rank r / SKL scale (default 0.5)."),
        click.option("--blocks", help="Comma-separated block indices the variant applies to (default all)."),
        click.option("--n-dyad", type=int, help="DYAD blocks (default 8)."),
        click.option("--dyad-variant", type=click.Choice(DYAD_VARIANTS), help="DYAD permutation side."),
        click.option("--monarch-blocks", type=int, help="Monarch blocks (default 4)."),
        click.option("--btt-rank", type=int, help="BTT rank (default 1)."),
        click.option("--keep", type=float, help="Fraction of each targeted layer's parameters to keep, in (0, 1]; "
                                                "sets the variant's rank / blocks (replaces --scale etc.)."),
        click.option("--param", type=click.Choice(PARAMS),
                     help="standard (the seed's) or structured: per-factor init and lr multipliers (Qiu et al.)."),
        click.option("--init", type=click.Choice(INITS), help="spectral: low-rank factors from a dense init's SVD."),
        SIGMA_REPARAM,
        click.option("--dim", type=int), click.option("--depth", type=int), click.option("--heads", type=int),
        click.option("--dim-head", type=int), click.option("--mlp-dim", type=int, help="FFN hidden width."),
        click.option("--patch-size", type=int), IMAGE_SIZE, CHANNELS, click.option("--num-classes", type=int),
        click.option("--dropout", type=float), click.option("--emb-dropout", type=float),
        click.option("--attn-dropout", type=float, help="Dropout on attention probabilities (0; the seed has none)."),
    ]
    return apply(opts, f)


def model_keys() -> tuple:
    """The ModelSpec fields a command's options may set (all but the post-hoc `layers`)."""
    from ..models import ModelSpec
    return tuple(f.name for f in fields(ModelSpec) if f.name != "layers")


def spec_from_options(opts: dict, base=None):
    """A ModelSpec from CLI options; options left unset keep `base`'s values."""
    from ..models import ModelSpec
    return replace(base or ModelSpec(), **model_settings(opts))


def model_settings(opts: dict) -> dict:
    """The model options given, checked and converted to ModelSpec values (--blocks 0,1 -> [0, 1])."""
    given = {k: opts[k] for k in model_keys() if opts.get(k) not in (None, ())}
    setting = [flag_name(k) for k in ("scale", "n_dyad", "monarch_blocks", "btt_rank") if k in given]
    if "keep" in given and setting:
        raise UserError(f"give --keep or {setting[0]}, not both: --keep sets the structure from the budget")
    if "targets" in given:
        given["targets"] = list(given["targets"])
    if "arch_args" in given:
        given["arch_args"] = arch_args(given["arch_args"])
    external = str(given.get("arch", "")).startswith(EXTERNAL_ARCHS)
    seed_only = [k for k in ("dim", "depth", "heads", "patch_size", "dropout", "emb_dropout", "attn_dropout")
                 if k in given]
    if external and seed_only:
        flag = flag_name(seed_only[0])
        raise UserError(f"{flag} sets the seed's models; for {given['arch']} give the constructor's own "
                        f"argument with --arch-arg (e.g. --arch-arg embed_dim=32)")
    if "blocks" in given:
        given["blocks"] = comma_list(given["blocks"], "--blocks", int, example="0,1")
    return given


class DatasetName(click.ParamType):
    """A built-in dataset (vocab.DATASETS) or folder:PATH, an image folder (data/folder.py)."""
    name = "|".join(DATASETS) + "|folder:PATH"

    def convert(self, value, param, ctx):
        if str(value).strip().lower().startswith("folder:") or value in DATASETS:
            return value
        raise UserError(f"--dataset {value!r}: choose one of {', '.join(DATASETS)}, or folder:PATH for an image "
                        f"folder (PATH/train/CLASS/*.png, PATH/test/CLASS/*.png)")


def dataset_options(required: bool = False, purpose: str = ""):
    """Which data a run trains on (or, for `import`, is scored on): shared by `train`, `study` and `import`."""
    return lambda f: apply([
        click.option("--dataset", type=DatasetName(), required=required,
                     help=(purpose + " " if purpose else "") +
                     "A built-in dataset, or folder:PATH: an image folder (PATH/train/CLASS/*.png, PATH/test/"
                     "CLASS/..., optional PATH/val/), decoded to --image-size and --channels (default: the "
                     "images' own) and cached under ~/.cache/laser-tool."),
        click.option("--skip-bad-images/--no-skip-bad-images", default=None,
                     help="folder:PATH: leave unreadable files out (counted) instead of stopping."),
    ], f)


class DeviceName(click.ParamType):
    """auto, cpu, cuda, or (where `indexed`) cuda:N; checked again, with CUDA's presence, when resolved
    (device.py)."""
    def __init__(self, indexed: bool = True):
        self.indexed = indexed
        self.name = "auto|cpu|cuda" + ("[:N]" if indexed else "")

    def convert(self, value, param, ctx):
        pattern = r"auto|cpu|cuda(:\d+)?" if self.indexed else r"auto|cpu|cuda"
        if re.fullmatch(pattern, str(value)):
            return value
        choices = "auto, cpu, cuda or cuda:N" if self.indexed else \
            "auto, cpu or cuda (a study or a training run picks its GPUs itself)"
        raise UserError(f"unknown device {value!r}; use {choices}")


def device_option(default="auto", indexed: bool = True, help: str = "Where it runs."):
    """--device, the one definition every command uses (defaults differ: `import` scores on the CPU unless
    told, `train` leaves it to the preset, `compare` measures speed on the CPU)."""
    return click.option("--device", type=DeviceName(indexed), default=default, show_default=default is not None,
                        help=help)


def training_options(f):
    """The training recipe: shared by `train` (one run) and `study` (every row of the study); a value given
    overrides the preset's."""
    return apply([
        click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are."),
        click.option("--augment/--no-augment", default=None, help="The dataset's default augmentation (on)."),
        click.option("--val-size", type=int, help="Images held out of the training set for model selection (5000)."),
        click.option("--train-subset", type=int, help="Train on only this many images."),
        click.option("--epochs", type=float, help="Epochs to train; fractional E trains round(E x steps per epoch) "
                                                  "optimizer steps, the last pass cut short (e.g. to match compute)."),
        click.option("--batch-size", type=int, help="Images per optimizer step, over all GPUs and accumulation."),
        click.option("--lr", type=float, help="Peak learning rate."),
        click.option("--weight-decay", type=float),
        click.option("--warmup-epochs", type=float),
        click.option("--schedule", type=click.Choice(SCHEDULES),
                     help="The lr after the linear warmup: cosine to 0 (default), linear to 0, or wsd (held at the "
                          "peak, then linear to 0 over the last 20% of steps)."),
        click.option("--label-smoothing", type=float),
        click.option("--ema", type=float, metavar="DECAY",
                     help="Evaluate and save an exponential moving average of the weights, DECAY per optimizer step "
                          "in [0, 1) (e.g. 0.999; warmed up as min(DECAY, (1+n)/(10+n))); 0: off (default)."),
        click.option("--decay-all/--no-decay-all", default=None,
                     help="Weight decay on every parameter, as the seed (seed presets), or on matrices only "
                          "(default)."),
        click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN/tb."),
    ], f)


class GradClip(click.ParamType):
    """A positive max gradient norm, or `off` for no clipping (0 is refused, not read as off)."""
    name = "FLOAT|off"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "off":
            return value
        if str(value).strip().lower() in ("off", "none"):
            return "off"
        try:
            return float(value)
        except ValueError:
            raise UserError(f"--grad-clip {value!r}: give a positive max norm such as 1.0, or off") from None


def minutes(text):
    """--time as minutes (90) or H:MM[:SS] (1:30:00)."""
    if text is None:
        return None
    try:
        parts = [int(x) for x in str(text).split(":")]
    except ValueError:
        parts = []
    if not parts or len(parts) > 3 or min(parts) < 0:
        raise UserError(f"--time {text}: give minutes (90) or H:MM:SS (1:30:00)")
    if len(parts) == 1:
        return parts[0]
    h, m, sec = (parts + [0])[:3]
    return h * 60 + m + (1 if sec else 0)
