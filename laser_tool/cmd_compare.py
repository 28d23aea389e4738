"""`laser-tool compare` and `laser-tool study`: thin Click wrappers over compare.py and study.py."""
import sys

import click


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write accuracy vs parameters as PNG.")
@click.option("--baseline", help="Run directory name whose group is the baseline "
                                "(default: the dense, unreduced group).")
@click.option("--device", default="cpu", show_default=True, help="Device the inference images/s are measured on: auto, cpu, cuda or cuda:N.")
@click.option("--no-speed", is_flag=True, help="Skip the inference timing (loads no models).")
@click.option("--metric", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="Accuracy the differences and p-values use (both are in the table and in json).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the table here instead of stdout.")
def compare(paths, fmt, plot_path, baseline, device, no_speed, metric, out_path):
    """Group runs by spec and recipe across seeds: test and validation accuracy, 95% CI, the difference
    to the same-recipe baseline with a paired test where runs are paired (McNemar on the test images for
    one seed, paired t over shared seeds, else Welch), Holm-adjusted p, speed.

    PATHS are run directories or folders holding them (searched two levels deep). Each train-time
    variant is followed by the baseline reduced post hoc to its parameter count on the same layers.
    """
    from . import report
    from .compare import compare_runs, find_run_dirs
    from .fileio import atomic_write_text, check_output_file
    device = _device(device)
    inputs = find_run_dirs(paths)
    for path, what in ((out_path, "--out"), (plot_path, "--plot")):  # before the work, never into a run
        if path is not None:
            check_output_file(path, inputs=inputs, what=what)
    result = compare_runs(paths, baseline=baseline, speed=not no_speed, device=device, metric=metric)
    text = report.render(result, fmt)
    if out_path:
        atomic_write_text(out_path, text)
    else:
        click.echo(text, nl=False)
    if plot_path:
        report.plot(result.rows, plot_path)
        click.echo(f"plot: {plot_path}", err=True)
    if result.problems:
        click.echo(f"{len(result.problems)} run(s) not compared (listed in the output)", err=True)


def _device(device: str) -> str:
    """auto | cpu | cuda | cuda:N, checked up front (a typo must not turn into an empty speed column)."""
    from .device import resolve_device
    return str(resolve_device(device))


@click.command()
@click.option("--preset", required=True, metavar="NAME", help="quick | seed-vit-tiny | seed-xt.")
@click.option("--seeds", type=int, help="Seeds per row (default: 1 for quick, 4 for the seed presets).")
@click.option("--out", type=click.Path(file_okay=False), help="Study directory (default studies/PRESET).")
@click.option("--heal-epochs", type=int,
              help="Also fine-tune each post-hoc reduced model this many epochs, as separate rows "
                   "(default: the preset's; 0 for the seed grids).")
@click.option("--budgets", metavar="F,F,...", help="Frontier presets: fractions of the targeted layers' "
              "parameters kept, each in (0, 1) (default: the preset's).")
@click.option("--targets", type=click.Choice(["ffn", "attn", "all"]), help="Frontier presets: which layers are slimmed.")
@click.option("--families", metavar="F,F,...", help="Frontier presets: which families (default: the preset's).")
@click.option("--epochs", type=int, help="Override the preset's training epochs (every row).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are.")
@click.option("--lr", type=float, help="Override the preset's learning rate (every row).")
@click.option("--batch-size", type=int, help="Override the preset's batch size (every row).")
@click.option("--weight-decay", type=float)
@click.option("--warmup-epochs", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--train-subset", type=int, help="Train every row on only this many images.")
@click.option("--val-size", type=int, help="Validation images held out of the training set.")
@click.option("--augment/--no-augment", default=None, help="The dataset's default augmentation.")
@click.option("--decay-all/--no-decay-all", default=None, help="Weight decay on every parameter.")
def study(preset, seeds, out, heal_epochs, budgets, targets, families, epochs, device, data_dir, **train_opts):
    """Train a preset's grid over seeds, reduce each baseline post hoc to every variant's parameter
    count (svd and whiten), optionally heal, then write STUDY/report.md with table, plot, commands.

    Running the same command again skips finished runs and continues unfinished ones.
    """
    from .errors import UserError
    from .study import run_study
    if (heal_epochs is not None and heal_epochs < 0) or (epochs is not None and epochs < 1):
        raise UserError("--epochs must be at least 1 and --heal-epochs at least 0")
    try:
        report = run_study(preset, seeds=seeds, out=out, epochs=epochs, heal_epochs=heal_epochs, device=device,
                           data_dir=data_dir, log=lambda s: click.echo(s, err=True),
                           train_opts={k: v for k, v in train_opts.items() if v is not None},
                           frontier_opts={k: v for k, v in dict(budgets=budgets, targets=targets,
                                                                families=families).items() if v is not None})
    except KeyboardInterrupt:
        click.echo("interrupted: finished runs are kept; run the same command again to continue", err=True)
        sys.exit(130)
    click.echo(str(report))
