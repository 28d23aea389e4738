"""Frontier studies: every way of slimming, at several parameter budgets.

A budget is the fraction of the targeted layers' parameters kept (`keep`). For each seed the plan
trains one dense baseline, then per budget:
  narrower      a dense model whose targeted widths are scaled by the budget (FFN hidden width for
                ffn, the attention head width for attn, both for all)
  lowrank, skl, dyad, monarch, btt
                train-time structured layers on the targets at `--keep` budget (`-structured`: with
                Qiu et al.'s init and learning-rate rule; a family with a spectral init, low-rank,
                also starts spectral)
  progressive   the dense model cut to the budget a third of the way through training, then trained on
  svd, whiten   the baseline cut post hoc to the budget (factored); every budget of one baseline and
                method shares one decomposition and one calibration pass (whiten: CALIBRATION below)
  svd-alloc, whiten-alloc
                the baseline cut post hoc with per-layer ranks chosen by `search` on validation, at most
                the uniform cut's parameters (allocated.py)
  healed        each post-hoc cut fine-tuned `heal_epochs` with the baseline's recipe (train --init-from)
  control       the baseline itself trained on with that recipe for as many FLOPs as one budget's heal costs
                (`baseline-plusH-kKEEP`: H x the cut's step FLOPs / the dense step's, in dense epochs), so a
                heal is measured against the same extra compute spent without a cut
  lr grid       with `--lr-grid M1,M2,...` (the `frontier` preset: 0.5,1,2), every train-time, narrower
                and progressive row and every heal at each multiple of its learning rate; compare keeps,
                per row, the multiple with the best validation accuracy
  iso-compute   with `--match-compute`, every train-time and narrower row once more, trained for the
                epochs that make its training FLOPs equal the healed rows' (compute.py)
  lengths       with `--epochs-grid E1,E2,...`, the whole frontier once per training length: each length has
                its own baseline, which its post-hoc rows cut; a progressive row cuts at its third of its
                own run; names carry -eE (the preset's own length keeps the plain names, so a grid added
                to a study reuses its finished rows). compare tests every row against the baseline of its
                own length, and the answer and the plot come per length.
Every run is an ordinary run directory; `compare` groups them by what they are, not by their names.
"""
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data import fit_model
from ..errors import UserError, flag_name
from ..lists import comma_list
from ..models import build_model
from ..models.families import FAMILIES as LAYER_FAMILIES
from ..posthoc.methods import calibrated, cut_methods
from ..vocab import FRONTIER_TARGETS
from .compute import check_match_compute, control_epochs, matched_epochs
from .allocated import ALLOCATED, allocated_steps
from .steps import heal_step, reduce_step, seed_settings, train_config, train_step

# What each --targets value means to each family.
VARIANT_TARGETS = dict(zip(FRONTIER_TARGETS, (("ffn",), ("attn",), ("attn", "ffn"))))
SELECTORS = dict(zip(FRONTIER_TARGETS, (("*:mlp",), ("*:attn",), ("*:all",))))
POST_HOC = cut_methods()
FAMILIES = ("narrower", *LAYER_FAMILIES, *(f"{v}-structured" for v in LAYER_FAMILIES), "progressive", *POST_HOC,
            *ALLOCATED)
PROGRESSIVE_AT = 1 / 3  # of the epochs: dense for the first third (Pufferfish-style warm-up), then cut
# How the whiten family calibrates: original (every layer on the unreduced model's inputs, SVD-LLM's way).
# docs/whitening.md measured sequential calibration on the quick baseline: validation accuracy -0.02,
# -0.16, +0.42 pp at keep 0.5, 0.25, 0.1 (noise on 5,000 images) for one pass per layer and budget, so the
# frontier keeps original (`reduce --calibrate` offers both). Whiten's loss at 0.1 is the CLS token's.
CALIBRATION = "original"


@dataclass(frozen=True)
class Frontier:
    trainer_preset: str      # the trainer preset every run starts from
    budgets: tuple           # fractions of the targeted layers' parameters kept
    targets: str             # ffn | attn | all
    families: tuple
    heal_epochs: int = 0     # > 0: every post-hoc cut is also healed this many epochs
    seeds: int = 1
    lr_grid: tuple = ()      # multiples of the learning rate each train-time row and heal is tried at
    confirm_seeds: int = 0   # > 0: the answer is confirmed on this many fresh seeds (study/decide.py)


