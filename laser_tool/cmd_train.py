"""`laser-tool train`: presets supply defaults, explicit flags override them."""
from dataclasses import replace

import click

from .options import model_options, spec_from_options
from .errors import UserError

TRAIN_KEYS = ("dataset", "data_dir", "download", "augment", "val_size", "train_subset", "epochs", "batch_size", "grad_accum",
              "lr", "weight_decay", "warmup_epochs", "grad_clip", "label_smoothing", "seed", "device", "amp",
              "compile", "eval_batch_size", "out", "name", "tensorboard")


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
    return replace(cfg, **{k: opts[k] for k in TRAIN_KEYS if opts.get(k) is not None})


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
@click.option("--grad-clip", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--seed", type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--amp", type=click.Choice(["auto", "off"]), help="bf16 autocast on CUDA (fp16 where bf16 is missing).")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model (CUDA only).")
@click.option("--eval-batch-size", type=int)
@click.option("--out", type=click.Path(file_okay=False), help="Parent folder of run directories (runs).")
@click.option("--name", help="Run directory name (default: from the settings).")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN/tb (pip install tensorboard).")
@click.option("--resume", is_flag=True, help="Continue the run in --out/--name with its saved settings.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run of that name and start afresh.")
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
