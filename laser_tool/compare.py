"""Compare finished runs: group them by spec across seeds, test each group against the baseline of
its own recipe, and pair every train-time variant with the baseline reduced post hoc to the same
parameter count.

The question is "at this parameter budget, which way of slimming loses least?", and single runs cannot
answer it when the gaps are a few tenths of a percent. So every row carries n, a 95% interval, the
difference to its baseline with a paired interval where the two are paired, and a p-value that says
which test made it (stats.py, paired.py); p-values are Holm-adjusted across each table.

Every setting that changes the model or the recipe is part of a group's key, derived from the
config's spec and training settings rather than listed by hand, so two runs share a group only when
they are seeds of one experiment; a requested reduction (its selectors and rank SPEC, not the ranks
it realised for one seed) is one group. Runs that cannot be compared (no final.json yet, a failed
run, unparseable files) are never dropped in silence: they come back as problem rows with the reason.
"""
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from .errors import UserError
from .stats import Z95, diff_halfwidth, holm, summarize, welch_p  # noqa: F401 (re-exported)

RUN_FILES = ("config.json", "final.json", "model.safetensors", "metrics.jsonl")
STRUCTURED = ("lowrank", "skl", "dyad")
# Recipe of configs written before config.json had a "train" entry (flattened keys only).
RECIPE_KEYS = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_epochs", "grad_clip",
               "train_subset", "val_size", "label_smoothing", "augment")
# TrainConfig fields that do not change what is trained (or are per seed / per run): every other
# field, including ones added later, is part of the recipe.
NOT_RECIPE = {"model", "seed", "device", "out", "name", "eval_batch_size", "compile", "data_dir", "download",
              "dataset", "init_from", "resume", "overwrite"}
# ModelSpec fields that say how a row is slimmed. Every other field (dropout, attn_dropout, ...) is
# recipe: a row is only tested against a baseline that agrees on it.
VARIANT_FIELDS = ("variant", "targets", "scale", "blocks", "n_dyad", "dyad_variant", "mlp_dim", "layers")
# Parts of a recorded reduction step that differ between the seeds of one request.
STEP_PER_RUN = ("parent", "parent_checkpoint", "ranks", "calib", "layers")
# Runs are only tested against a baseline of the same dataset and base architecture.
SECTION_KEYS = ("arch", "image_size", "channels", "num_classes", "patch_size", "dim", "depth", "heads", "dim_head")
PAIR_TOLERANCE = 0.02  # post-hoc and train-time rows "match" within 2% of the variant's parameters
METRICS = ("test", "val")


# ---------------------------------------------------------------------------------------------
# finding and reading runs


@dataclass
class Run:
    path: Path
    status: str                  # complete | incomplete | failed | corrupt
    reason: str = ""
    config: dict = None
    final: dict = None
    warnings: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def acc(self) -> float:
        return float(self.final["test_acc"])

    @property
    def val_acc(self):
        v = self.final.get("val_acc")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def seed(self):
        return self.config.get("seed")


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in RUN_FILES)


def find_run_dirs(paths) -> list:
    """Run directories named directly or found one or two levels below the given folders."""
    found = []
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; pass run directories or folders that hold them")
        if _is_run_dir(p):
            found.append(p)
            continue
        if not p.is_dir():
            raise UserError(f"{p} is not a directory; pass run directories or folders that hold them")
        for child in sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")):
            if _is_run_dir(child):
                found.append(child)
            else:
                found += [g for g in sorted(child.iterdir()) if not g.name.startswith(".") and _is_run_dir(g)]
    unique = list({p.resolve(): p for p in found}.values())
    if not unique:
        where = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
        raise UserError(f"no runs found in {where} (a run directory holds config.json and final.json; "
                        f"looked two levels deep)")
    return unique


