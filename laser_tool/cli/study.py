"""`laser-tool study`: a thin Click wrapper over study/run.py."""
import sys

import click

from ..errors import UserError
from ..signals import exit_code
from ..vocab import FRONTIER_TARGETS
from .options import (ARCH, ARCH_ARG, CHANNELS, IMAGE_SIZE, SIGMA_REPARAM, arch_args, dataset_options, device_option,
                      minutes, training_options)


@click.command()
@click.option("--preset", required=True, metavar="NAME", help="Frontiers: quick (the decided answer at keep 0.1: seed 0 "
                   "chooses, 5 fresh seeds confirm; CPU, under 30 minutes), quick-wide (one seed, three budgets, "
                   "exploratory), frontier, frontier-seed-vit-tiny, quick-narrow (the candidate recipe, "
                   "docs/recipe.md); the seed's grids: seed-xt, seed-vit-tiny.")
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
@click.option("--epochs-grid", metavar="E,E,...", help="Frontier presets: the whole frontier at each of these training "
              "lengths (epochs; fractional ones as --epochs), each length with its own baseline; the answer and the plot per length.")
@device_option("auto", indexed=False)
@dataset_options()
@training_options
@IMAGE_SIZE
@CHANNELS
@ARCH
@ARCH_ARG
@SIGMA_REPARAM
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
@click.option("--margin", type=float, default=0.5, show_default=True,
              help="Equivalence margin of the answer's tests, in percentage points of accuracy.")
@click.option("--confirm-seeds", type=int, metavar="N",
              help="Choose the contenders on the study's seeds (validation), then confirm the answer's comparisons on "
                   "N fresh seeds (test, a paired t over seeds); 0: none (default: the preset's).")
@click.option("--until-decided", is_flag=True,
              help="With confirmation: add seeds to the undecided comparisons' rows after each look, up to --max-seeds.")
@click.option("--max-seeds", type=int, default=10, show_default=True,
              help="With --until-decided: the most confirmation seeds a comparison gets.")
@click.option("--no-speed", is_flag=True,
              help="Skip timing every row's latency (the report's latency column and the answer per latency), "
                   "as `compare --no-speed` does: for a machine whose timings mean nothing.")
@click.option("--extend", is_flag=True, help="Add this invocation's rows to a study planned with other settings "
              "(e.g. more --seeds); without it such an invocation is refused.")
def study(show_status, **options):
    """Train a preset's runs over seeds and write STUDY/report.md (the answer, table, plot, commands).

    \b
    Frontier presets (quick, quick-wide, frontier, frontier-seed-vit-tiny, quick-narrow): per budget
    (--budgets, fractions of the targeted layers' parameters kept), every family the preset names
    (quick: five at keep 0.1, confirmed on 5 fresh seeds): narrower, train-time structured (standard and
    structured parameterisation), progressive, post-hoc svd and whiten from the baseline, healed,
    and svd-alloc/whiten-alloc (per-layer ranks chosen by `search` on validation, at most the uniform cut's
    parameters).
    Seed grids (seed-xt, seed-vit-tiny): the blog's rows, each train-time row with the baseline cut
    post hoc to its parameter count.
    Running the same command again skips finished runs and continues unfinished ones.
    """
    from ..study import run_study, study_status
    launch_options = {k: options.pop(k) for k in LAUNCH_OPTIONS}
    request = request_of(options)
    if show_status:
        for line in study_status(request):
            click.echo(line)
        return
    try:
        report = run_study(request, launch_of(launch_options), log=lambda s: click.echo(s, err=True))
    except KeyboardInterrupt as e:
        click.echo("interrupted: finished runs are kept and started ones saved their resume point; "
                   "run the same command again to continue", err=True)
        sys.exit(exit_code(e))
    if report is not None:
        click.echo(str(report))


LAUNCH_OPTIONS = ("jobs", "threads", "launcher", "gpus_per_job", "jobs_per_gpu", "partition", "account", "qos",
                  "gpus_per_node", "time_limit", "no_wait")


def launch_of(o: dict):
    """The Launch (how steps run) from the command's launch options (LAUNCH_OPTIONS)."""
    from ..launch.base import Launch
    slurm = dict(partition=o["partition"], account=o["account"], qos=o["qos"], gpus_per_node=o["gpus_per_node"],
                 time=minutes(o["time_limit"]))
    return Launch(jobs=o["jobs"], launcher=o["launcher"], threads=o["threads"], gpus_per_job=o["gpus_per_job"],
                  jobs_per_gpu=o["jobs_per_gpu"], slurm=slurm, wait=not o["no_wait"])


def request_of(options: dict):
    """The StudyRequest of the command's study options; every option not the study's own or a frontier
    preset's is a training setting for every row (train_opts)."""
    from ..study import StudyRequest
    from ..study.frontier import FRONTIER_OPTIONS
    o = dict(options)
    own = {k: o.pop(k) for k in ("preset", "seeds", "out", "epochs", "heal_epochs", "device", "data_dir",
                                 "tensorboard", "extend", "margin")}
    own["speed"] = not o.pop("no_speed")
    confirm = {k: o.pop(k) for k in ("confirm_seeds", "until_decided", "max_seeds")}
    frontier = {k: v for k in FRONTIER_OPTIONS if (v := o.pop(k)) is not None and v is not False}
    epochs, heal_epochs = own["epochs"], own["heal_epochs"]
    if (heal_epochs is not None and heal_epochs < 0) or (epochs is not None and epochs < 1):
        raise UserError("--epochs must be at least 1 and --heal-epochs at least 0")
    if epochs is not None and float(epochs).is_integer():
        own["epochs"] = int(epochs)  # 4.0 and 4 are one study (its record and its runs' names)
    train_opts = {k: v for k, v in o.items() if v is not None and v != ()}
    if "arch_args" in train_opts:
        train_opts["arch_args"] = arch_args(train_opts["arch_args"])
    own["margin"] = own["margin"] / 100  # percentage points on the command line, a fraction of accuracy inside
    return StudyRequest(**own, train_opts=train_opts, frontier_opts=frontier, confirm=confirm_of(own["preset"], confirm))


def confirm_of(preset: str, o: dict):
    """The study's confirmation (study/decide.py's Confirm) from its options; None without one."""
    from ..study.decide import Confirm
    from ..study.frontier import FRONTIERS
    seeds = o["confirm_seeds"]
    if seeds is None:
        seeds = FRONTIERS[preset].confirm_seeds if preset in FRONTIERS else 0
    if seeds < 0 or o["max_seeds"] < 1:
        raise UserError("--confirm-seeds must be at least 0 and --max-seeds at least 1")
    if not seeds:
        if o["until_decided"]:
            raise UserError("--until-decided adds confirmation seeds; give --confirm-seeds N (N >= 3) with it")
        return None
    if preset not in FRONTIERS:
        raise UserError(f"--confirm-seeds applies to the frontier presets ({', '.join(FRONTIERS)}), not to {preset}")
    until = o["until_decided"]
    return Confirm(seeds=seeds, until_decided=until, max_seeds=o["max_seeds"] if until else seeds)
