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
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from .describe import (NOT_RECIPE, RECIPE_KEYS, SECTION_KEYS, STEP_PER_RUN, STRUCTURED,  # noqa: F401
                       VARIANT_FIELDS, VARIANT_TRAIN_KEYS, _curve, _family, _label, describe, layer_role,
                       recipe_of, roles_text, section_title)
from .errors import UserError
from .runs import RUN_FILES, Run, find_run_dirs, read_run  # noqa: F401 (re-exported)
from .stats import Z95, diff_halfwidth, holm, summarize, welch_p  # noqa: F401 (re-exported)

PAIR_TOLERANCE = 0.02  # post-hoc and train-time rows "match" within 2% of the variant's parameters
METRICS = ("test", "val")


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
    that recipe, else a dense unreduced group (the arch's default FFN width first, then the widest)."""
    from .costs import layer_table
    from .models import ARCH_DEFAULTS
    default = lambda g: g.desc["spec"].mlp_dim == ARCH_DEFAULTS[g.desc["spec"].arch]["mlp_dim"]

    def width(g):  # the unslimmed model is the widest: its Linear layers hold the most parameters
        try:
            return sum(p for p, *_ in layer_table(g.runs[0].config["model"]).values())
        except (UserError, TypeError, ValueError, KeyError, RuntimeError):
            return 0
    out = {}
    for g in groups:
        if want and any(r.name == want or str(r.path) == str(want) for r in g.runs):
            out[g.desc["base_match"]] = g
    for g in sorted(groups, key=lambda g: (default(g), width(g), g.params or 0, len(g.runs)), reverse=True):
        d = g.desc
        if d["spec"].variant is None and not d["reductions"] and not d["heal"] and not d["slims_in_training"]:
            out.setdefault(d["base_match"], g)
    return out


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


def _lineage(run: Run, by_path: dict) -> str:
    """The trained run this run's weights descend from (following `parent` and `init_source`), as a path string; a
    parent that is not among the runs read stands for itself (also tried beside the run, for studies
    moved as a whole)."""
    seen, cur = set(), run
    while True:
        src = cur.config.get("init_source")  # `train --init-from` (healing) started from that run's weights
        parent = cur.config.get("parent") or (src.get("run") if isinstance(src, dict) else None)
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
    from . import costs
    out = dict(keep=None, targeted_layers=None, forward_flops=None, train_flops=None)
    try:
        spec = lambda r: r.config["model"]
        if g.base is not None:
            keeps = [costs.keep(spec(r), spec(g.base.runs[0])) for r in g.runs]
            out.update(keep=mean(k for k, _ in keeps), targeted_layers=roles_text(layer_role(n)[1] for n in keeps[0][1])
                       if keeps[0][1] else None)
        r = g.runs[0]
        out["forward_flops"] = costs.forward_flops(spec(r))[0]
        sched, split = r.config.get("schedule") or {}, r.config.get("split") or {}
        steps = sched.get("total_steps")
        images = steps * r.config["batch_size"] if steps and r.config.get("batch_size") else \
            (r.config.get("epochs") or 0) * (split.get("train") or 0)
        trained = dict(spec(r), layers={}) if g.desc["reductions"] else spec(r)
        total = costs.training_flops(trained, images, steps or 0) if images else None
        if total is not None and g.desc["heal"]:
            total += costs.training_flops(spec(r), g.desc["heal"] * (split.get("train") or 0))
        recorded = r.final.get("train_flops")  # a trainer that changes the model as it trains knows better
        out["train_flops"] = float(recorded) if isinstance(recorded, (int, float)) else total
    except (UserError, TypeError, ValueError, KeyError, RuntimeError):
        pass  # an unbuildable spec leaves the costs unknown; the row itself still stands
    return out


def _train_seconds(run: Run):
    """Training time of the weights a run holds: a run started from another (`train --init-from`, e.g.
    healing) adds the time that made its source's weights (a reduced source carries its baseline's)."""
    own = run.final.get("train_seconds")
    if not isinstance(own, (int, float)):
        return None
    src = run.config.get("init_source")
    if isinstance(src, dict) and src.get("run"):
        try:
            before = json.loads((Path(src["run"]) / "final.json").read_text()).get("train_seconds")
        except (OSError, ValueError, AttributeError):
            before = None
        own += before if isinstance(before, (int, float)) else 0
    return own


def _row(g: Group, section: str, speed: dict, roots: dict, metric: str) -> dict:
    st, seeds = summarize(g.accs, g.test_size), [r.seed for r in g.runs]
    val_accs = [r.val_acc for r in g.runs]
    vst = summarize([v for v in val_accs if v is not None], g.val_size)
    secs = [t for t in map(_train_seconds, g.runs) if t is not None]
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
               baseline=g.base.label if g.base is not None else None, budget=g.runs[0].config.get("budget"),
               **_costs(g),
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
    if sel["note"] and sel["p_kind"] != "paired-t" and "no predictions.safetensors" not in sel["note"]:
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
            g.label = _label(g.desc, g.base.desc["spec"] if g.base else None)
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
            # Rows shown beside a train-time row of the same layers and parameters: the baseline cut post hoc
            # (its own weights) and progressive runs (cut while training).
            posthoc = [g for g in groups if g.base is base and base is not None and (
                g.family == "progressive" or g.family in ("post-hoc", "healed")
                and g.desc["trained_key"] == base.desc["trained_key"])]
            trained = [g for g in groups if g.base is base and g is not base
                       and g.family not in ("post-hoc", "healed", "progressive")]
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
            sec_rows += [made[id(g)] for g in groups if g.family in ("post-hoc", "healed", "progressive")
                         and g.base is base and id(g) not in paired]
        _holm(sec_rows)
        rows += sec_rows
    fell_back = [r for r in rows for n in ("baseline", "paired") if r[f"vs_{n}"] is not None
                 and "no predictions.safetensors" in (r[f"vs_{n}"][metric]["note"] or "")]
    if fell_back:  # one line for them all: typically runs made before predictions were stored
        from .paired import predictions
        missing = sorted({Path(run).name for r in rows for run in r["runs"] if predictions(run)[0] is None})
        notes.append(f"unpaired test: no predictions.safetensors in {len(missing)} run(s) "
                     f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}), so their one-seed "
                     f"comparisons treat the two test scores as independent (ᶻ, conservative) instead of "
                     f"pairing them image by image.")
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
