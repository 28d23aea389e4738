"""Frontier studies: every way of slimming, at several parameter budgets.

A budget is the fraction of the targeted layers' parameters kept (`keep`). For each seed the plan
trains one dense baseline, then per budget:
  narrower      a dense model whose targeted widths are scaled by the budget (FFN hidden width for
                ffn, the attention head width for attn, both for all)
  lowrank, skl, dyad, monarch, btt
                train-time structured layers on the targets at `--keep` budget (`-structured`: with
                Qiu et al.'s init and learning-rate rule; low-rank structured also starts spectral)
  progressive   the dense model cut to the budget a third of the way through training, then trained on
  svd, whiten   the baseline cut post hoc to the budget (factored); every budget of one baseline and
                method shares one decomposition and one calibration pass
  healed        each post-hoc cut fine-tuned `heal_epochs` with the baseline's recipe (train --init-from)
Every run is an ordinary run directory; `compare` groups them by what they are, not by their names.
"""
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import UserError

# What each --targets value means to each family.
VARIANT_TARGETS = {"ffn": ("ffn",), "attn": ("attn",), "all": ("attn", "ffn")}
SELECTORS = {"ffn": ("*:mlp",), "attn": ("*:attn",), "all": ("*:all",)}
TRAIN_TIME = ("lowrank", "skl", "dyad", "monarch", "btt")
POST_HOC = ("svd", "whiten")
FAMILIES = ("narrower", *TRAIN_TIME, *(f"{v}-structured" for v in TRAIN_TIME), "progressive", *POST_HOC)
PROGRESSIVE_AT = 1 / 3  # of the epochs: dense for the first third (Pufferfish-style warm-up), then cut


@dataclass(frozen=True)
class Frontier:
    trainer_preset: str      # the trainer preset every run starts from
    budgets: tuple           # fractions of the targeted layers' parameters kept
    targets: str             # ffn | attn | all
    families: tuple
    heal_epochs: int = 0     # > 0: every post-hoc cut is also healed this many epochs
    seeds: int = 1


FRONTIERS = {
    # The main job: one CPU command, minutes. Attention and FFN together, since cutting the FFN alone
    # costs the quick model nothing measurable even at a tenth of its parameters.
    "quick": Frontier("quick", (0.5, 0.25, 0.1), "all",
                      ("narrower", "lowrank", "lowrank-structured", "progressive", "svd", "whiten"), heal_epochs=1),
    # Every family on the quick model: 35 trainings (a CPU needs the better part of an hour; not timed here).
    "frontier": Frontier("quick", (0.5, 0.25, 0.1), "all", FAMILIES, heal_epochs=1),
    # The seed's ViT-tiny on CIFAR-10 (a GPU job).
    "frontier-seed-vit-tiny": Frontier("seed-vit-tiny", (0.5, 0.25, 0.1), "all", FAMILIES, heal_epochs=10,
                                       seeds=3),
}


def parse_budgets(text) -> tuple:
    """'0.5,0.25,0.1' -> (0.5, 0.25, 0.1); each in (0, 1)."""
    out = []
    for part in str(text).split(","):
        try:
            b = float(part)
        except ValueError:
            raise UserError(f"--budgets {text!r}: {part!r} is not a number; e.g. --budgets 0.5,0.25,0.1") from None
        if not 0 < b < 1:
            raise UserError(f"--budgets {text!r}: budget {b:g} is outside (0, 1); a budget is the fraction of "
                            f"the targeted layers' parameters kept")
        out.append(b)
    return tuple(sorted(set(out), reverse=True))


def parse_families(text) -> tuple:
    fams = tuple(f.strip() for f in str(text).split(",") if f.strip())
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    return fams


def narrower_model(model, targets: str, keep: float):
    """The dense model whose targeted widths are scaled by `keep` (at least 1)."""
    s = model.resolved()  # the arch's defaults filled in
    change = {}
    if targets in ("ffn", "all"):
        change["mlp_dim"] = max(1, round(s.mlp_dim * keep))
    if targets in ("attn", "all"):
        change["dim_head"] = max(1, round(s.dim_head * keep))
    return replace(model, **change)


def _tag(keep: float) -> str:
    return f"k{keep:g}"


