"""What a run is, from its config.json: the section it belongs to (dataset and base architecture),
the key of its group (every model and recipe setting, the requested reduction, the healing), the key
of the baseline it must be tested against, and the words a table row is labelled with."""
import json
import re

from ..models import ModelSpec
from ..models.families import FAMILIES, flag_fields
from ..vocab import RECIPE_NEUTRAL, STUDY_LABELS, TARGETS

# Recipe of configs written before config.json had a "train" entry (flattened keys only).
RECIPE_KEYS = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_epochs", "grad_clip",
               "train_subset", "val_size", "label_smoothing", "augment")
# TrainConfig fields left out of a run's recipe: every other field, including ones added later, is part
# of it. The recipe-neutral settings, except the study labels (_study_labels reads them from the recipe),
# plus what differs per seed or is keyed elsewhere: model (the spec), dataset (the section), init_from
# (init_source), and the command switches resume and overwrite, should a config record them.
PER_RUN = {"model", "seed", "dataset", "init_from", "resume", "overwrite"}
NOT_RECIPE = (RECIPE_NEUTRAL - set(STUDY_LABELS)) | PER_RUN
# ModelSpec fields that say how a row is slimmed, besides each structured family's own flags (families/).
# Every other field (dropout, attn_dropout, ...) is recipe: a row is only tested against a baseline that
# agrees on it.
VARIANT_FIELDS = ("variant", "targets", "blocks", "mlp_dim", "dim_head", "layers", "keep", "param", "init")
# Training settings that slim the model while it trains (progressive reduction): part of a row's
# group key, but not of the recipe its baseline must share.
VARIANT_TRAIN_KEYS = ("reduce_at", "reduce_to", "reduce_layers", "reduce_method", "reduce_tolerance", "reduce_window")
# Row families of runs cut after training (healed: cut, then fine-tuned).
POSTHOC_FAMILIES = ("post-hoc", "healed")
# Parts of a recorded reduction step that differ between the seeds of one request.
STEP_PER_RUN = ("parent", "parent_checkpoint", "ranks", "calib", "layers")
# Runs are only tested against a baseline of the same dataset and base architecture.
SECTION_KEYS = ("arch", "image_size", "channels", "num_classes", "patch_size", "dim", "depth", "heads")


