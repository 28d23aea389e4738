"""`laser-tool study`: the whole experiment in one resumable command.

For a preset it trains every grid row for every seed, reduces each seed's baseline post hoc to each
train-time row's parameter count on the same layers (plain SVD and the activation-aware `whiten`),
optionally fine-tunes ("heals") each reduced model for a few epochs as separate rows, and writes
STUDY/report.md: the compare table, the plot and the command that reproduces each row.

Everything lands in STUDY/runs/NAME with deterministic names, so a second invocation finds finished
runs (final.json) and skips them, and the trainer resumes an interrupted one from its last state.

Grids (ANCHORS.md): seed-xt is the blog's rows A-I on the x-transformers ViT; seed-vit-tiny is the
DYAD follow-up (baseline; mlp_dim 1024 with DYAD FFN layers); quick is a CPU-sized version of the
question on Fashion-MNIST using the trainer's `quick` model.
"""
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Row:
    id: str            # the blog's row letter for the seed presets; also fixes the table order
    slug: str          # part of the run name
    opts: tuple = ()   # (option, value) pairs over the trainer preset, as `laser-tool train` takes them

    @property
    def is_baseline(self) -> bool:
        return not self.opts


def _rows(*specs):
    return [Row(i, slug, tuple(opts.items())) for i, slug, opts in specs]


GRIDS = {
    "seed-xt": _rows(
        ("A", "baseline", {}), ("B", "half-ffn", {"variant": "half-ffn"}),
        ("C", "skl-ffn", {"variant": "skl", "targets": ("ffn",)}),
        ("D", "skl-ffn-in", {"variant": "skl", "targets": ("ffn-in",)}),
        ("E", "lowrank-ffn-in", {"variant": "lowrank", "targets": ("ffn-in",)}),
        ("F", "skl-ffn-out", {"variant": "skl", "targets": ("ffn-out",)}),
        ("G", "skl-attn-out", {"variant": "skl", "targets": ("attn-out",)}),
        ("H", "lowrank-attn-out", {"variant": "lowrank", "targets": ("attn-out",)}),
        ("I", "skl-attn", {"variant": "skl", "targets": ("attn",)})),
    "seed-vit-tiny": _rows(("T1", "baseline", {}),
                           ("T2", "dyad-ffn-mlp1024", {"variant": "dyad", "targets": ("ffn",), "mlp_dim": 1024})),
}
DEFAULT_SEEDS = {"seed-xt": 4, "seed-vit-tiny": 4}  # the blog ran ViT-tiny 4 times
METHODS = ("svd", "whiten")
HEAL_LR_FACTOR = 0.1  # healing fine-tunes already-trained weights: a tenth of the training lr


@dataclass
class Step:
    kind: str                      # train | reduce | heal
    name: str                      # run directory name under STUDY/runs
    command: str                   # how to reproduce it by hand
    cfg: object = None             # TrainConfig (train)
    parent: str = None             # run the step starts from (reduce, heal)
    selectors: list = field(default_factory=list)
    method: str = None
    epochs: int = 0
    group: str = None              # reduce steps of one group (baseline, method) share one decomposition


def _flag(k, v):
    f = "--" + k.replace("_", "-")
    if k == "targets":
        return " ".join(f"--target {t}" for t in v)
    if isinstance(v, bool):
        return f if v else f.replace("--", "--no-", 1)
    if k == "reduce_layers":
        return " ".join(f"--reduce-layer {shlex.quote(t)}" for t in v)
    return f"{f} {v}"


def matched_selectors(base_spec, variant_spec) -> list:
    """Per-layer `name=rank` selectors that cut the baseline's layers to the parameter count of the
    variant's layers of the same name (factored rank r holds r*(d_in+d_out) weights plus the bias).
    Empty when the variant's layers are not smaller, so a reduction could save nothing."""
    from .layers import layer_kind
    from .models import build_model
    from .surgery import named_linears, slots
    base = {s.name: s.module for s in slots(build_model(base_spec))}
    out = []
    for v in named_linears(build_model(variant_spec)):
        b = base.get(v["name"])
        if b is None or (v["kind"] == layer_kind(b)
                         and (v["in_features"], v["out_features"]) == (b.in_features, b.out_features)):
            continue  # untouched by the variant
        d_in, d_out = b.in_features, b.out_features
        bias = d_out if getattr(b, "bias", None) is not None else 0
        r = max(1, round((v["params"] - bias) / (d_in + d_out)))
        if r >= d_in * d_out / (d_in + d_out):
            return []
        out.append(f"{v['name']}={r}")
    return out