FRONTIERS = {
    # The main job: the decided answer at keep 0.1 on one CPU in under 30 minutes. Seed 0 explores every
    # row and the contenders are chosen on its validation accuracy; seeds 1-5 train only the rows the
    # comparisons need (study/decide.py), the FLOP-matched twin of the best train-time row among them. One
    # budget because one costs about 3.4 minutes per confirmation seed on 2 cores (README); keep 0.1, where
    # the ways of slimming part (quick-wide, one seed: -1.5 pp for the best of them against the baseline).
    "quick": Frontier("quick", (0.1,), "all", ("narrower", "lowrank", "progressive", "svd", "whiten"),
                      heal_epochs=1, confirm_seeds=5),
    # The wide one-seed frontier (exploratory): three budgets, more families. Attention and FFN together,
    # since cutting the FFN alone costs the quick model nothing measurable even at a tenth of its parameters.
    "quick-wide": Frontier("quick", (0.5, 0.25, 0.1), "all",
                           ("narrower", "lowrank", "lowrank-structured", "progressive", "svd", "whiten",
                            "svd-alloc", "whiten-alloc"), heal_epochs=1),
    # Every family on the quick model: 35 trainings (a CPU needs the better part of an hour; not timed here).
    "frontier": Frontier("quick", (0.5, 0.25, 0.1), "all", FAMILIES, heal_epochs=1, lr_grid=(0.5, 1, 2)),
    # The seed's ViT-tiny on CIFAR-10 (a GPU job).
    "frontier-seed-vit-tiny": Frontier("seed-vit-tiny", (0.5, 0.25, 0.1), "all", FAMILIES, heal_epochs=10,
                                       seeds=3),
    # The candidate quick recipe (trainers/presets.py: quick-narrow), for its plateau and heal grid
    # (docs/recipe.md): `--families svd --epochs-grid ... --lr-grid ...` (exploratory, one seed).
    "quick-narrow": Frontier("quick-narrow", (0.25, 0.1), "all",
                             ("narrower", "lowrank", "progressive", "svd", "whiten"), heal_epochs=1),
}


def parse_budgets(text) -> tuple:
    """'0.5,0.25,0.1' -> (0.5, 0.25, 0.1); each in (0, 1)."""
    out = comma_list(text, "--budgets", float, example="0.5,0.25,0.1", what="a number")
    for b in out:
        if not 0 < b < 1:
            raise UserError(f"--budgets {text!r}: budget {b:g} is outside (0, 1); a budget is the fraction of "
                            f"the targeted layers' parameters kept")
    return tuple(sorted(set(out), reverse=True))


def parse_lr_grid(text) -> tuple:
    """'0.5,1,2' -> (0.5, 1.0, 2.0): multiples of the preset's learning rate, each > 0, each once."""
    out = comma_list(text, "--lr-grid", float, example="0.5,1,2 (multiples of the learning rate)", what="a number")
    for i, m in enumerate(out):
        if not (math.isfinite(m) and m > 0):
            raise UserError(f"--lr-grid {text!r}: {m:g} is not a positive multiple of the learning rate")
        if m in out[:i]:
            raise UserError(f"--lr-grid {text!r}: {m:g} is given twice; list each multiple once")
    return tuple(sorted(out))


def parse_epochs_grid(text) -> tuple:
    """'2,6,18' -> (2, 6, 18): training lengths in epochs, each > 0, each once; a fractional length trains
    round(E x steps per epoch) optimizer steps, as --epochs does (the quick recipe's 7.2867 and its 3x, 9x)."""
    def number(item):
        v = float(item)
        if not math.isfinite(v):
            raise ValueError(item)
        return int(v) if v.is_integer() else v
    out = comma_list(text, "--epochs-grid", number, example="2,6,18 (training lengths in epochs)",
                     what="a number of epochs")
    for i, e in enumerate(out):
        if e <= 0:
            raise UserError(f"--epochs-grid {text!r}: {e:g} epochs trains nothing; give lengths above 0 epochs")
        if e in out[:i]:
            raise UserError(f"--epochs-grid {text!r}: {e:g} is given twice; list each length once")
    return tuple(sorted(out))


def grid_points(lr_grid) -> list:
    """(multiple, name part) per grid point; without a grid one point, the preset's lr, unlabelled.
    The multiple 1 keeps the plain name, so a grid added to a study reuses its finished rows."""
    if not lr_grid:
        return [(None, "")]
    return [(m, "" if m == 1 else f"-lr{m:g}") for m in lr_grid]


