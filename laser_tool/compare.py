"""Compare finished runs: group them by spec across seeds, test each group against its baseline, and
pair every train-time variant with the baseline reduced post hoc to the same parameter count.

The question is "at this parameter budget, which way of slimming loses least?", and single runs cannot
answer it when the gaps are a few tenths of a percent (the seed said itself some of its gaps were "in
the noise"). So every row carries n, a 95% t-interval and a Welch p-value, and a row with n < 2 says
n/a rather than pretending.

Runs that cannot be compared (no final.json yet, a failed run, unparseable files) are never dropped in
silence: they come back as problem rows with the reason.
"""
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from .errors import UserError

RUN_FILES = ("config.json", "final.json", "model.safetensors", "metrics.jsonl")
STRUCTURED = ("lowrank", "skl", "dyad", "monarch", "btt")
# Settings that change what a run measures besides the model: runs differing here are not seeds of
# one experiment, so they never share a group.
RECIPE_KEYS = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_epochs", "grad_clip",
               "train_subset", "val_size", "label_smoothing", "augment")
# Runs are only tested against a baseline of the same dataset and base architecture.
SECTION_KEYS = ("arch", "image_size", "channels", "num_classes", "patch_size", "dim", "depth", "heads", "dim_head")
PAIR_TOLERANCE = 0.02  # post-hoc and train-time rows "match" within 2% of the variant's parameters


# ---------------------------------------------------------------------------------------------
# statistics


Z95 = 1.959963984540054  # two-sided 95% normal quantile