def plan(name: str, seeds: int, out: Path, budgets=None, targets=None, families=None, heal_epochs=None,
         epochs=None, device="auto", data_dir=None, train_opts=None):
    """(steps, notes) of a frontier study, in dependency order per seed."""
    from .data import DATASETS, canonical_name
    from .models import build_model
    from .study import Step, _flag, heal_config, seed_settings, train_config
    fr = FRONTIERS[name]
    budgets = parse_budgets(budgets) if budgets is not None else fr.budgets
    targets = targets or fr.targets
    if targets not in VARIANT_TARGETS:
        raise UserError(f"--targets {targets!r}: choose ffn, attn or all")
    families = parse_families(families) if families is not None else fr.families
    heal_epochs = fr.heal_epochs if heal_epochs is None else heal_epochs
    runs = out / "runs"
    steps, notes, checked = [], [], {}
    preset = fr.trainer_preset

    def train_step(opts, name, extra):
        opts = dict(opts, name=name, **extra)
        cmd = f"laser-tool train --preset {preset} " + " ".join(_flag(k, v) for k, v in opts.items())
        return Step("train", name, cmd, cfg=train_config(preset, opts))

    def fitted(model):
        """The model at the dataset's sizes, as the trainer will build it."""
        info = DATASETS[canonical_name(base.cfg.dataset)]
        return replace(model, image_size=info.image_size, channels=info.channels, num_classes=info.num_classes)

    def reachable(model, fam, keep) -> bool:
        """Whether the model can be built (a budget a variant cannot reach is a note in the report, not a
        failed run)."""
        try:
            build_model(fitted(model))
            return True
        except UserError as e:
            notes.append(f"{fam} at budget {keep:g} is not in this study: {e}")
            return False

    for seed in range(seeds):
        extra = seed_settings(seed, runs, train_opts, epochs, device, data_dir)
        base = train_step({}, f"baseline-s{seed}", extra)
        steps.append(base)
        for fam in families:
            for keep in budgets:
                if fam in POST_HOC:
                    continue
                opts = {}
                if fam == "narrower":
                    m = narrower_model(fitted(base.cfg.model), targets, keep)
                    opts = {k: getattr(m, k) for k in ("mlp_dim", "dim_head") if getattr(m, k) != getattr(
                        base.cfg.model, k)}
                elif fam == "progressive":
                    at = base.cfg.epochs * PROGRESSIVE_AT
                    opts = {"reduce_at": f"{at:g}", "reduce_to": f"params:{keep:g}",
                            "reduce_layers": list(SELECTORS[targets])}
                else:
                    variant, _, structured = fam.partition("-")
                    opts = {"variant": variant, "targets": VARIANT_TARGETS[targets], "keep": keep}
                    if structured:
                        opts["param"] = "structured"
                        if variant == "lowrank":
                            opts["init"] = "spectral"
                st = train_step(opts, f"{fam}-{_tag(keep)}-s{seed}", extra)
                if (fam, keep) not in checked:
                    checked[fam, keep] = reachable(st.cfg.model, fam, keep)
                if checked[fam, keep]:
                    steps.append(st)
        for method in (f for f in families if f in POST_HOC):
            for keep in budgets:
                cut = f"{method}-{_tag(keep)}-s{seed}"
                sel = [f"{s}=params:{keep:g}" for s in SELECTORS[targets]]
                cmd = (f"laser-tool reduce {runs / base.name} " + " ".join(f"--layer '{s}'" for s in sel)
                       + f" --method {method} --store factored --out {runs / cut}")
                steps.append(Step("reduce", cut, cmd, parent=base.name, selectors=sel, method=method,
                                  group=f"{base.name}|{method}"))
                if heal_epochs:
                    healed = f"{method}-{_tag(keep)}-heal{heal_epochs}-s{seed}"
                    hcfg = heal_config(base.cfg, runs / cut, healed, heal_epochs)
                    hcmd = (f"laser-tool train --init-from {runs / cut} --out {runs} --name {healed} "
                            f"--epochs {heal_epochs} --lr {hcfg.lr:g} --warmup-epochs 0")
                    steps.append(Step("heal", healed, hcmd, cfg=hcfg, parent=cut, epochs=heal_epochs))
    return steps, notes
