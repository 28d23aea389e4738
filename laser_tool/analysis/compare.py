"""Compare finished runs: group them by spec across seeds, test each group against the baseline of
its own recipe, and pair every train-time variant with the baseline reduced post hoc to the same
parameter count.

The question is "at this parameter budget, which way of slimming loses least?", and single runs cannot
answer it when the gaps are a few tenths of a percent. So every row carries n, a 95% interval, the
difference to its baseline with a paired interval where the two are paired, and a p-value that says
which test made it (stats.py, paired.py); p-values are Holm-adjusted across each table.
Rows are built by rows.py, rendered by render.py and drawn by plot.py.

Every setting that changes the model or the recipe is part of a group's key, derived from the
config's spec and training settings rather than listed by hand, so two runs share a group only when
they are seeds of one experiment; a requested reduction (its selectors and rank SPEC, not the ranks
it realised for one seed) is one group. Runs that cannot be compared (no final.json yet, a failed
run, unparseable files) are never dropped in silence: they come back as problem rows with the reason.
"""
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models import ARCH_DEFAULTS
from ..runs.reader import Run, find_run_dirs, read_run
from ..vocab import METRICS
from .costs import layer_table
from .describe import POSTHOC_FAMILIES, describe, family, label, section_title
from .lrgrid import choose_lr
from .paired import predictions, versus
from .rows import VERSUS, Group, make_row
from .speed import measure_latencies
from .stats import holm

PAIR_TOLERANCE = 0.02  # post-hoc and train-time rows "match" within 2% of the variant's parameters


@dataclass
class Comparison:
    rows: list          # one dict per table row; paired post-hoc rows repeat next to each variant
    problems: list      # one dict per run that could not be compared
    notes: list         # sentences the report prints above the table
    metric: str = "test"


def collect(paths):
    """(complete runs with their descriptions [(Run, desc)], problem rows) of the runs under `paths`."""
    complete, problems = [], []
    for r in map(read_run, find_run_dirs(paths)):
        if r.status == "complete":
            try:
                complete.append((r, describe(r.config)))
                continue
            except (UserError, TypeError, ValueError, KeyError) as e:
                r.status, r.reason = "corrupt", f"config.json model spec is invalid: {e}"
        problems.append(dict(status=r.status, run=str(r.path), reason=r.reason))
    return complete, problems


# ---------------------------------------------------------------------------------------------
# grouping, baselines, pairing


def pick_baselines(groups: list, want) -> dict:
    """{base_match: reference group} of a section: per recipe, the group holding run `want` if it has
    that recipe, else a dense unreduced group (the arch's default FFN width first, then the widest)."""
    default = lambda g: g.desc["spec"].mlp_dim == ARCH_DEFAULTS.get(g.desc["spec"].arch, {}).get("mlp_dim")

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
        if d["spec"].variant is None and not d["reductions"] and not d["heal"] and not d["slims_in_training"] \
                and not d["continued"] and not d["iso_compute"] and not d["lr_grid"]:
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


def classify(groups: list, baseline, notes: list, title: str) -> dict:
    """Give each group of one section its baseline, family and label; returns {base_match: baseline}."""
    bases = pick_baselines(groups, baseline)
    if not bases:
        notes.append(f"{title}: no baseline run (dense, unreduced), so no row is tested against a baseline.")
    for g in groups:
        g.base = bases.get(g.desc["base_match"])
        g.family = family(g.desc, g is g.base)
        g.label = label(g.desc, g.base.desc["spec"] if g.base else None)
    _disambiguate(groups)
    return bases


# ---------------------------------------------------------------------------------------------
# tests


def _versus(row: dict, other: dict, name: str, metric: str) -> None:
    """Test `row` against `other` on both metrics (json: vs_NAME), the chosen metric flattened."""
    res = {m: versus(row, other, m) for m in METRICS}
    sel = res[metric]
    row.update({f"diff_vs_{name}": sel["diff"], f"diff_vs_{name}_ci": sel["ci"],
                f"diff_vs_{name}_ci_kind": sel["ci_kind"], f"p_vs_{name}": sel["p"],
                f"p_vs_{name}_kind": sel["p_kind"], f"vs_{name}": res})
    if sel["note"] and sel["p_kind"] != "paired-t" and "no predictions.safetensors" not in sel["note"]:
        row["warnings"].append(f"vs {other['label'] if name == 'paired' else 'baseline'}: {sel['note']}")