def summarize(accs, test_size=None) -> dict:
    """n, mean, sample std and a 95% interval of the mean: the t-interval over seeds when n >= 2;
    with one seed only the test set's binomial sampling interval (ci_kind "test-set"), which leaves
    seed-to-seed variation out; None where neither is defined."""
    from scipy.stats import t
    accs = [float(a) for a in accs]
    n = len(accs)
    out = dict(n=n, mean=mean(accs) if n else None, std=None, ci_low=None, ci_high=None, ci_kind=None)
    if n >= 2:
        sd = stdev(accs)
        half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        out.update(std=sd, ci_kind="seeds")
    elif n == 1 and test_size:
        half = Z95 * math.sqrt(accs[0] * (1 - accs[0]) / test_size)
        out.update(ci_kind="test-set")
    else:
        return out
    out.update(ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def diff_halfwidth(a, b, test_a=None, test_b=None):
    """(half-width, kind) of the 95% interval of mean(a) - mean(b): Welch's when both sides have
    n >= 2, else normal with the binomial test-set variance standing in for a single seed's."""
    from scipy.stats import t
    if len(a) >= 2 and len(b) >= 2:
        va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
        if va + vb == 0:
            return 0.0, "seeds"
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        return float(t.ppf(0.975, df)) * math.sqrt(va + vb), "seeds"

    def var(x, size):
        if len(x) >= 2:
            return stdev(x) ** 2 / len(x)
        return mean(x) * (1 - mean(x)) / size if size and x else None
    va, vb = var(a, test_a), var(b, test_b)
    return (None, None) if va is None or vb is None else (Z95 * math.sqrt(va + vb), "test-set")


def welch_p(a, b):
    """Two-sided Welch t-test p-value, or None when either side has n < 2 or both have no spread."""
    from scipy.stats import ttest_ind
    if len(a) < 2 or len(b) < 2:
        return None
    if stdev(a) == 0 and stdev(b) == 0:
        return None  # t is 0/0: nothing to test
    with warnings.catch_warnings():  # scipy warns on near-identical samples; the p it gives is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return None if math.isnan(p) else p


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
    ckpt = path / "model.safetensors"
    if ckpt.exists():  # header only: a corrupt or foreign checkpoint is a problem row, not a number
        from .checkpoint import check_checkpoint
        try:
            check_checkpoint(ckpt)
        except UserError as e:
            return Run(path, "corrupt", f"model.safetensors: {str(e)[:160]}", config, final)
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


def recipe_root(config: dict) -> dict:
    """The config whose training recipe made the weights a run started from (`train --init-from`
    records its source's config under init_source): followed back to the run trained from scratch."""
    while isinstance(config.get("init_source"), dict) and isinstance(config["init_source"].get("config"), dict):
        config = config["init_source"]["config"]
    return config


def _progressive_entries(config) -> tuple:
    """((epoch, ((layer, rank), ...)), ...) of the cuts a progressive run made while training."""
    cuts = (config.get("progressive") or {}).get("cuts") or []
    return tuple((round(float(c.get("epoch", 0)), 4), tuple(sorted((l["name"], int(l["rank_after"]))
                                                                   for l in c.get("layers", []))))
                 for c in cuts)


def describe(config: dict) -> dict:
    """Section (dataset + base architecture), group key, and the parts a label is made of."""
    from .models import ModelSpec
    from .surgery import TARGETS
    s = ModelSpec.from_dict(config["model"]).resolved()
    variant = s.variant
    structured = variant in STRUCTURED
    targets = tuple(sorted(s.targets)) if structured else ()
    blocks = tuple(s.blocks) if structured and s.blocks is not None else None
    reductions = _reduction_entries(config)
    h = config.get("heal")
    heal = h.get("epochs") if isinstance(h, dict) else config.get("heal_epochs")  # fine-tuned after a reduction
    progressive = _progressive_entries(config)
    p = config.get("progressive") or {}
    # Seeds of one progressive plan share a group even where the ranks they reached differ (energy, auto).
    plan = tuple(str(p.get(k)) for k in ("reduce_at", "reduce_to", "layers", "method", "tolerance", "window")) \
        if progressive else None
    # With --keep the budget decides the structure, so the per-variant setting is not part of the key.
    by_setting = s.keep is None
    setting = {"lowrank": s.scale, "skl": s.scale, "dyad": s.n_dyad, "monarch": s.monarch_blocks,
               "btt": s.btt_rank}.get(variant) if by_setting else None
    model_part = (variant, targets, setting, blocks, s.mlp_dim, s.dyad_variant if variant == "dyad" else None,
                  s.keep, s.param if structured else None, s.init if structured else None, plan)
    # A run started from another (healing) is grouped by the recipe that trained the weights it started
    # from; its own few epochs are the `heal` part of the key.
    root = recipe_root(config)
    recipe = tuple((k, root.get(k)) for k in RECIPE_KEYS)
    # Layers touched by the train-time change, as (block, role): what a post-hoc twin must reduce.
    # A narrower (or wider) dense FFN changes both FFN layers of every block.
    if structured:
        roles = {r if r in ("attn-out", "ffn-in", "ffn-out") else "attn-qkv" for t in targets for r in TARGETS[t]}
        layer_set = frozenset((b, r) for b in (blocks or range(s.depth)) for r in roles)
    else:
        layer_set = frozenset((b, r) for b in range(s.depth) for r in ("ffn-in", "ffn-out"))
    reduced = frozenset(layer_role(name) for _, ranks, _ in reductions for name, _ in ranks)
    if progressive:  # layers cut during training count as reduced, for pairing at equal parameters
        reduced |= frozenset(layer_role(name) for _, ranks in progressive for name, _ in ranks)
        layer_set = reduced
    return dict(section=(str(config.get("dataset")),) + tuple(getattr(s, k) for k in SECTION_KEYS),
                base_key=model_part + (recipe,), key=model_part + (recipe, tuple(reductions), heal),
                spec=s, reductions=reductions, reduced_layers=reduced, heal=heal, layer_set=layer_set,
                recipe=dict(recipe), progressive=progressive,
                progressive_at=(config.get("progressive") or {}).get("reduce_at"))


def section_title(section) -> str:
    dataset, arch, image, channels, classes, patch, dim, depth, heads, dim_head = section
    return f"{dataset} / {arch} (dim {dim}, depth {depth}, heads {heads}, patch {patch}, {image}px)"


def _label(d: dict, baseline_mlp) -> str:
    s = d["spec"]
    v = s.variant
    if d["progressive"]:
        text = _progressive_label(d)
    elif v is None:
        text = "baseline" if s.mlp_dim == baseline_mlp else f"dense mlp {s.mlp_dim}"
    elif v == "half-ffn":
        text = f"half-ffn (mlp {s.mlp_dim // 2})"
    else:
        text = f"{v} {'+'.join(s.targets)}"
        if s.keep is not None:
            text += f" keep={s.keep:g}" + (f" {s.dyad_variant}" if v == "dyad" and s.dyad_variant != "it" else "")
        elif v in ("monarch", "btt"):
            text += f" blocks={s.monarch_blocks}" if v == "monarch" else f" rank={s.btt_rank}"
        else:
            text += f" n={s.n_dyad}" + (f" {s.dyad_variant}" if s.dyad_variant != "it" else "") if v == "dyad" \
                else f" r={s.scale:g}"
        text += "".join(f" {x}" for x in (s.param, s.init) if x not in ("standard", "default"))
        if s.mlp_dim != baseline_mlp:
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


def _progressive_label(d: dict) -> str:
    """'progressive ffn-in+ffn-out r=10@1' (one cut), '... r=32@1 r=16@2' (annealing), 'progressive auto ...'."""
    roles = "+".join(sorted({layer_role(n)[1] for _, ranks in d["progressive"] for n, _ in ranks}))
    steps = []
    for epoch, ranks in d["progressive"]:
        rs = sorted({r for _, r in ranks})
        steps.append((f"r={rs[0]}" if len(rs) == 1 else f"r={rs[0]}-{rs[-1]}") + f"@{epoch:g}")
    if d["progressive_at"] == "auto":
        return f"progressive auto {roles} " + " ".join(steps)
    return f"progressive {roles} " + " ".join(steps)


def _family(d: dict, is_baseline: bool) -> str:
    if d["heal"]:
        return "healed"
    if d["reductions"]:
        return "post-hoc"
    if d["progressive"]:
        return "progressive"
    if is_baseline:
        return "baseline"
    return "train-time" if d["spec"].variant in STRUCTURED else "narrower-ffn"


# ---------------------------------------------------------------------------------------------
# grouping, baselines, pairing


@dataclass
class Group:
    desc: dict
    runs: list
    label: str = ""
    family: str = ""

    @property
    def accs(self) -> list:
        return [r.acc for r in self.runs]

    @property
    def params(self):
        counts = [r.final.get("params") for r in self.runs if r.final.get("params") is not None]
        return max(set(counts), key=counts.count) if counts else None

    @property
    def test_size(self):
        """Test-set size (the trainer records it in config.json's split)."""
        sizes = [(r.config.get("split") or {}).get("test") for r in self.runs]
        return sizes[0] if sizes and isinstance(sizes[0], int) and sizes[0] > 0 else None


@dataclass
class Comparison:
    rows: list          # one dict per table row; paired post-hoc rows repeat next to each variant
    problems: list      # one dict per run that could not be compared
    notes: list         # sentences the report prints above the table


def _pick_baseline(groups: list, want):
    """The section's reference group: the one holding run `want` if this section has it, else a dense
    unreduced group (the arch's default FFN width first, then the most parameters)."""
    from .models import ARCH_DEFAULTS
    hit = [g for g in groups if want and any(r.name == want or str(r.path) == str(want) for r in g.runs)]
    if hit:
        return hit[0]
    cands = [g for g in groups if g.desc["spec"].variant is None and not g.desc["reductions"] and not g.desc["heal"]
             and not g.desc["progressive"]]
    if not cands:
        return None
    default = lambda g: g.desc["spec"].mlp_dim == ARCH_DEFAULTS[g.desc["spec"].arch]["mlp_dim"]
    return max(cands, key=lambda g: (default(g), g.params or 0, len(g.runs)))


def _pairs(train: Group, candidates: list) -> list:
    """Post-hoc (and progressive) groups reducing the same layers to within PAIR_TOLERANCE of `train`'s
    parameters: the closest one per (method, heal); every progressive plan, after the post-hoc rows."""
    best = {}
    for c in candidates:
        if c.desc["reduced_layers"] != train.desc["layer_set"] or c.params is None or train.params is None:
            continue
        gap = abs(c.params - train.params)
        if gap > PAIR_TOLERANCE * train.params:
            continue
        k = (c.desc["heal"] or 0, c.desc["reductions"][-1][0]) if c.desc["reductions"] else (99, c.label)
        if k not in best or gap < abs(best[k].params - train.params):
            best[k] = c
    return [best[k] for k in sorted(best)]


def _row(g: Group, section: str, base: Group, speed: dict) -> dict:
    st, seeds = summarize(g.accs, g.test_size), [r.config.get("seed") for r in g.runs]
    secs = [r.final.get("train_seconds") for r in g.runs if isinstance(r.final.get("train_seconds"), (int, float))]
    warnings = [f"{r.name}: {w}" for r in g.runs for w in r.warnings]
    if len({r.final.get("params") for r in g.runs}) > 1:
        warnings.append("parameter counts differ between seeds; the most common is shown")
    if len(set(seeds)) < len(seeds):
        warnings.append(f"runs share a seed ({seeds}): they are not independent samples, so n overstates the evidence")
    row = dict(status="ok", section=section, label=g.label, family=g.family, dataset=g.desc["section"][0],
               arch=g.desc["spec"].arch, n=st["n"], seeds=seeds,
               runs=[str(r.path) for r in g.runs], params=g.params, accs=g.accs, acc_mean=st["mean"],
               acc_std=st["std"], acc_ci_low=st["ci_low"], acc_ci_high=st["ci_high"], ci_kind=st["ci_kind"],
               test_size=g.test_size, train_seconds=mean(secs) if secs else None,
               images_per_s=speed.get(id(g)), heal_epochs=g.desc["heal"],
               reduction=[list(e) for e in g.desc["reductions"]], warnings=warnings)
    row.update(_versus(g, base if base is not g else None, "baseline"))
    row.update(_versus(g, None, "paired"), paired_with=None, params_vs_paired=None)
    return row


def _versus(g: Group, other, name: str) -> dict:
    """Difference of means, its 95% half-width (and kind) and the Welch p of g against `other`."""
    if other is None:
        return {f"diff_vs_{name}": None, f"diff_vs_{name}_ci": None, f"diff_vs_{name}_ci_kind": None,
                f"p_vs_{name}": None}
    half, kind = diff_halfwidth(g.accs, other.accs, g.test_size, other.test_size)
    return {f"diff_vs_{name}": mean(g.accs) - mean(other.accs), f"diff_vs_{name}_ci": half,
            f"diff_vs_{name}_ci_kind": kind, f"p_vs_{name}": welch_p(g.accs, other.accs)}


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


def compare_runs(paths, baseline=None, speed=True, device="cpu", speed_batch=256, speed_reps=10) -> Comparison:
    """Group, test and pair the runs found under `paths`; see the module docstring."""
    runs = [read_run(p) for p in find_run_dirs(paths)]
    problems = [dict(status=r.status, run=str(r.path), reason=r.reason) for r in runs if r.status != "complete"]
    notes = []
    sections = {}
    for r in runs:
        if r.status == "complete":
            d = describe(r.config)
            groups = sections.setdefault(d["section"], {})
            groups.setdefault(d["key"], Group(d, [])).runs.append(r)
    if len(sections) > 1:
        notes.append(f"These runs span {len(sections)} dataset/architecture combinations; each is grouped and "
                     f"tested against its own baseline, never across them: "
                     + "; ".join(section_title(s) for s in sections) + ".")
    if baseline and not any(r.name == baseline or str(r.path) == str(baseline) for r in runs if r.status == "complete"):
        raise UserError(f"--baseline {baseline!r} names no complete run among those given; pass a run directory name")
    rows = []
    for sec, by_key in sections.items():
        groups = list(by_key.values())
        title = section_title(sec)
        base = _pick_baseline(groups, baseline)
        if base is None:
            notes.append(f"{title}: no baseline run (dense, unreduced), so no row is tested against a baseline.")
        base_mlp = base.desc["spec"].mlp_dim if base else None
        for g in groups:
            g.family = _family(g.desc, g is base)
            g.label = _label(g.desc, base_mlp)
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
        posthoc = [g for g in groups if g.family in ("post-hoc", "healed") and base is not None
                   and g.desc["base_key"][:-1] == base.desc["base_key"][:-1]]
        progressive = [g for g in groups if g.family == "progressive"]
        paired = set()
        trained = [g for g in groups if g is not base and g.family not in ("post-hoc", "healed", "progressive")]
        # Progressive rows sit under the train-time row of their parameter count, beside its post-hoc
        # twins; one that no train-time row takes stands on its own, with its own post-hoc twins.
        for g in ([base] if base else []) + trained + progressive:
            if id(g) in paired:
                continue
            rows.append(_row(g, title, base, speed_of))
            if g is base:
                continue
            for c in _pairs(g, posthoc + (progressive if g.family != "progressive" else [])):
                paired.add(id(c))
                row = _row(c, title, base, speed_of)
                row.update(_versus(c, g, "paired"), paired_with=g.label, params_vs_paired=c.params - g.params)
                rows.append(row)
        rows += [_row(g, title, base, speed_of) for g in groups
                 if g.family in ("post-hoc", "healed") and id(g) not in paired]
    return Comparison(rows, problems, notes)


def _disambiguate(groups: list) -> None:
    """Groups with the same label differ in their training recipe: name the settings that differ."""
    by_label = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = [k for k in RECIPE_KEYS if len({repr(g.desc["recipe"].get(k)) for g in same}) > 1]
        for i, g in enumerate(same, 1):
            g.label += " [" + (", ".join(f"{k}={g.desc['recipe'].get(k)}" for k in keys) or f"#{i}") + "]"


def compare_rows(runs, baseline=None, speed=True, device="cpu") -> list:
    """Notebook API (`laser_tool.compare_rows`): one dict per table row, then one per run that could not be compared
    (status incomplete | failed | corrupt, with the reason)."""
    c = compare_runs(runs, baseline=baseline, speed=speed, device=device)
    return c.rows + c.problems
