"""`laser-tool study`: a thin Click wrapper over study/run.py."""
import sys

import click

from ..errors import UserError
from ..signals import exit_code
from ..vocab import FRONTIER_TARGETS
from .options import Arch, arch_args, dataset_options, minutes


@click.command()
@click.option("--preset", required=True, metavar="NAME", help="Frontiers: quick (CPU, minutes), frontier, frontier-seed-vit-tiny; the seed's grids: seed-xt, "
                   "seed-vit-tiny.")
@click.option("--seeds", type=int, help="Seeds per row (default: 1 for quick and frontier, 3 for frontier-seed-vit-tiny, 4 for the "
                   "seed grids).")
@click.option("--out", type=click.Path(file_okay=False), help="Study directory (default studies/PRESET).")
@click.option("--heal-epochs", type=int,
              help="Also fine-tune each post-hoc reduced model this many epochs, as separate rows "
                   "(default: the preset's; 0 for the seed grids).")
@click.option("--budgets", metavar="F,F,...", help="Frontier presets: fractions of the targeted layers' "
              "parameters kept, each in (0, 1) (default: the preset's).")
@click.option("--targets", type=click.Choice(FRONTIER_TARGETS), help="Frontier presets: which layers are slimmed.")
@click.option("--families", metavar="F,F,...", help="Frontier presets: which families (default: the preset's).")
@click.option("--lr-grid", metavar="M,M,...", help="Frontier presets: train every train-time, narrower and progressive "
              "row and every heal at these multiples of its learning rate and keep, per row, the best on validation "
              "(the frontier preset: 0.5,1,2).")
@click.option("--match-compute", is_flag=True, default=None,
              help="Frontier presets: also train every train-time and narrower row for the epochs that make its "
                   "training FLOPs equal the healed rows', and answer at equal compute too.")
@click.option("--epochs", type=int, help="Override the preset's training epochs (every row).")
@click.option("--epochs-grid", metavar="E,E,...", help="Frontier presets: the whole frontier at each of these training "
              "lengths (whole epochs), each length with its own baseline; the answer and the plot per length.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are.")
@dataset_options
@click.option("--image-size", type=int, help="folder:PATH: the size images are resized to (default: their own).")
@click.option("--channels", type=int, help="folder:PATH: 1 (greyscale) or 3 (RGB) (default: most images' own).")
@click.option("--lr", type=float, help="Override the preset's learning rate (every row).")
@click.option("--batch-size", type=int, help="Override the preset's batch size (every row).")
@click.option("--weight-decay", type=float)
@click.option("--warmup-epochs", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--train-subset", type=int, help="Train every row on only this many images.")
@click.option("--val-size", type=int, help="Validation images held out of the training set.")
@click.option("--augment/--no-augment", default=None, help="The dataset's default augmentation.")
@click.option("--decay-all/--no-decay-all", default=None, help="Weight decay on every parameter.")
@click.option("--arch", type=Arch(), metavar="ARCH", help="Study another architecture than the preset's: timm:NAME "
              "or python:MODULE:FUNCTION (the preset's recipe stays; its sizes are the arch's own).")
@click.option("--arch-arg", "arch_args", multiple=True, metavar="KEY=VALUE",
              help="Constructor argument of a timm:/python: arch (repeatable), e.g. embed_dim=64.")
@click.option("--sigma-reparam/--no-sigma-reparam", default=None,
              help="Structured layers replacing vit-tiny's sigmaReparam projections keep it (default) or drop it.")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="Steps at once (a reduction still waits for its baseline). Slurm: the array's parallelism.")
@click.option("--threads", type=int, help="torch threads per run (default: CPUs / --jobs; recorded per run).")
@click.option("--launcher", default="process", show_default=True,
              help="process (this machine), local (submitit's local executor) or slurm (submitit).")