def _read_json(path: Path):
    """(object, None) or (None, why)."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} does not parse ({type(e).__name__}: {str(e)[:60]})"


def _check_metrics(path: Path):
    """(epochs logged, problem or None) for a metrics.jsonl."""
    if not path.exists():
        return 0, None
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        return 0, f"metrics.jsonl unreadable ({type(e).__name__})"
    for i, ln in enumerate(lines, 1):
        try:
            json.loads(ln)
        except json.JSONDecodeError:
            return i - 1, f"metrics.jsonl line {i} does not parse"
    return len(lines), None


def read_run(path) -> Run:
    """A Run with its status; never raises for a bad run, the reason goes in Run.reason."""
    path = Path(path)
    cfg_path, fin_path = path / "config.json", path / "final.json"
    if not cfg_path.exists():
        return Run(path, "corrupt", "no config.json")
    config, why = _read_json(cfg_path)
    if why or not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return Run(path, "corrupt", why or "config.json has no model spec")
    try:
        describe(config)
    except (UserError, TypeError, ValueError, KeyError) as e:
        return Run(path, "corrupt", f"config.json model spec is invalid: {e}")
    epochs, metrics_problem = _check_metrics(path / "metrics.jsonl")
    if not fin_path.exists():
        planned = config.get("epochs", "?")
        extra = f"; {metrics_problem}" if metrics_problem else ""
        return Run(path, "incomplete", f"no final.json: training or stopped after {epochs} of {planned} epochs{extra}",
                   config)
    final, why = _read_json(fin_path)
    if why or not isinstance(final, dict):
        return Run(path, "corrupt", why or "final.json is not an object", config)
    if final.get("status", "complete") != "complete":
        detail = final.get("error") or final.get("reason") or ""
        return Run(path, "failed", f"status {final.get('status')!r}" + (f": {detail}" if detail else ""), config, final)
    acc = final.get("test_acc")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 1:
        return Run(path, "corrupt", f"final.json test_acc {acc!r} is not an accuracy in [0, 1]", config, final)
    run = Run(path, "complete", config=config, final=final)
    if metrics_problem:
        run.warnings.append(f"{metrics_problem}; accuracy taken from final.json")
    return run


# ---------------------------------------------------------------------------------------------
# describing a run's spec


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
        out.append((str(e.get("method", "?")), tuple(sorted((k, int(v)) for k, v in ranks.items())),
                    str(e.get("store", "dense"))))
    return out


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


def recipe_of(config: dict) -> dict:
    """The training settings that change what is trained (see NOT_RECIPE), plus the precision used."""
    train = config.get("train")
    if isinstance(train, dict):
        recipe = {k: v for k, v in train.items() if k not in NOT_RECIPE}
        if "amp" in config:
            recipe["amp_used"] = config["amp"]
        return recipe
    return {k: config.get(k) for k in RECIPE_KEYS}


def _json(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def describe(config: dict) -> dict:
    """Section (dataset + base architecture), group key, baseline key, and the parts a label is made of."""
    from .models import ModelSpec
    from .surgery import TARGETS
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
    recipe = recipe_of(config)
    requested = [_requested(e) for e in config.get("reduction") or []]
    # Layers touched by the train-time change, as (block, role): what a post-hoc twin must reduce.
    # A narrower (or wider) dense FFN changes both FFN layers of every block.
    if structured:
        roles = {r if r in ("attn-out", "ffn-in", "ffn-out") else "attn-qkv" for t in targets for r in TARGETS[t]}
        layer_set = frozenset((b, r) for b in (blocks or range(s.depth)) for r in roles)
    else:
        layer_set = frozenset((b, r) for b in range(s.depth) for r in ("ffn-in", "ffn-out"))
    reduced = frozenset(layer_role(name) for _, ranks, _ in reductions for name, _ in ranks)
    return dict(section=(str(config.get("dataset")),) + tuple(getattr(s, k) for k in SECTION_KEYS),
                key=_json([spec, recipe, requested, heal_key]), trained_key=_json([spec, recipe]),
                base_match=_json([{k: v for k, v in spec.items() if k not in VARIANT_FIELDS}, recipe]),
                spec=s, reductions=reductions, reduced_layers=reduced, heal=heal, layer_set=layer_set,
                recipe=recipe, targets=targets)


def section_title(section) -> str:
    dataset, arch, image, channels, classes, patch, dim, depth, heads, dim_head = section
    return f"{dataset} / {arch} (dim {dim}, depth {depth}, heads {heads}, patch {patch}, {image}px)"


def _label(d: dict, baseline_mlp) -> str:
    s = d["spec"]
    v = s.variant
    if v is None:
        text = "baseline" if s.mlp_dim == baseline_mlp or baseline_mlp is None else f"dense mlp {s.mlp_dim}"
    elif v == "half-ffn":
        text = f"half-ffn (mlp {s.mlp_dim // 2})"
    else:
        text = f"{v} {'+'.join(s.targets)}"
        text += f" n={s.n_dyad}" + (f" {s.dyad_variant}" if s.dyad_variant != "it" else "") if v == "dyad" \
            else f" r={s.scale:g}"
        if s.mlp_dim != baseline_mlp and baseline_mlp is not None:
            text += f" mlp {s.mlp_dim}"
        if s.blocks is not None:
            text += f" blocks {','.join(map(str, s.blocks))}"
    for method, ranks, store in d["reductions"]:
        rs = sorted({r for _, r in ranks})
        rtext = f"r={rs[0]}" if len(rs) == 1 else f"r={rs[0]}-{rs[-1]}"
        roles = "+".join(sorted({layer_role(n)[1] for n, _ in ranks}))
        text += f" -> {method} {roles} {rtext}" + (" dense" if store == "dense" else "")
    if d["heal"]:
        text += f" + heal {d['heal']}ep"
    return text


def _family(d: dict, is_baseline: bool) -> str:
    if d["heal"]:
        return "healed"
    if d["reductions"]:
        return "post-hoc"
    if is_baseline:
        return "baseline"
    return "narrower-ffn" if d["spec"].variant in (None, "half-ffn") else "train-time"


def _curve(d: dict, family: str) -> str:
    """The plot's finer family: one curve per way of slimming (method, variant, layers)."""
    if family in ("post-hoc", "healed"):
        return f"{family} {d['reductions'][-1][0]} {roles_text(r for _, r in d['reduced_layers'])}"
    if family == "train-time":
        return f"{d['spec'].variant} {roles_text(r for _, r in d['layer_set'])}"
    return "narrower" if family == "narrower-ffn" else family