def train_config(preset: str, opts: dict):
    """TrainConfig = defaults <- the trainer's preset <- opts: what `laser-tool train --preset` builds."""
    from trainers.config import TrainConfig
    from trainers.presets import PRESETS
    from .models import ModelSpec
    from dataclasses import fields
    model_keys = {f.name for f in fields(ModelSpec)}
    p = dict(PRESETS[preset])
    model = ModelSpec(**p.pop("model"))
    given = {k: (list(v) if k == "targets" else v) for k, v in opts.items() if k in model_keys}
    if "reduce_at_fraction" in opts:  # a progressive row cuts at a fraction of the schedule, whatever its length
        opts = dict(opts)
        opts["reduce_at"] = f"{opts.pop('reduce_at_fraction') * opts.get('epochs', p['epochs']):.4g}"
    p.update({k: v for k, v in opts.items() if k not in model_keys})  # study settings override the preset's
    return replace(TrainConfig(), model=replace(model, **given), **p)


def heal_config(base_cfg, reduced: Path, name: str, epochs: int):
    """The trainer's config that heals a reduced run: the baseline's own recipe (batch size, augmentation,
    label smoothing, weight decay, split) from the reduced weights, a tenth of its lr, no warmup."""
    return replace(base_cfg, init_from=str(reduced), name=name, epochs=epochs, lr=base_cfg.lr * HEAL_LR_FACTOR,
                   warmup_epochs=0.0)


def seed_settings(seed: int, runs: Path, train_opts=None, epochs=None, device="auto", data_dir=None) -> dict:
    """The train settings every run of one seed of a study gets on top of the preset."""
    extra = {**(train_opts or {}), "seed": seed, "out": str(runs), "device": device}
    if epochs:
        extra["epochs"] = epochs
    if data_dir:
        extra["data_dir"] = str(data_dir)
    return extra


