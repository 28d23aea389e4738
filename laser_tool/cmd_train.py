"""`laser-tool train`: presets supply defaults, explicit flags override them."""
from dataclasses import replace

import click

from .options import model_options, spec_from_options
from .errors import UserError

TRAIN_KEYS = ("dataset", "data_dir", "download", "augment", "val_size", "train_subset", "epochs", "batch_size", "grad_accum",
              "lr", "weight_decay", "warmup_epochs", "grad_clip", "label_smoothing", "seed", "device", "amp",
              "compile", "decay_all", "init_from", "eval_batch_size", "out", "name", "reduce_at", "reduce_to",
              "reduce_method", "reduce_tolerance", "reduce_window", "tensorboard")


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


def config_from_options(preset, opts):
    """TrainConfig = defaults <- preset <- flags the user gave."""
    from trainers.config import TrainConfig
    from trainers.presets import PRESETS
    from .models import ModelSpec
    cfg = TrainConfig()
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = dict(PRESETS[preset])
        cfg = replace(cfg, model=ModelSpec(**p.pop("model")), **p)
    cfg = replace(cfg, model=spec_from_options(opts, base=cfg.model))
    cfg = replace(cfg, **{k: opts[k] for k in TRAIN_KEYS if opts.get(k) is not None})
    cfg = replace(cfg, grad_clip=None) if cfg.grad_clip == "off" else cfg
    if opts.get("reduce_layers"):
        cfg = replace(cfg, reduce_layers=list(opts["reduce_layers"]))
    if cfg.init_from:
        cfg = from_source(cfg, opts)
    return cfg


def from_source(cfg, opts):
    """--init-from: the model is the source run's; split settings not given come from it too."""
    from trainers.init_from import source_config, split_of
    from .models import ModelSpec
    from .options import MODEL_KEYS
    given = [k for k in MODEL_KEYS if opts.get(k) not in (None, ())]
    if given:
        raise UserError(f"--init-from takes the model from {cfg.init_from}; drop "
                        f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    source = source_config(cfg.init_from)
    split = {k: v for k, v in split_of(source).items() if opts.get(k) is None}
    return replace(cfg, model=ModelSpec.from_dict(source["model"]), **split)


@click.command()
@click.option("--preset", help="Defaults: seed-vit-tiny, seed-xt (CIFAR-10, the seed's settings) or quick (CPU).")
@model_options
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "fashion-mnist", "mnist"]))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are.")
@click.option("--download/--no-download", default=None, help="Let torchvision download missing data.")
@click.option("--augment/--no-augment", default=None, help="The dataset's default augmentation (on).")
@click.option("--val-size", type=int, help="Images held out of the training set for model selection (5000).")
@click.option("--train-subset", type=int, help="Train on only this many images.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int, help="Images per optimizer step, over all GPUs and accumulation.")
@click.option("--grad-accum", type=int, help="Micro-batches accumulated per optimizer step.")
@click.option("--lr", type=float)
@click.option("--weight-decay", type=float)
@click.option("--warmup-epochs", type=float)
@click.option("--grad-clip", type=GradClip(), help="Max gradient norm (> 0), or off for no clipping.")
@click.option("--label-smoothing", type=float)
@click.option("--seed", type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--amp", type=click.Choice(["auto", "off"]), help="bf16 autocast on CUDA (fp16 where bf16 is missing).")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model (CUDA only).")
@click.option("--decay-all/--no-decay-all", default=None,
              help="Weight decay on every parameter, as the seed (seed presets), or on matrices only (default).")
@click.option("--init-from", type=click.Path(exists=True),
              help="Start from this run's weights and structure (factored layers kept): fresh optimizer, own "
                   "schedule, the source's data split. The starting model is the epoch-0 candidate.")
@click.option("--eval-batch-size", type=int)
@click.option("--out", type=click.Path(file_okay=False), help="Parent folder of run directories (runs).")
@click.option("--name", help="Run directory name, a plain name without '/' (default: from the settings).")
@click.option("--reduce-at", metavar="E|E1,E2,...|auto",
              help="Progressive: train dense, cut the --reduce-layer layers before optimizer step "
                   "round(E * steps per epoch) (integer E: after E epochs); several epochs cut in steps; "
                   "auto: Cuttlefish's rule, each layer once its stable rank stops moving.")
@click.option("--reduce-to", metavar="SPEC|S1,S2,...",
              help="Rank of each cut, as `reduce --rank` (int, rho:F, params:F, energy:F); one per "
                   "--reduce-at epoch. With auto: the budget params:F.")
@click.option("--reduce-layer", "reduce_layers", multiple=True, metavar="SELECTOR",
              help="Layers to cut, as `reduce --layer` (e.g. '*.ffn.*', 3:fc_in, NAME=SPEC); repeatable.")
@click.option("--reduce-method", type=click.Choice(["svd", "whiten"]),
              help="Truncation at a cut (svd); whiten calibrates on the training split at that moment.")
@click.option("--reduce-tolerance", type=float, help="auto: relative stable-rank change counted as stable (0.1).")
@click.option("--reduce-window", type=int, help="auto: epochs over which the stable rank must hold still (2).")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN/tb.")
@click.option("--resume", is_flag=True, help="Continue the run in --out/--name with its saved settings (differing "
              "settings given here are named and ignored); an error if there is no such run.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run of that name and start afresh (only a "
              "directory laser-tool wrote, never through a symlink).")
def train(preset, resume, overwrite, **opts):
    """Train a ViT (baseline or variant) and write runs/NAME/. Running it again resumes."""
    from trainers.train import train as run_training
    cfg = config_from_options(preset, opts)
    try:
        run_dir = run_training(cfg, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt as e:  # the resume point is saved: 130 for Ctrl-C, 143 for SIGTERM
        from trainers.signals import exit_code
        raise SystemExit(exit_code(e))
    click.echo(str(run_dir))
