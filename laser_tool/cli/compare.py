"""`laser-tool compare`: a thin Click wrapper over analysis/compare.py."""
import click

from ..vocab import METRICS
from .options import device_option


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also write accuracy vs parameters as PNG.")
@click.option("--baseline", help="Run directory name whose group is the baseline "
                                "(default: the dense, unreduced group).")
@device_option("cpu", help="A GPU here adds GPU latency (batch 1 and 1024) to the CPU's (batch 1 and 64).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="CPU threads every model's latency is measured with.")
@click.option("--no-speed", is_flag=True, help="Skip the latency timing (loads no models).")
@click.option("--metric", type=click.Choice(METRICS), default="test", show_default=True,
              help="Accuracy the differences and p-values use (both are in the table and in json).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the table here instead of stdout.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out or --plot file.")
def compare(paths, fmt, plot_path, baseline, device, threads, no_speed, metric, out_path, overwrite):
    """Group runs by spec and recipe across seeds: test and validation accuracy, 95% CI, the difference
    to the same-recipe baseline with a paired test where runs are paired (McNemar on the test images for
    one seed, paired t over shared seeds, else Welch), Holm-adjusted p, and each row's model timed as
    deployed (batch 1 and 64, all rows in shared rounds).

    PATHS are run directories or folders holding them (searched two levels deep). Each train-time
    variant is followed by the baseline reduced post hoc to its parameter count on the same layers.
    """
    from ..analysis.compare import compare_runs
    from ..analysis.plot import plot
    from ..analysis.render import render
    from ..fileio import atomic_write_text, check_output_file
    from ..runs.reader import find_run_dirs
    device = _device(device)
    inputs = find_run_dirs(paths)
    for path, what in ((out_path, "--out"), (plot_path, "--plot")):  # before the work, never into a run
        if path is not None:
            check_output_file(path, inputs=inputs, what=what, replace=overwrite)
    result = compare_runs(paths, baseline=baseline, speed=not no_speed, device=device,
                          threads=threads, metric=metric)
    text = render(result, fmt)
    if out_path:
        atomic_write_text(out_path, text)
    else:
        click.echo(text, nl=False)
    if plot_path:
        plot(result.rows, plot_path)
        click.echo(f"plot: {plot_path}", err=True)
    if result.problems:
        click.echo(f"{len(result.problems)} run(s) not compared (listed in the output)", err=True)


def _device(device: str) -> str:
    """auto | cpu | cuda | cuda:N, checked up front (a typo must not turn into an empty speed column)."""
    from ..device import resolve_device
    return str(resolve_device(device))