# ---------------------------------------------------------------------------------------------
# grouping, baselines, pairing


@dataclass(eq=False)  # compared and hashed by identity
class Group:
    desc: dict
    runs: list
    label: str = ""
    family: str = ""
    base: "Group" = None

    @property
    def accs(self) -> list:
        return [r.acc for r in self.runs]

    @property
    def params(self):
        counts = [r.final.get("params") for r in self.runs if r.final.get("params") is not None]
        return max(set(counts), key=counts.count) if counts else None

    def _split(self, which):
        sizes = [(r.config.get("split") or {}).get(which) for r in self.runs]
        return sizes[0] if sizes and isinstance(sizes[0], int) and sizes[0] > 0 else None

    @property
    def test_size(self):
        """Test-set size (the trainer records it in config.json's split)."""
        return self._split("test")

    @property
    def val_size(self):
        return self._split("val")


@dataclass
class Comparison:
    rows: list          # one dict per table row; paired post-hoc rows repeat next to each variant
    problems: list      # one dict per run that could not be compared
    notes: list         # sentences the report prints above the table
    metric: str = "test"


def _pick_baselines(groups: list, want) -> dict:
    """{base_match: reference group} of a section: per recipe, the group holding run `want` if it has
    that recipe, else a dense unreduced group (the arch's default FFN width first, then the most
    parameters)."""
    from .models import ARCH_DEFAULTS
    default = lambda g: g.desc["spec"].mlp_dim == ARCH_DEFAULTS[g.desc["spec"].arch]["mlp_dim"]
    out = {}
    for g in groups:
        if want and any(r.name == want or str(r.path) == str(want) for r in g.runs):
            out[g.desc["base_match"]] = g
    for g in sorted(groups, key=lambda g: (default(g), g.params or 0, len(g.runs)), reverse=True):
        if g.desc["spec"].variant is None and not g.desc["reductions"] and not g.desc["heal"]:
            out.setdefault(g.desc["base_match"], g)
    return out


