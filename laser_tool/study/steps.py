"""A study is a list of steps, each one run directory under STUDY/runs: train a row, reduce a trained
run post hoc, or heal a reduced one. Every step carries its seed, the command that reproduces it by
hand, and (train, heal) the TrainConfig the trainer runs."""
import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainers.config import build_config
from ..errors import flag_name

from ..vocab import STUDY_LABELS

HEAL_LR_FACTOR = 0.1  # healing fine-tunes already-trained weights: a tenth of the training lr


@dataclass
class Step:
    kind: str                      # train | reduce (a uniform cut, or a rank search's) | heal
    name: str                      # run directory name under STUDY/runs
    command: str                   # how to reproduce it by hand
    cfg: object = None             # TrainConfig (train, heal)
    parent: str = None             # run the step starts from (reduce, heal)
    selectors: list = field(default_factory=list)
    method: str = None
    epochs: int = 0
    group: str = None              # reduce steps of one group (baseline, method) share one decomposition
    seed: int = 0                  # the runs of one seed share one data split
    calibrate: str = "original"    # reduce with an activation-aware method: original | sequential
    search: dict = None            # reduce by `search --apply`: budget, val_images, compose (selectors: its layers)


def flag(k, v) -> str:
    """A setting as `laser-tool train` takes it on the command line."""
    f = flag_name(k)
    if k == "targets":
        return " ".join(f"--target {t}" for t in v)
    if isinstance(v, bool):
        return f if v else f.replace("--", "--no-", 1)
    if k == "dataset":
        return f"{f} {shlex.quote(str(v))}"
    if k == "reduce_layers":
        return " ".join(f"--reduce-layer {shlex.quote(t)}" for t in v)
    if k == "arch_args":
        return " ".join(f"--arch-arg {shlex.quote(f'{a}={json.dumps(x)}')}" for a, x in v.items())
    if k == "arch":
        return f"{f} {shlex.quote(str(v))}"
    return f"{f} {v}"


def train_config(preset: str, opts: dict):
    """TrainConfig = defaults <- the trainer's preset <- opts: what `laser-tool train --preset` builds."""
    return build_config(preset, opts)


def seed_settings(seed: int, runs: Path, train_opts=None, epochs=None, device="auto", data_dir=None) -> dict:
    """The train settings every run of one seed of a study gets on top of the preset."""
    extra = {**(train_opts or {}), "seed": seed, "out": str(runs), "device": device}
    if epochs:
        extra["epochs"] = epochs
    if data_dir:
        extra["data_dir"] = str(data_dir)
    return extra


def train_step(preset: str, opts: dict, name: str, extra: dict) -> Step:
    """A train step: the preset with `opts` and the seed's settings (`extra`) over it."""
    opts = dict(opts, name=name, **extra)
    cmd = f"laser-tool train --preset {preset} " + " ".join(flag(k, v) for k, v in opts.items()
                                                            if k not in STUDY_LABELS)
    return Step("train", name, cmd, cfg=train_config(preset, opts), seed=extra["seed"])


def reduce_step(runs: Path, parent: str, name: str, selectors: list, method: str, seed: int, group=None,
                calibrate="original") -> Step:
    """A post-hoc reduction of `parent` to factored layers (as `laser-tool reduce ... --store factored`)."""
    cmd = (f"laser-tool reduce {runs / parent} " + " ".join(f"--layer {shlex.quote(s)}" for s in selectors)
           + f" --method {method} --store factored"
           + (f" --calibrate {calibrate}" if calibrate != "original" else "") + f" --out {runs / name}")
    return Step("reduce", name, cmd, parent=parent, selectors=selectors, method=method, group=group, seed=seed,
                calibrate=calibrate)


def search_step(runs: Path, parent: str, name: str, layers: list, method: str, seed: int, budget: str,
                search: dict, group=None) -> Step:
    """A post-hoc reduction whose per-layer ranks a search on validation chooses under `budget` (as
    `laser-tool search ... --apply`): the step's selectors are the layers it may cut; `search` holds
    val_images, criterion and compose."""
    search = dict(search, budget=budget)
    cmd = (f"laser-tool search {runs / parent} --budget {budget} " + " ".join(f"--layers {shlex.quote(s)}" for s in layers)
           + f" --method {method} --val-images {search['val_images']} --criterion {search['criterion']}"
           + ("" if search["compose"] else " --no-compose") + f" --apply --out {runs / name}")
    return Step("reduce", name, cmd, parent=parent, selectors=list(layers), method=method, group=group, seed=seed,
                search=search)


def heal_step(runs: Path, base_cfg, reduced: str, name: str, epochs: int, seed: int, lr_mult: float = None) -> Step:
    """Healing a reduced run: the baseline's own recipe (batch size, augmentation, label smoothing, weight
    decay, split) from the reduced weights, a tenth of its lr (times `lr_mult`, a point of an lr grid), no
    warmup (`train --init-from`)."""
    lr = base_cfg.lr * HEAL_LR_FACTOR
    grid = None if lr_mult is None else {"base_lr": lr, "mult": lr_mult}
    cfg = replace(base_cfg, init_from=str(runs / reduced), name=name, epochs=epochs, lr=lr * (lr_mult or 1),
                  warmup_epochs=0.0, lr_grid=grid)
    cmd = (f"laser-tool train --init-from {runs / reduced} --out {runs} --name {name} "
           f"--epochs {epochs} --lr {cfg.lr:g} --warmup-epochs 0")
    return Step("heal", name, cmd, cfg=cfg, parent=reduced, epochs=epochs, seed=seed)
