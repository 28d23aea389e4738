"""`laser-tool train`: presets supply defaults, explicit flags override them."""
from dataclasses import replace

import click

from ..errors import UserError, flag_name
from ..signals import exit_code
from .options import (GradClip, RegistryChoice, cut_methods, dataset_options, device_option, model_keys, model_options,
                      model_settings, training_options)


def config_from_options(preset, opts):
    """TrainConfig = defaults <- preset <- flags the user gave (trainers/config.build_config)."""
    from trainers.config import build_config
    model = model_settings(opts)
    cfg = build_config(preset, {**{k: v for k, v in opts.items() if k not in model_keys()}, **model})
    if cfg.init_from:
        cfg = from_source(cfg, opts)
    return cfg


def from_source(cfg, opts):
    """--init-from: the model is the source run's; split settings not given come from it too."""
    from trainers.init_from import source_config, split_of
    from ..models import ModelSpec
    given = [k for k in model_keys() if opts.get(k) not in (None, ())]
    if given:
        raise UserError(f"--init-from takes the model from {cfg.init_from}; drop "
                        f"{', '.join(map(flag_name, given))}")
    source = source_config(cfg.init_from)
    split = {k: v for k, v in split_of(source).items() if opts.get(k) is None}
    return replace(cfg, model=ModelSpec.from_dict(source["model"]), **split)


@click.command()
@click.option("--preset", help="Defaults: seed-vit-tiny, seed-xt (CIFAR-10, the seed's settings) or quick (CPU).")
@model_options
@dataset_options()
@training_options
@click.option("--download/--no-download", default=None, help="Let torchvision download missing data.")
@click.option("--grad-accum", type=int, help="Micro-batches accumulated per optimizer step.")
@click.option("--grad-clip", type=GradClip(), help="Max gradient norm (> 0), or off for no clipping.")
@click.option("--seed", type=int)
@device_option(None, indexed=False, help="Where it trains (default: auto).")
@click.option("--amp", type=click.Choice(["auto", "off"]), help="bf16 autocast on CUDA (fp16 where bf16 is missing).")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model (CUDA, or the CPU: ~35 s to compile, a few %% faster there; see bench/train.py).")
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
@click.option("--reduce-method", type=RegistryChoice(cut_methods),
              help="Truncation at a cut (svd); whiten calibrates on the training split at that moment.")
@click.option("--reduce-tolerance", type=float, help="auto: relative stable-rank change counted as stable (0.1).")
@click.option("--reduce-window", type=int, help="auto: epochs over which the stable rank must hold still (2).")
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
        raise SystemExit(exit_code(e))
    click.echo(str(run_dir))