def _pairs(train: Group, candidates: list) -> list:
    """Post-hoc groups reducing the same layers to within PAIR_TOLERANCE of `train`'s parameters:
    the closest one per (method, heal)."""
    best = {}
    for c in candidates:
        if c.desc["reduced_layers"] != train.desc["layer_set"] or c.params is None or train.params is None:
            continue
        gap = abs(c.params - train.params)
        if gap > PAIR_TOLERANCE * train.params:
            continue
        k = (c.desc["heal"] or 0, c.desc["reductions"][-1][0])
        if k not in best or gap < abs(best[k].params - train.params):
            best[k] = c
    return [best[k] for k in sorted(best)]


def _lineage(run: Run, by_path: dict) -> str:
    """The trained run this run's weights descend from (following `parent`), as a path string; a
    parent that is not among the runs read stands for itself (also tried beside the run, for studies
    moved as a whole)."""
    seen, cur = set(), run
    while True:
        parent = cur.config.get("parent")
        if not parent:
            return str(cur.path.resolve())
        p = Path(parent)
        nxt = next((by_path[c.resolve()] for c in (p, cur.path.parent / p.name) if c.resolve() in by_path), None)
        if nxt is None or id(nxt) in seen:
            return str(p.resolve())
        seen.add(id(nxt))
        cur = nxt


def _costs(g: Group) -> dict:
    """keep (mean over seeds) and targeted layers against the group's baseline; FLOPs of a forward pass
    and of training the weights it holds (a post-hoc row: its baseline's training, plus any healing)."""
    from . import budget
    out = dict(keep=None, targeted_layers=None, forward_flops=None, train_flops=None)
    try:
        spec = lambda r: r.config["model"]
        if g.base is not None:
            keeps = [budget.keep(spec(r), spec(g.base.runs[0])) for r in g.runs]
            out.update(keep=mean(k for k, _ in keeps), targeted_layers=roles_text(layer_role(n)[1] for n in keeps[0][1])
                       if keeps[0][1] else None)
        r = g.runs[0]
        out["forward_flops"] = budget.forward_flops(spec(r))[0]
        sched, split = r.config.get("schedule") or {}, r.config.get("split") or {}
        steps = sched.get("total_steps")
        images = steps * r.config["batch_size"] if steps and r.config.get("batch_size") else \
            (r.config.get("epochs") or 0) * (split.get("train") or 0)
        trained = dict(spec(r), layers={}) if g.desc["reductions"] else spec(r)
        total = budget.training_flops(trained, images, steps or 0) if images else None
        if total is not None and g.desc["heal"]:
            total += budget.training_flops(spec(r), g.desc["heal"] * (split.get("train") or 0))
        out["train_flops"] = total
    except (UserError, TypeError, ValueError, KeyError, RuntimeError):
        pass  # an unbuildable spec leaves the costs unknown; the row itself still stands
    return out


def _row(g: Group, section: str, speed: dict, roots: dict, metric: str) -> dict:
    st, seeds = summarize(g.accs, g.test_size), [r.seed for r in g.runs]
    val_accs = [r.val_acc for r in g.runs]
    vst = summarize([v for v in val_accs if v is not None], g.val_size)
    secs = [r.final.get("train_seconds") for r in g.runs if isinstance(r.final.get("train_seconds"), (int, float))]
    warnings = [f"{r.name}: {w}" for r in g.runs for w in r.warnings]
    if len({r.final.get("params") for r in g.runs}) > 1:
        warnings.append("parameter counts differ between seeds; the most common is shown")
    if len(set(seeds)) < len(seeds):
        warnings.append(f"runs share a seed ({seeds}): they are not independent samples, so n overstates the evidence")
    if g.base is None:
        warnings.append("no same-recipe baseline: no dense unreduced run shares this row's training recipe "
                        "and base model, so it is not tested")
    row = dict(status="ok", section=section, label=g.label, family=g.family, curve=_curve(g.desc, g.family),
               dataset=g.desc["section"][0], arch=g.desc["spec"].arch, metric=metric, n=st["n"], seeds=seeds,
               runs=[str(r.path) for r in g.runs], roots=[roots[id(r)] for r in g.runs], params=g.params,
               accs=g.accs, acc_mean=st["mean"], acc_std=st["std"], acc_ci_low=st["ci_low"],
               acc_ci_high=st["ci_high"], ci_kind=st["ci_kind"], test_size=g.test_size,
               val_accs=val_accs, val_acc_mean=vst["mean"], val_acc_std=vst["std"], val_size=g.val_size,
               baseline=g.base.label if g.base is not None else None, **_costs(g),
               train_seconds=mean(secs) if secs else None, images_per_s=speed.get(id(g)),
               heal_epochs=g.desc["heal"], reduction=[list(e) for e in g.desc["reductions"]], warnings=warnings)
    row.update(**_no_versus("baseline"), **_no_versus("paired"), paired_with=None, params_vs_paired=None)
    return row