def parse_families(text) -> tuple:
    fams = tuple(comma_list(text, "--families", example="narrower,lowrank,svd"))
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    return fams


def narrower_model(model, targets: str, keep: float):
    """The dense model whose targeted widths are scaled by `keep` (at least 1)."""
    s = model.resolved()  # the arch's defaults filled in
    widths = [w for t, w in (("ffn", "mlp_dim"), ("attn", "dim_head")) if targets in (t, "all")]
    unknown = [w for w in widths if getattr(s, w, None) is None]
    if unknown:  # a python: factory's model declares no widths the tool could scale
        raise UserError(f"the narrower family needs the model's {' and '.join(unknown)}, which --arch {s.arch} does not "
                        f"declare; leave narrower out of --families, or use a built-in or timm arch")
    return replace(model, **{w: max(1, round(getattr(s, w) * keep)) for w in widths})


def cut_selectors(targets: str, keep: float) -> list:
    """The `reduce --layer` selectors of a uniform post-hoc cut of the targets to budget `keep`."""
    return [f"{s}=params:{keep:g}" for s in SELECTORS[targets]]


def _tag(keep: float) -> str:
    return f"k{keep:g}"


def family_opts(fam: str, keep: float, targets: str, base_cfg) -> dict:
    """The train settings over the preset that make a train-time family's row at budget `keep`."""
    if fam == "narrower":
        m = narrower_model(fit_model(base_cfg.model, base_cfg.dataset), targets, keep)
        return {k: getattr(m, k) for k in ("mlp_dim", "dim_head") if getattr(m, k) != getattr(base_cfg.model, k)}
    if fam == "progressive":
        return {"reduce_at": f"{base_cfg.epochs * PROGRESSIVE_AT:g}", "reduce_to": f"params:{keep:g}",
                "reduce_layers": list(SELECTORS[targets])}
    variant, _, structured = fam.partition("-")
    opts = {"variant": variant, "targets": VARIANT_TARGETS[targets], "keep": keep}
    if structured:
        opts["param"] = "structured"
        if hasattr(LAYER_FAMILIES[variant], "spectral_init"):   # low-rank: its factors start from the SVD
            opts["init"] = "spectral"
    return opts


def reachable(st, fam: str, keep: float, notes: list) -> bool:
    """Whether a step's model can be built: a budget a variant cannot reach is a note in the report,
    not a failed run."""
    try:
        build_model(fit_model(st.cfg.model, st.cfg.dataset))
        return True
    except UserError as e:
        notes.append(f"{fam} at budget {keep:g} is not in this study: {e}")
        return False


def iso_step(fr, fam: str, keep: float, targets: str, base, row, heal_epochs: int, seed: int, sfx: str, extra: dict):
    """The compute-matched twin of a train-time or narrower row (`--match-compute`)."""
    sel = cut_selectors(targets, keep)
    at = PROGRESSIVE_AT if fam == "progressive" else None
    epochs = matched_epochs(base.cfg, row.cfg, sel, heal_epochs, at)
    opts = family_opts(fam, keep, targets, replace(base.cfg, epochs=epochs))
    label = {"base_epochs": base.cfg.epochs, "heal_epochs": heal_epochs}
    return train_step(fr.trainer_preset, {**opts, "matched_to": label},
                      f"{fam}-{_tag(keep)}-iso{sfx}", {**extra, "epochs": epochs})


FRONTIER_OPTIONS = ("budgets", "targets", "families", "match_compute", "lr_grid", "epochs_grid")