@click.option("--gpus-per-job", type=int, default=1, show_default=True, help="GPUs each local worker sees.")
@click.option("--jobs-per-gpu", type=int, help="Let K small runs share one GPU.")
@click.option("--partition", help="Slurm partition.")
@click.option("--account", help="Slurm account.")
@click.option("--qos", help="Slurm quality of service.")
@click.option("--gpus-per-node", type=int, help="Slurm: GPUs per job.")
@click.option("--time", "time_limit", help="Slurm time limit per job: minutes or H:MM:SS (default 24 h).")
@click.option("--no-wait", is_flag=True, help="Slurm: submit and return; `--status` watches, a rerun reports.")
@click.option("--status", "show_status", is_flag=True, help="Print the state of every step and exit.")
@click.option("--tensorboard", is_flag=True, help="Write TensorBoard event files in every train run (RUN/tb).")
@click.option("--margin", type=float, default=0.5, show_default=True,
              help="Equivalence margin of the answer's tests, in percentage points of accuracy.")
@click.option("--extend", is_flag=True, help="Add this invocation's rows to a study planned with other settings "
              "(e.g. more --seeds); without it such an invocation is refused.")
def study(preset, seeds, out, heal_epochs, budgets, targets, families, lr_grid, match_compute, epochs, epochs_grid, device, data_dir, jobs, threads,
          launcher, gpus_per_job, jobs_per_gpu, partition, account, qos, gpus_per_node, time_limit, no_wait, show_status,
          tensorboard, margin, extend, **train_opts):
    """Train a preset's runs over seeds and write STUDY/report.md (the answer, table, plot, commands).

    \b
    Frontier presets (quick, frontier, frontier-seed-vit-tiny): per budget (--budgets, fractions of the
    targeted layers' parameters kept), every family: narrower, train-time structured (standard and
    structured parameterisation), progressive, post-hoc svd and whiten from the baseline, healed,
    and svd-alloc/whiten-alloc (per-layer ranks chosen by `search` on validation, at most the uniform cut's
    parameters).
    Seed grids (seed-xt, seed-vit-tiny): the blog's rows, each train-time row with the baseline cut
    post hoc to its parameter count.
    Running the same command again skips finished runs and continues unfinished ones.
    """
    from ..launch.base import Launch
    from ..study import run_study, study_status
    if (heal_epochs is not None and heal_epochs < 0) or (epochs is not None and epochs < 1):
        raise UserError("--epochs must be at least 1 and --heal-epochs at least 0")
    train_opts = {k: v for k, v in train_opts.items() if v is not None and v != ()}
    if "arch_args" in train_opts:
        train_opts["arch_args"] = arch_args(train_opts["arch_args"])
    frontier_opts = {k: v for k, v in dict(budgets=budgets, targets=targets, families=families, lr_grid=lr_grid,
                                           match_compute=match_compute or None, epochs_grid=epochs_grid).items()
                     if v is not None}
    if show_status:
        for line in study_status(preset, seeds=seeds, out=out, epochs=epochs, heal_epochs=heal_epochs,
                                 device=device, data_dir=data_dir, train_opts=train_opts,
                                 frontier_opts=frontier_opts):
            click.echo(line)
        return
    slurm = dict(partition=partition, account=account, qos=qos, gpus_per_node=gpus_per_node,
                 time=minutes(time_limit))
    launch = Launch(jobs=jobs, launcher=launcher, threads=threads, gpus_per_job=gpus_per_job,
                    jobs_per_gpu=jobs_per_gpu, slurm=slurm, wait=not no_wait)
    try:
        report = run_study(preset, seeds=seeds, out=out, epochs=epochs, heal_epochs=heal_epochs, device=device,
                           data_dir=data_dir, log=lambda s: click.echo(s, err=True), launch=launch,
                           tensorboard=tensorboard, train_opts=train_opts, frontier_opts=frontier_opts,
                           extend=extend, margin=margin / 100)
    except KeyboardInterrupt as e:
        click.echo("interrupted: finished runs are kept and started ones saved their resume point; "
                   "run the same command again to continue", err=True)
        sys.exit(exit_code(e))
    if report is not None:
        click.echo(str(report))