def layer_role(name: str):
    """(block, role) of a layer name as `info` prints it; q/k/v/qkv all count as attn-qkv."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn|ffn\d*)\.(\w+)", name)
    if not m:
        return (-1, name)
    block, part, leaf = int(m[1]), m[2], m[3]
    if part == "attn":
        return (block, "attn-out" if leaf == "out" else "attn-qkv")
    return (block, f"ffn-{leaf}")


def roles_text(roles) -> str:
    """'ffn', 'attn', 'all' or the roles joined by '+' for a set of layer roles."""
    roles = set(roles)
    if roles == {"ffn-in", "ffn-out"}:
        return "ffn"
    if roles == {"attn-qkv", "attn-out"}:
        return "attn"
    if roles == {"attn-qkv", "attn-out", "ffn-in", "ffn-out"}:
        return "all"
    return "+".join(sorted(roles))


def _reduction_entries(config) -> list:
    """[(method, ((layer, rank), ...), store)] of a post-hoc run, tolerant of ranks as dict or list."""
    out = []
    for e in config.get("reduction") or []:
        ranks = e.get("ranks") or e.get("layers") or {}
        if isinstance(ranks, list):
            ranks = {r["name"]: r.get("rank", r.get("rank_after")) for r in ranks}
        out.append((method_of(e), tuple(sorted((k, int(v)) for k, v in ranks.items())), str(e.get("store", "dense"))))
    return out


def method_of(step: dict) -> str:
    """A reduction step's method as tables name it: 'svd', or 'svd-alloc' when a rank search under a
    parameter budget chose its per-layer ranks (`search --apply`, the frontier's -alloc families)."""
    method = str(step.get("method", "?"))
    return f"{method}-alloc" if searched_layers(step) is not None else method


def searched_layers(step: dict):
    """The layers a rank search chose ranks for (those it left whole included), or None for a plain cut."""
    request = step.get("request")
    if isinstance(request, dict) and request.get("search") is not None:
        return tuple(request.get("targets") or ())
    return None


def _requested(step: dict) -> dict:
    """What a reduction step asked for (selectors, rank SPEC, method, store, calibration batches, and
    any later setting), without what it realised for this seed; a step that recorded no selectors is
    identified by its ranks. A step may carry `request` (e.g. a search budget) to stand for its selectors."""
    if step.get("request") is not None:
        return {k: v for k, v in step.items() if k not in STEP_PER_RUN + ("selectors", "rank")}
    out = {k: v for k, v in step.items() if k not in STEP_PER_RUN}
    if "selectors" not in step:
        out["ranks"] = step.get("ranks") or step.get("layers")
    return out


def recipe_root(config: dict) -> dict:
    """The config whose training recipe made the weights a run started from (`train --init-from`
    records its source's config under init_source): followed back to the run trained from scratch."""
    while isinstance(config.get("init_source"), dict) and isinstance(config["init_source"].get("config"), dict):
        config = config["init_source"]["config"]
    return config


def recipe_of(config: dict) -> dict:
    """The training settings that change what is trained (see NOT_RECIPE), plus the precision used."""
    train = config.get("train")
    if isinstance(train, dict):
        recipe = {k: v for k, v in train.items() if k not in NOT_RECIPE}
        resolved = config.get("resolved") if isinstance(config.get("resolved"), dict) else {}
        if resolved.get("amp"):  # the precision it ran at (bf16 on a GPU, fp32 on the CPU)
            recipe["amp_used"] = resolved["amp"]
        return recipe
    # A config without the "train" entry (written by hand or by an early version): the flattened keys.
    return {k: config.get(k) for k in RECIPE_KEYS + VARIANT_TRAIN_KEYS}


def _json(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def _study_labels(spec, recipe, requested, heal_key, own):
    """(iso, grid, base recipe, grid key) from the labels a study puts in a config (vocab.STUDY_LABELS).
    A compute-matched twin (`matched_to`) is tested against the baseline of its recipe at the epochs that
    baseline trained; a point of a learning-rate grid (`lr_grid`) against the baseline of the grid's base
    lr, and `grid key` is what the points of one grid share (compare keeps the best on validation)."""
    iso = recipe.get("matched_to") if isinstance(recipe.get("matched_to"), dict) else None
    base_recipe = {k: v for k, v in recipe.items() if k not in VARIANT_TRAIN_KEYS + STUDY_LABELS}
    if iso:
        base_recipe["epochs"] = iso.get("base_epochs")
    grid = (own or recipe).get("lr_grid")
    if not isinstance(grid, dict):
        return iso, None, base_recipe, None
    if not own:
        base_recipe["lr"] = grid.get("base_lr")
    unlr = lambda d: {k: v for k, v in d.items() if k not in ("lr", "lr_grid")} if isinstance(d, dict) else d
    return iso, grid, base_recipe, _json([spec, recipe if own else unlr(recipe), requested, unlr(heal_key), unlr(own)])


def describe(config: dict) -> dict:
    """Section (dataset + base architecture), group key, baseline key, and the parts a label is made of."""
    s = ModelSpec.from_dict(config["model"]).resolved()
    variant = s.variant
    structured = variant not in (None, "half-ffn")
    targets = tuple(sorted(s.targets)) if structured else ()
    blocks = tuple(s.blocks) if structured and s.blocks is not None else None
    reductions = _reduction_entries(config)
    h = config.get("heal")
    heal = h.get("epochs") if isinstance(h, dict) else config.get("heal_epochs")  # fine-tuned after a reduction
    heal_key = {k: v for k, v in h.items() if k != "from_run"} if isinstance(h, dict) else heal
    spec = {k: v for k, v in s.to_dict().items() if k != "layers"}  # layers: ranks realised per seed
    # A run started from another (healing) is grouped by the recipe that trained the weights it started
    # from; its own recipe (a few epochs at a small lr) joins the `heal` part of the key.
    recipe = recipe_of(recipe_root(config))
    own = recipe_of(config) if config.get("init_source") else None
    requested = [_requested(e) for e in config.get("reduction") or []]
    # Layers touched by the train-time change, as (block, role): what a post-hoc twin must reduce.
    # A narrower (or wider) dense FFN changes both FFN layers of every block.
    if structured:
        roles = {r if r in ("attn-out", "ffn-in", "ffn-out") else "attn-qkv" for t in targets for r in TARGETS[t]}
        layer_set = frozenset((b, r) for b in (blocks or range(s.depth)) for r in roles)
    else:
        layer_set = frozenset((b, r) for b in range(s.depth) for r in ("ffn-in", "ffn-out"))
    reduced = frozenset(layer_role(name) for _, ranks, _ in reductions for name, _ in ranks)
    # A search targets every layer it chose for, also those it left whole: they are the row's budget.
    targeted = tuple(n for e in config.get("reduction") or [] for n in (searched_layers(e) or ()))
    reduced |= frozenset(map(layer_role, targeted))
    cuts = (config.get("progressive") or {}).get("cuts") or []  # layers a progressive run cut while training
    reduced |= frozenset(layer_role(l["name"]) for c in cuts for l in c.get("layers", []))
    # Trained on from another run's weights without a cut (a compute control: the baseline + h epochs)
    continued = (own or {}).get("epochs") if config.get("init_source") and not reductions else None
    iso, grid, base_recipe, grid_key = _study_labels(spec, recipe, requested, heal_key, own)
    slimming = {*VARIANT_FIELDS, *flag_fields()}
    return dict(section=(str(config.get("dataset")),) + tuple(getattr(s, k) for k in SECTION_KEYS),
                key=_json([spec, recipe, requested, heal_key, own]), trained_key=_json([spec, recipe]),
                grid_key=grid_key, lr_grid=grid,
                base_match=_json([{k: v for k, v in spec.items() if k not in slimming},
                                  base_recipe]),
                slims_in_training=any(recipe.get(k) for k in ("reduce_at", "reduce_to", "reduce_layers")),
                spec=s, reductions=reductions, reduced_layers=reduced, heal=heal, layer_set=layer_set,
                recipe=recipe, targets=targets, continued=continued, iso_compute=iso, targeted=targeted,
                imported=(recipe_root(config).get("import") or {}).get("weights"))  # `laser-tool import`


def section_title(section) -> str:
    dataset, arch, image, channels, classes, patch, dim, depth, heads = section
    if str(arch).startswith("python:"):  # a factory's model: only the sizes read off it; its patch is not known
        known = "".join(f"{k} {v}, " for k, v in (("dim", dim), ("depth", depth), ("heads", heads)) if v is not None)
        return f"{dataset} / {arch} ({known}{image}px)"
    return f"{dataset} / {arch} (dim {dim}, depth {depth}, heads {heads}, patch {patch}, {image}px)"


def family_words(s) -> str:
    """A structured row's setting: its --keep, else its family's own (families/), then any options."""
    fam = FAMILIES.get(s.variant)
    if fam is None:   # a run of a family that is no longer registered: its name says enough
        return f"keep={s.keep:g}" if getattr(s, "keep", None) is not None else ""
    setting = f"keep={s.keep:g}" if getattr(s, "keep", None) is not None else fam.label(s)
    return setting + (fam.label_options(s) if hasattr(fam, "label_options") else "")


def label(d: dict, base_spec) -> str:
    s = d["spec"]
    v = s.variant
    baseline_mlp = base_spec.mlp_dim if base_spec is not None else None
    if v is None:
        narrowed = [f"{k.replace('_', ' ')} {getattr(s, k)}" for k in ("mlp_dim", "dim_head")
                    if base_spec is not None and getattr(s, k) != getattr(base_spec, k)]
        text = "dense " + " ".join(narrowed).replace("mlp dim", "mlp") if narrowed else "baseline"
        if text == "baseline" and d.get("imported"):  # weights brought in, not trained here
            text = f"imported {str(d['imported']).replace(chr(92), '/').rpartition('/')[2]}"
        if d.get("slims_in_training"):
            r = d["recipe"]
            cut = f"{roles_text(x for _, x in d['reduced_layers'])} {r.get('reduce_to')}@{r.get('reduce_at')}"
            text = f"progressive {cut}" if text == "baseline" else f"progressive {text} {cut}"
    elif v == "half-ffn":
        text = f"half-ffn (mlp {s.mlp_dim // 2})"
    else:
        text = f"{v} {'+'.join(s.targets)} {family_words(s)}".rstrip()
        text += "".join(f" {x}" for x in (getattr(s, "param", "standard"), getattr(s, "init", "default"))
                        if x not in ("standard", "default"))
        if s.mlp_dim != baseline_mlp and baseline_mlp is not None:
            text += f" mlp {s.mlp_dim}"
        if s.blocks is not None:
            text += f" blocks {','.join(map(str, s.blocks))}"
    for method, ranks, store in d["reductions"]:
        rs = sorted({r for _, r in ranks})
        rtext = f"r={rs[0]}" if len(rs) == 1 else f"r={rs[0]}-{rs[-1]}"
        names = [n for n, _ in ranks] + (list(d["targeted"]) if method.endswith("-alloc") else [])
        roles = "+".join(sorted({layer_role(n)[1] for n in names}))
        text += f" -> {method} {roles} {rtext}" + (" dense" if store == "dense" else "")
    if d["heal"]:
        text += f" + heal {d['heal']}ep"
    if d.get("continued"):
        text += f" + {d['continued']} more ep (control)"
    if d.get("iso_compute"):
        text += f" {d['recipe'].get('epochs'):g} ep (iso-compute)"
    if d.get("lr_grid"):
        text += f" lr×{d['lr_grid'].get('mult'):g}"
    return text


def family(d: dict, is_baseline: bool) -> str:
    if d["heal"]:
        return "healed"
    if d.get("continued"):
        return "continued"
    if d["reductions"]:
        return "post-hoc"
    if is_baseline:
        return "baseline"
    if d.get("slims_in_training"):
        return "progressive"
    return "narrower" if d["spec"].variant in (None, "half-ffn") else "train-time"


def curve(d: dict, family: str) -> str:
    """The plot's finer family: one curve per way of slimming (method, variant, layers), the
    compute-matched rows apart."""
    text = _curve(d, family)
    return f"{text} iso-compute" if d.get("iso_compute") else text


def _curve(d: dict, family: str) -> str:
    if family in POSTHOC_FAMILIES:
        return f"{family} {d['reductions'][-1][0]} {roles_text(r for _, r in d['reduced_layers'])}"
    if family == "train-time":
        s = d["spec"]
        extra = "".join(f" {x}" for x in (getattr(s, "param", "standard"), getattr(s, "init", "default"))
                        if x not in ("standard", "default"))
        return f"{s.variant}{extra} {roles_text(r for _, r in d['layer_set'])}"
    if family == "progressive":
        return f"progressive {d['recipe'].get('reduce_method') or 'svd'}"
    return family