def plan(preset: str, seeds: int, out: Path, epochs=None, heal_epochs=None, device="auto", data_dir=None,
         train_opts=None, frontier_opts=None):
    """(steps, notes): every step of the study in order (per seed: train all rows, then reduce and
    heal), and sentences for the report about rows that get no post-hoc twin."""
    from .data import DATASETS, canonical_name
    from . import frontier
    if preset in frontier.FRONTIERS:
        return frontier.plan(preset, seeds, out, epochs=epochs, heal_epochs=heal_epochs, device=device,
                             data_dir=data_dir, train_opts=train_opts, **(frontier_opts or {}))
    if frontier_opts:
        raise UserError(f"--{next(iter(frontier_opts))} applies to the frontier presets "
                        f"({', '.join(frontier.FRONTIERS)}), not to {preset}")
    if preset not in GRIDS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join([*frontier.FRONTIERS, *GRIDS])}")
    runs = out / "runs"
    steps, notes, sels = [], [], {}
    for seed in range(seeds):
        extra = seed_settings(seed, runs, train_opts, epochs, device, data_dir)
        cfgs = {}
        for row in GRIDS[preset]:
            opts = dict(row.opts, name=f"{row.id}-{row.slug}-s{seed}", **extra)
            cfg = train_config(preset, opts)
            if "reduce_at_fraction" in opts:  # the command shows the epoch it resolved to
                opts = {("reduce_at" if k == "reduce_at_fraction" else k): (cfg.reduce_at if k == "reduce_at_fraction"
                                                                            else v) for k, v in opts.items()}
            info = DATASETS[canonical_name(cfg.dataset)]  # the trainer fits the model to the data the same way
            cfgs[row] = replace(cfg, model=replace(cfg.model, image_size=info.image_size, channels=info.channels,
                                                   num_classes=info.num_classes))
            cmd = f"laser-tool train --preset {preset} " + " ".join(_flag(k, v) for k, v in opts.items())
            steps.append(Step("train", opts["name"], cmd, cfg=cfg))
        base_row = next(r for r in GRIDS[preset] if r.is_baseline)
        base_name = f"{base_row.id}-{base_row.slug}-s{seed}"
        made = set()
        for row in GRIDS[preset]:
            if row.is_baseline or cfgs[row].reduce_at:  # a progressive row shares its twin with the low-rank row
                continue
            if row not in sels:  # the same for every seed: build the models once
                sels[row] = matched_selectors(cfgs[base_row].model, cfgs[row].model)
            sel = sels[row]
            if not sel:
                if seed == 0:
                    notes.append(f"{row.id} ({row.slug}) has no post-hoc twin: its layers hold no fewer "
                                 f"parameters than the baseline's, so a reduction would save nothing.")
                continue
            for method in METHODS:
                if (tuple(sel), method) in made:  # e.g. half-ffn and lowrank ffn r=0.5 cut to the same ranks:
                    continue                      # one run serves both (a copy would pose as a second seed)
                made.add((tuple(sel), method))
                name = f"{row.id}-posthoc-{method}-s{seed}"
                cmd = (f"laser-tool reduce {runs / base_name} " + " ".join(f"--layer {s}" for s in sel)
                       + f" --method {method} --store factored --out {runs / name}")
                steps.append(Step("reduce", name, cmd, parent=base_name, selectors=sel, method=method))
                if heal_epochs or 0:
                    healed = f"{row.id}-posthoc-{method}-heal{heal_epochs}-s{seed}"
                    hcfg = heal_config(cfgs[base_row], runs / name, healed, heal_epochs)
                    cmd = (f"laser-tool train --init-from {runs / name} --out {runs} --name {healed} "
                           f"--epochs {heal_epochs} --lr {hcfg.lr:g} --warmup-epochs 0")
                    steps.append(Step("heal", healed, cmd, cfg=hcfg, parent=name, epochs=heal_epochs))
    return steps, notes


def check_same_settings(runs: Path, steps: list) -> None:
    """Refuse to reuse runs trained with other settings: a study's runs are found again by name, so a
    second invocation with, say, other --epochs into the same --out would otherwise mix the two."""
    from trainers.train import settings
    for st in steps:
        f = runs / st.name / "config.json"
        if st.cfg is None or not f.exists():
            continue
        try:
            old = settings(json.loads(f.read_text()))
        except (OSError, ValueError, AttributeError):
            raise UserError(f"{f} is unreadable; move {f.parent} away to retrain it") from None
        new = settings(st.cfg.to_dict())
        if st.kind == "heal":  # the trainer takes a healed run's model from its source
            old.pop("model", None), new.pop("model", None)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise UserError(f"{runs.parent} holds runs made with other settings ({st.name}: "
                            f"{', '.join(diff)} differ); use another --out for these settings")


def run_study(preset: str, seeds=None, out=None, epochs=None, heal_epochs=None, device="auto", data_dir=None,
              log=lambda s: print(s, file=sys.stderr, flush=True), launch=None, tensorboard=False, train_opts=None,
              frontier_opts=None):
    """Run (or continue) a study; returns the path of its report.md, or None while steps are still
    queued on a cluster (`launch`: how steps run, laser_tool/runner.py; default one after another)."""
    from . import runner
    from .runtable import final_acc
    t_start = time.time()
    out = Path(out or f"studies/{preset}")
    seeds = default_seeds(preset) if seeds is None else seeds
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: need at least one seed")
    steps, notes = plan(preset, seeds, out, epochs, heal_epochs, device, data_dir, train_opts, frontier_opts)
    for st in steps:  # every setting in range before any data is read or any run starts
        if st.kind in ("train", "heal"):
            st.cfg.validate()
    if tensorboard:  # watching changes nothing trained (a volatile setting)
        steps = [replace(st, cfg=replace(st.cfg, tensorboard=True)) if st.cfg is not None else st for st in steps]
    launch = runner.check_launch(launch or runner.Launch(), device)
    runs = out / "runs"
    with runner.study_lock(out):
        check_same_settings(runs, steps)
        todo = [st for st in steps if st.kind == "train" and final_acc(runs / st.name) is None]
        if todo:  # a missing dataset is one clear error up front, not one per run
            from .data import load_dataset
            c = todo[0].cfg
            load_dataset(c.dataset, c.data_dir, c.download, c.val_size, c.seed, c.train_subset)
        res = runner.execute(steps, out, launch, device, data_dir, log)
        if res.pending:
            log(f"{len(res.pending)} step(s) queued in Slurm; `laser-tool study ... --status` shows them; "
                f"run the same command again once they end to write the report")
            return None
        failed = res.failed
        report = write_report(out, preset, seeds, steps, notes, device, t_start, res.work) if runs.exists() else None
    if failed:
        more = "..." if len(failed) > 4 else ""
        raise UserError(f"{len(failed)} run(s) did not finish ({', '.join(failed[:4])}{more}); "
                        f"the report lists them; run the same command again to retry")
    return report


