"""The seed's grids (`study --preset seed-xt | seed-vit-tiny`): the blog's rows, each train-time row
beside the baseline cut post hoc to its parameter count on the same layers (plain SVD and the
activation-aware `whiten`), optionally healed.

seed-xt is the blog's rows A-I on the x-transformers ViT; seed-vit-tiny the DYAD follow-up (baseline;
mlp_dim 1024 with DYAD FFN layers) (ANCHORS.md).
"""
from dataclasses import dataclass
from pathlib import Path

from ..data import fit_model
from ..models import build_model
from ..models.budget import break_even_rank
from ..models.layers import layer_kind
from ..models.surgery import named_linears, slots
from ..posthoc.methods import cut_methods
from .steps import heal_step, reduce_step, seed_settings, train_step


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


def matched_selectors(base_spec, variant_spec) -> list:
    """Per-layer `name=rank` selectors that cut the baseline's layers to the parameter count of the
    variant's layers of the same name (factored rank r holds r*(d_in+d_out) weights plus the bias).
    Empty when the variant's layers are not smaller, so a reduction could save nothing."""
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
        if r >= break_even_rank(d_out, d_in):
            return []
        out.append(f"{v['name']}={r}")
    return out


def plan_grid(preset: str, seeds: int, out: Path, epochs=None, heal_epochs=None, device="auto", data_dir=None,
              train_opts=None):
    """(steps, notes): per seed, train every row, then reduce (and heal) the baseline to each train-time
    row's parameter count; notes for the report about rows that get no post-hoc twin."""
    runs = out / "runs"
    steps, notes, sels = [], [], {}
    for seed in range(seeds):
        extra = seed_settings(seed, runs, train_opts, epochs, device, data_dir)
        trained = {row: train_step(preset, dict(row.opts), f"{row.id}-{row.slug}-s{seed}", extra)
                   for row in GRIDS[preset]}
        steps += trained.values()
        base_row = next(r for r in GRIDS[preset] if r.is_baseline)
        base = trained[base_row]
        made = set()
        for row, st in trained.items():
            if row.is_baseline:
                continue
            if row not in sels:  # the same for every seed: build the models once
                sels[row] = matched_selectors(fit_model(base.cfg.model, base.cfg.dataset),
                                              fit_model(st.cfg.model, st.cfg.dataset))
            sel = sels[row]
            if not sel:
                if seed == 0:
                    notes.append(f"{row.id} ({row.slug}) has no post-hoc twin: its layers hold no fewer "
                                 f"parameters than the baseline's, so a reduction would save nothing.")
                continue
            for method in cut_methods():
                if (tuple(sel), method) in made:  # e.g. half-ffn and lowrank ffn r=0.5 cut to the same ranks:
                    continue                      # one run serves both (a copy would pose as a second seed)
                made.add((tuple(sel), method))
                name = f"{row.id}-posthoc-{method}-s{seed}"
                steps.append(reduce_step(runs, base.name, name, sel, method, seed))
                if heal_epochs or 0:
                    steps.append(heal_step(runs, base.cfg, name, f"{row.id}-posthoc-{method}-heal{heal_epochs}-s{seed}",
                                           heal_epochs, seed))
    return steps, notes