def _no_versus(name: str) -> dict:
    return {f"diff_vs_{name}": None, f"diff_vs_{name}_ci": None, f"diff_vs_{name}_ci_kind": None,
            f"p_vs_{name}": None, f"p_vs_{name}_kind": None, f"p_vs_{name}_holm": None, f"vs_{name}": None}


def _versus(row: dict, other: dict, name: str, metric: str) -> None:
    """Test `row` against `other` on both metrics (json: vs_NAME), the chosen metric flattened."""
    from .paired import versus
    res = {m: versus(row, other, m) for m in METRICS}
    sel = res[metric]
    row.update({f"diff_vs_{name}": sel["diff"], f"diff_vs_{name}_ci": sel["ci"],
                f"diff_vs_{name}_ci_kind": sel["ci_kind"], f"p_vs_{name}": sel["p"],
                f"p_vs_{name}_kind": sel["p_kind"], f"vs_{name}": res})
    if sel["note"] and sel["p_kind"] != "paired-t":
        row["warnings"].append(f"vs {other['label'] if name == 'paired' else 'baseline'}: {sel['note']}")


def _holm(rows: list) -> None:
    """Holm across the distinct comparisons of one table (a post-hoc row repeated beside several
    variants is one comparison against the baseline), for both metrics; the chosen one flattened."""
    for m in METRICS:
        tests = {}
        for r in rows:
            for name, other in (("baseline", r["baseline"]), ("paired", r["paired_with"])):
                if r[f"vs_{name}"] is not None and r[f"vs_{name}"][m]["p"] is not None:
                    tests.setdefault((r["label"], other), []).append(r[f"vs_{name}"][m])
        keys = list(tests)
        for k, adj in zip(keys, holm([tests[k][0]["p"] for k in keys])):
            for t in tests[k]:
                t["p_holm"] = adj
    for r in rows:
        for name in ("baseline", "paired"):
            if r[f"vs_{name}"] is not None:
                r[f"p_vs_{name}_holm"] = r[f"vs_{name}"][r["metric"]].get("p_holm")
        r["p_kind"] = r["p_vs_baseline_kind"]


def measure_images_per_s(run_dir, device="cpu", batch=256, reps=10):
    """Forward-pass images/s of a run's model on a fixed random batch shaped like its inputs (median
    of `reps` timed passes after one warm-up), so every row is timed the same way on the same device."""
    import torch
    from .checkpoint import load_run
    from .models import ModelSpec
    model, config = load_run(run_dir, device)
    s = ModelSpec.from_dict(config["model"]).resolved()
    x = torch.rand(batch, s.channels, s.image_size, s.image_size, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        model(x)
        model(x)  # two warm-ups: allocator and kernel choices settle on the first passes
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]