def default_seeds(preset: str) -> int:
    from .frontier import FRONTIERS
    return FRONTIERS[preset].seeds if preset in FRONTIERS else DEFAULT_SEEDS.get(preset, 1)


def study_status(preset: str, seeds=None, out=None, epochs=None, heal_epochs=None, device="auto", data_dir=None,
                 train_opts=None, frontier_opts=None) -> list:
    """`study --status`: the table's lines from the run directories (and Slurm's queue, if used)."""
    from .runtable import status_lines
    out = Path(out or f"studies/{preset}")
    seeds = default_seeds(preset) if seeds is None else seeds
    steps, _ = plan(preset, seeds, out, epochs, heal_epochs, device, data_dir, train_opts, frontier_opts)
    return status_lines(steps, out)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log_invocation(out: Path, seconds: float, work: int) -> list:
    """Append this invocation to STUDY/study.json; returns them all (a resumed study's wall time is
    the sum over its invocations, so one number alone would understate or overstate it)."""
    from .fileio import atomic_write_json
    f = out / "study.json"
    try:
        runs = json.loads(f.read_text())["invocations"]
    except (OSError, ValueError, KeyError, TypeError):
        runs = []
    runs.append(dict(finished=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(seconds, 1), runs_made=work))
    atomic_write_json(f, {"invocations": runs})
    return runs


def write_report(out: Path, preset: str, seeds: int, steps: list, notes: list, device: str, t_start: float,
                 work: int = 0) -> Path:
    """STUDY/report.md (+ plot.png, results.json, study.json) from the runs under STUDY/runs."""
    import torch
    from . import answer, report
    from .compare import compare_runs
    from .fileio import atomic_write_text
    from .device import resolve_device
    dev = str(resolve_device(device))
    result = compare_runs([out / "runs"], speed=True, device=dev, speed_batch=256, speed_reps=10)
    result.notes += notes
    report.plot(result.rows, out / "plot.png", title=f"study {preset}")
    atomic_write_text(out / "results.json", report.to_json(result))
    wall = time.time() - t_start  # this invocation, the report's own timing passes included
    calls = log_invocation(out, wall, work)
    total = sum(c["seconds"] for c in calls)
    gpu = f", {torch.cuda.get_device_name()}" if dev.startswith("cuda") else ""
    head = [f"# Study `{preset}`: {seeds} seed(s)", "",
            f"Machine: {_cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu}; "
            f"torch {torch.__version__}. Inference images/s: forward passes of a batch of 256 on {dev} "
            f"(median of 10).",
            f"Wall time: {total / 60:.1f} min over {len(calls)} invocation(s) of `laser-tool study` "
            f"(this one {wall / 60:.1f} min, {work} run(s) made; the rest were found finished).",
            ""]
    found = answer.markdown(result.rows)
    if found:
        head += ["## The answer: which way of slimming loses least at each budget", "", found]
    head += ["![test accuracy vs parameters kept and vs training FLOPs](plot.png)", "", "## All rows", ""]
    text = "\n".join(head) + report.markdown(result, commands={s.name: [s.command] for s in steps})
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