def _holm(rows: list, confirmatory=None) -> None:
    """Holm across the distinct comparisons of one section's table (a post-hoc row repeated beside several
    variants is one comparison against the baseline), for both metrics; the chosen one flattened.
    `confirmatory` ({(section, {label, label}): Holm p} of the answer's tests): those comparisons carry
    the answer's p on test (marked) and leave the table's exploratory family, adjusted over the rest."""
    confirmatory = confirmatory or {}
    section = rows[0]["section"] if rows else None
    for m in METRICS:
        tests = {}
        for r in rows:
            for name, other in (("baseline", r["baseline"]), ("paired", r["paired_with"])):
                if r[f"vs_{name}"] is not None and r[f"vs_{name}"][m]["p"] is not None:
                    tests.setdefault((r["label"], other), []).append(r[f"vs_{name}"][m])
        mine = {k for k in tests if m == "test" and (section, frozenset(k)) in confirmatory}
        keys = [k for k in tests if k not in mine]
        for k, adj in zip(keys, holm([tests[k][0]["p"] for k in keys])):
            for t in tests[k]:
                t["p_holm"], t["p_family"] = adj, "exploratory"
        for k in mine:
            for t in tests[k]:
                t["p_holm"], t["p_family"] = confirmatory[(section, frozenset(k))], "confirmatory"
    for r in rows:
        for name in VERSUS:
            if r[f"vs_{name}"] is not None:
                r[f"p_vs_{name}_holm"] = r[f"vs_{name}"][r["metric"]].get("p_holm")
                r[f"p_vs_{name}_family"] = r[f"vs_{name}"][r["metric"]].get("p_family")
        r["p_kind"] = r["p_vs_baseline_kind"]


def adopt_confirmatory(comparison, pairs: dict) -> None:
    """Re-adjust each section's exploratory Holm without the answer's confirmatory comparisons, which show
    the answer's own p (one comparison, one p-value, wherever it appears)."""
    for sec in dict.fromkeys(r["section"] for r in comparison.rows):
        _holm([r for r in comparison.rows if r["section"] == sec], pairs)


# ---------------------------------------------------------------------------------------------
# the table


def section_rows(groups: list, bases: dict, made: dict, metric: str) -> list:
    """One section's rows in table order: per baseline, the baseline, each train-time row followed by
    the post-hoc and progressive rows paired with it, then that baseline's unpaired post-hoc rows."""
    sec_rows, paired = [], set()
    for base in list(dict.fromkeys(bases.values())) + [None]:
        # Rows shown beside a train-time row of the same layers and parameters: the baseline cut post hoc
        # (its own weights) and progressive runs (cut while training).
        posthoc = [g for g in groups if g.base is base and base is not None and (
            g.family == "progressive" or g.family in POSTHOC_FAMILIES
            and g.desc["trained_key"] == base.desc["trained_key"])]
        trained = [g for g in groups if g.base is base and g is not base
                   and g.family not in (*POSTHOC_FAMILIES, "progressive")]
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
        sec_rows += [made[id(g)] for g in groups if g.family in (*POSTHOC_FAMILIES, "progressive")
                     and g.base is base and id(g) not in paired]
    return sec_rows


def compare_runs(paths, baseline=None, speed=True, device="cpu", threads: int = 2, metric="test") -> Comparison:
    """Group, test and pair the runs found under `paths`; see the module docstring. `metric` (test | val)
    is the accuracy the differences and p-values of the flat row fields use; json rows carry both."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: choose test or val")
    complete, problems = collect(paths)
    by_path = {r.path.resolve(): r for r, _ in complete}
    roots = {id(r): _lineage(r, by_path) for r, _ in complete}
    notes, sections = [], {}
    for r, d in complete:
        groups = sections.setdefault(d["section"], {})
        groups.setdefault(d["key"], Group(d, [])).runs.append(r)
    if len(sections) > 1:
        notes.append(f"These runs span {len(sections)} dataset/architecture combinations; each is grouped and "
                     f"tested against its own baseline, never across them: "
                     + "; ".join(section_title(s) for s in sections) + ".")
    if baseline and not any(r.name == baseline or str(r.path) == str(baseline) for r, _ in complete):
        raise UserError(f"--baseline {baseline!r} names no complete run among those given; pass a run directory name")
    rows = []
    for sec, by_key in sections.items():
        groups, title = list(by_key.values()), section_title(sec)
        bases = classify(groups, baseline, notes, title)
        groups = choose_lr(groups, notes)
        speed_of = measure_latencies(groups, device, threads) if speed else {}
        made = {id(g): make_row(g, title, speed_of, roots, metric) for g in groups}
        for g in groups:
            if g.base is not None and g is not g.base:
                _versus(made[id(g)], made[id(g.base)], "baseline", metric)
        sec_rows = section_rows(groups, bases, made, metric)
        _holm(sec_rows)
        rows += sec_rows
    notes += unpaired_notes(rows, metric)
    return Comparison(rows, problems, notes, metric)


def unpaired_notes(rows: list, metric: str) -> list:
    """One line for all one-seed comparisons that fell back to an unpaired test (typically runs made
    before predictions were stored)."""
    fell_back = [r for r in rows for n in VERSUS if r[f"vs_{n}"] is not None
                 and "no predictions.safetensors" in (r[f"vs_{n}"][metric]["note"] or "")]
    if not fell_back:
        return []
    missing = sorted({Path(run).name for r in rows for run in r["runs"] if predictions(run)[0] is None})
    return [f"unpaired test: no predictions.safetensors in {len(missing)} run(s) "
            f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}), so their one-seed "
            f"comparisons treat the two test scores as independent (ᶻ, conservative) instead of "
            f"pairing them image by image."]


def compare_rows(runs, baseline=None, speed=True, device="cpu", metric="test") -> list:
    """Notebook API (`laser_tool.compare_rows`): one dict per table row, then one per run that could not be compared
    (status incomplete | failed | corrupt, with the reason)."""
    c = compare_runs(runs, baseline=baseline, speed=speed, device=device, metric=metric)
    return c.rows + c.problems