def plan_frontier(name: str, seeds: int, out: Path, epochs=None, heal_epochs=None, device="auto", data_dir=None,
                  train_opts=None, frontier_opts=None):
    """(steps, notes) of a frontier study, in dependency order per length and seed: the baseline, every
    train-time family at every budget, then each post-hoc method's cuts of the baseline (and their heals).
    `frontier_opts` holds the frontier's own settings (FRONTIER_OPTIONS, as the command line gives them);
    one left out is the preset's."""
    fr, given = FRONTIERS[name], dict(frontier_opts or {})
    unknown = sorted(set(given) - set(FRONTIER_OPTIONS))
    if unknown:
        raise UserError(f"{flag_name(unknown[0])} is not a frontier setting; choose from "
                        f"{', '.join(map(flag_name, FRONTIER_OPTIONS))}")
    budgets = parse_budgets(given["budgets"]) if given.get("budgets") is not None else fr.budgets
    targets = given.get("targets") or fr.targets
    if targets not in VARIANT_TARGETS:
        raise UserError(f"--targets {targets!r}: choose ffn, attn or all")
    families = parse_families(given["families"]) if given.get("families") is not None else fr.families
    heal_epochs = fr.heal_epochs if heal_epochs is None else heal_epochs
    points = grid_points(parse_lr_grid(given["lr_grid"]) if given.get("lr_grid") is not None else fr.lr_grid)
    match_compute, epochs_grid = given.get("match_compute", False), given.get("epochs_grid")
    if match_compute:
        check_match_compute(families, POST_HOC, heal_epochs)
    lengths = [(epochs, "")]
    if epochs_grid is not None:
        if epochs is not None:
            raise UserError("--epochs and --epochs-grid both given; give the lengths in --epochs-grid alone")
        plain = train_config(fr.trainer_preset, train_opts or {}).epochs
        lengths = [(e, "" if e == plain else f"-e{e:g}") for e in parse_epochs_grid(epochs_grid)]
    plan = _Plan(fr, out / "runs", budgets, targets, families, heal_epochs, points, match_compute)
    for length, part in lengths:
        for seed in range(seeds):
            plan.seed(seed, f"{part}-s{seed}", seed_settings(seed, plan.runs, train_opts, length, device, data_dir))
    return plan.steps, plan.notes


@dataclass
class _Plan:
    """The steps of a frontier study as they are planned, one seed (of one training length) at a time."""
    fr: Frontier
    runs: Path
    budgets: tuple
    targets: str
    families: tuple
    heal_epochs: int
    points: list
    match_compute: bool
    steps: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    checked: dict = field(default_factory=dict)

    def seed(self, seed: int, sfx: str, extra: dict) -> None:
        """One seed's steps; `sfx` ends every run name (-sSEED, after -eE for a length of an epochs grid)."""
        fr, runs, targets, heal_epochs = self.fr, self.runs, self.targets, self.heal_epochs
        base = train_step(fr.trainer_preset, {}, f"baseline{sfx}", extra)
        self.steps.append(base)
        for fam in (f for f in self.families if f not in POST_HOC + ALLOCATED):
            for keep in self.budgets:
                self.train_rows(fam, keep, base, seed, sfx, extra)
        for method in (f for f in self.families if f in POST_HOC):
            for keep in self.budgets:
                cut = f"{method}-{_tag(keep)}{sfx}"
                sel = cut_selectors(targets, keep)
                self.steps.append(reduce_step(runs, base.name, cut, sel, method, seed, group=f"{base.name}|{method}",
                                              calibrate=CALIBRATION if calibrated(method) else "original"))
                for mult, part in (self.points if heal_epochs else []):
                    self.steps.append(heal_step(runs, base.cfg, cut, f"{method}-{_tag(keep)}-heal{heal_epochs}{part}{sfx}",
                                                heal_epochs, seed, mult))
        self.steps += allocated_steps(runs, base.name, self.families, self.budgets, SELECTORS[targets], seed, sfx)
        if heal_epochs and any(f in POST_HOC for f in self.families):  # a heal against extra training alone
            for keep in self.budgets:
                epochs = control_epochs(base.cfg, cut_selectors(targets, keep), heal_epochs)
                self.steps.append(heal_step(runs, base.cfg, base.name, f"baseline-plus{heal_epochs}-{_tag(keep)}{sfx}",
                                            epochs, seed))

    def train_rows(self, fam: str, keep: float, base, seed: int, sfx: str, extra: dict) -> None:
        """A train-time, narrower or progressive family's rows at one budget: each point of the lr grid, and
        with --match-compute its compute-matched twin."""
        for mult, part in self.points:
            opts = family_opts(fam, keep, self.targets, base.cfg)
            if mult is not None:
                opts.update(lr=base.cfg.lr * mult, lr_grid={"base_lr": base.cfg.lr, "mult": mult})
            st = train_step(self.fr.trainer_preset, opts, f"{fam}-{_tag(keep)}{part}{sfx}", extra)
            if (fam, keep) not in self.checked:
                self.checked[fam, keep] = reachable(st, fam, keep, self.notes)
            if self.checked[fam, keep]:
                self.steps.append(st)
        if self.checked[fam, keep] and self.match_compute:
            self.steps.append(iso_step(self.fr, fam, keep, self.targets, base, st, self.heal_epochs, seed, sfx, extra))