def compare_runs(paths, baseline=None, speed=True, device="cpu", speed_batch=256, speed_reps=10,
                 metric="test") -> Comparison:
    """Group, test and pair the runs found under `paths`; see the module docstring. `metric` (test | val)
    is the accuracy the differences and p-values of the flat row fields use; json rows carry both."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: choose test or val")
    runs = [read_run(p) for p in find_run_dirs(paths)]
    complete = [r for r in runs if r.status == "complete"]
    problems = [dict(status=r.status, run=str(r.path), reason=r.reason) for r in runs if r.status != "complete"]
    by_path = {r.path.resolve(): r for r in complete}
    roots = {id(r): _lineage(r, by_path) for r in complete}
    notes = []
    sections = {}
    for r in complete:
        d = describe(r.config)
        groups = sections.setdefault(d["section"], {})
        groups.setdefault(d["key"], Group(d, [])).runs.append(r)
    if len(sections) > 1:
        notes.append(f"These runs span {len(sections)} dataset/architecture combinations; each is grouped and "
                     f"tested against its own baseline, never across them: "
                     + "; ".join(section_title(s) for s in sections) + ".")
    if baseline and not any(r.name == baseline or str(r.path) == str(baseline) for r in complete):
        raise UserError(f"--baseline {baseline!r} names no complete run among those given; pass a run directory name")
    rows = []
    for sec, by_key in sections.items():
        groups = list(by_key.values())
        title = section_title(sec)
        bases = _pick_baselines(groups, baseline)
        if not bases:
            notes.append(f"{title}: no baseline run (dense, unreduced), so no row is tested against a baseline.")
        for g in groups:
            g.base = bases.get(g.desc["base_match"])
            g.family = _family(g.desc, g is g.base)
            g.label = _label(g.desc, g.base.desc["spec"].mlp_dim if g.base else None)
        _disambiguate(groups)
        speed_of = {}
        if speed:
            for g in groups:
                for r in g.runs:  # the seeds share an architecture: time the first loadable one
                    try:
                        speed_of[id(g)] = measure_images_per_s(r.path, device, speed_batch, speed_reps)
                        break
                    except (UserError, RuntimeError, KeyError, ValueError) as e:
                        r.warnings.append(f"could not time inference: {str(e)[:120]}")
        made = {id(g): _row(g, title, speed_of, roots, metric) for g in groups}
        for g in groups:
            if g.base is not None and g is not g.base:
                _versus(made[id(g)], made[id(g.base)], "baseline", metric)
        sec_rows, paired = [], set()
        for base in list(dict.fromkeys(bases.values())) + [None]:
            posthoc = [g for g in groups if g.family in ("post-hoc", "healed") and g.base is base and base is not None
                       and g.desc["trained_key"] == base.desc["trained_key"]]
            trained = [g for g in groups if g.base is base and g is not base and g.family not in ("post-hoc", "healed")]
            for g in ([base] if base else []) + trained:
                sec_rows.append(made[id(g)])
                if g is base:
                    continue
                for c in _pairs(g, posthoc):
                    paired.add(id(c))
                    row = dict(made[id(c)], warnings=list(made[id(c)]["warnings"]))
                    row.update(paired_with=g.label, params_vs_paired=c.params - g.params)
                    _versus(row, made[id(g)], "paired", metric)
                    sec_rows.append(row)
            sec_rows += [made[id(g)] for g in groups if g.family in ("post-hoc", "healed") and g.base is base
                         and id(g) not in paired]
        _holm(sec_rows)
        rows += sec_rows
    return Comparison(rows, problems, notes, metric)


def _disambiguate(groups: list) -> None:
    """Groups with the same label differ in their recipe or model settings: name the settings that differ."""
    by_label = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) < 2:
            continue
        spec = lambda g: {**{k: v for k, v in g.desc["spec"].to_dict().items() if k != "layers"}, **g.desc["recipe"]}
        keys = sorted({k for g in same for k in spec(g)})
        keys = [k for k in keys if len({repr(spec(g).get(k)) for g in same}) > 1]
        for i, g in enumerate(same, 1):
            g.label += " [" + (", ".join(f"{k}={spec(g).get(k)}" for k in keys) or f"#{i}") + "]"


def compare_rows(runs, baseline=None, speed=True, device="cpu", metric="test") -> list:
    """Notebook API (`laser_tool.compare_rows`): one dict per table row, then one per run that could not be compared
    (status incomplete | failed | corrupt, with the reason)."""
    c = compare_runs(runs, baseline=baseline, speed=speed, device=device, metric=metric)
    return c.rows + c.problems
