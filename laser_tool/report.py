"""Render a Comparison: markdown, CSV or JSON tables, and the accuracy-vs-parameters plot.

Accuracies are stored as fractions (as in final.json) and shown here in percent; differences are in
percentage points (pp). A number that cannot be computed (n < 2) is printed as n/a, never as 0.
"""
import csv
import io
import json

FAMILY_STYLE = {  # one marker per family, so the plot reads without colour
    "baseline": dict(marker="*", markersize=14, color="black"),
    "train-time": dict(marker="o", markersize=7, color="tab:red"),
    "narrower-ffn": dict(marker="^", markersize=8, color="tab:green"),
    "post-hoc": dict(marker="s", markersize=7, color="tab:blue"),
    "healed": dict(marker="D", markersize=7, color="tab:purple"),
    "progressive": dict(marker="v", markersize=8, color="tab:orange"),
}
CSV_COLUMNS = ("section", "label", "family", "paired_with", "n", "seeds", "params", "acc_mean", "acc_std",
               "acc_ci_low", "acc_ci_high", "ci_kind", "diff_vs_baseline", "diff_vs_baseline_ci",
               "diff_vs_baseline_ci_kind", "p_vs_baseline", "diff_vs_paired", "diff_vs_paired_ci",
               "diff_vs_paired_ci_kind", "p_vs_paired", "params_vs_paired", "train_seconds", "images_per_s",
               "heal_epochs", "test_size", "accs", "runs", "warnings")


def _pct(x, digits=2):
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _pp(r, name):
    """'-0.52 ± 0.61' in percentage points; † marks an interval from test-set sampling alone."""
    d, half = r[f"diff_vs_{name}"], r[f"diff_vs_{name}_ci"]
    if d is None:
        return ""
    if half is None:
        return f"{100 * d:+.2f}"
    return f"{100 * d:+.2f} ± {100 * half:.2f}" + ("†" if r[f"diff_vs_{name}_ci_kind"] == "test-set" else "")


def _p(p):
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _num(x, fmt="{:,.0f}"):
    return "n/a" if x is None else fmt.format(x)


def _acc(r):
    return _pct(r["acc_mean"]) + ("" if r["acc_std"] is None else f" ± {_pct(r['acc_std'])}")


def _ci(r):
    if r["acc_ci_low"] is None:
        return "n/a"
    return f"[{_pct(r['acc_ci_low'])}, {_pct(r['acc_ci_high'])}]" + ("†" if r["ci_kind"] == "test-set" else "")


def markdown(comparison, commands=None) -> str:
    """The comparison as markdown: notes, one table per section, then runs not compared.
    `commands` maps a run directory name to the commands that reproduce it (the study passes these)."""
    out = []
    if comparison.notes:
        out += [f"> {n}" for n in comparison.notes] + [""]
    sections = []
    for r in comparison.rows:
        if r["section"] not in sections:
            sections.append(r["section"])
    head = ("| row | family | n | params | test acc % (mean ± sd) | 95% CI | Δ vs baseline (pp) | p | "
            "Δ vs train-time (pp) | p | train s | infer img/s |")
    for sec in sections:
        out += [f"### {sec}", "", head, "|" + "---|" * 12]
        for r in comparison.rows:
            if r["section"] != sec:
                continue
            label = r["label"] if r["paired_with"] is None else f"↳ {r['label']}"
            base_p = "" if r["family"] == "baseline" else _p(r["p_vs_baseline"])
            paired_p = "" if r["paired_with"] is None else _p(r["p_vs_paired"])
            out.append(f"| {label} | {r['family']} | {r['n']} | {_num(r['params'])} | {_acc(r)} | {_ci(r)} | "
                       f"{_pp(r, 'baseline')} | {base_p} | {_pp(r, 'paired')} | {paired_p} | "
                       f"{_num(r['train_seconds'], '{:,.0f}')} | {_num(r['images_per_s'], '{:,.0f}')} |")
        out.append("")
    out.append("↳ rows: the baseline reduced post hoc (or a progressive run, cut while training) to the "
               "train-time row above it (same layers, parameters within 2%); their Δ and p are against that row. Δ: difference of mean test accuracy ± the "
               "half-width of its 95% interval (Welch's, over seeds). p: two-sided Welch t-test, n/a where either "
               "side has fewer than 2 seeds. train s: training time of the weights a row holds (post-hoc rows "
               "inherit their baseline's; healed rows add the fine-tune). Post-hoc rows are cut from the "
               "baseline's own seeds, so against the baseline they are paired samples; Welch ignores that "
               "pairing and is conservative there.")
    if any(r["ci_kind"] == "test-set" for r in comparison.rows):
        out.append("† one seed: the interval covers only the test set's sampling noise (binomial, normal "
                   "approximation), not seed-to-seed variation, which is usually larger; use 2 or more seeds "
                   "for t-intervals and Welch p-values.")
    warnings = list(dict.fromkeys((r["label"], w) for r in comparison.rows for w in r["warnings"]))
    if warnings:
        out += ["", "Warnings:"] + [f"- {label}: {w}" for label, w in warnings]
    if comparison.problems:
        out += ["", "Runs not compared:"] + [f"- `{p['run']}`: {p['status']} ({p['reason']})"
                                             for p in comparison.problems]
    if commands:
        out += ["", "Commands that reproduce each row (one per seed):", ""]
        seen = set()
        for r in comparison.rows:
            if r["label"] in seen:
                continue
            seen.add(r["label"])
            cmds = [c for run in r["runs"] for c in commands.get(run.rstrip("/").rsplit("/", 1)[-1], [])]
            if cmds:
                out.append(f"- **{r['label']}**")
                out += [f"  - `{c}`" for c in cmds]
    return "\n".join(out) + "\n"


def to_csv(comparison) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS + ("status", "run", "reason"))
    for r in comparison.rows:
        w.writerow([";".join(map(str, r[c])) if isinstance(r[c], list) else ("" if r[c] is None else r[c])
                    for c in CSV_COLUMNS] + ["ok", "", ""])
    for p in comparison.problems:
        w.writerow([""] * len(CSV_COLUMNS) + [p["status"], p["run"], p["reason"]])
    return buf.getvalue()


def to_json(comparison) -> str:
    return json.dumps(dict(rows=comparison.rows, problems=comparison.problems, notes=comparison.notes), indent=2) + "\n"


def render(comparison, fmt: str) -> str:
    return {"md": markdown, "csv": to_csv, "json": to_json}[fmt](comparison)


def _layout(pts):
    """{id(row): (x drawn, label x, label y)}. Rows within 1.5% of the panel's parameter span of each
    other (a variant and its post-hoc twins) are drawn side by side, 0.8% of the span apart, best
    accuracy leftmost, with their labels stacked in the same order to the right, so none hides
    another; the table has the exact counts."""
    xs = [r["params"] for r in pts]
    span = (max(xs) - min(xs)) or max(xs)
    ys = [100 * v for r in pts for v in (r["acc_ci_low"], r["acc_ci_high"], r["acc_mean"]) if v is not None]
    dy = 0.05 * ((max(ys) - min(ys)) or 1.0)
    out, done = {}, set()
    for r in sorted(pts, key=lambda r: r["params"]):
        if id(r) in done:
            continue
        near = sorted((q for q in pts if id(q) not in done and abs(q["params"] - r["params"]) <= 0.015 * span),
                      key=lambda q: -q["acc_mean"])
        xs = [r["params"] + (k - (len(near) - 1) / 2) * 0.008 * span for k in range(len(near))]
        top = 100 * near[0]["acc_mean"]
        for k, q in enumerate(near):
            done.add(id(q))
            out[id(q)] = (xs[k], xs[-1] + 0.012 * span, top - k * dy)
    return out


def plot(rows, path=None, title=None):
    """Test accuracy (%) against parameter count, 95% CI error bars, one series per family, one panel
    per section. Returns the matplotlib Figure (saved as PNG when `path` is given). Uses the Agg
    canvas directly, so it works headless and leaves a notebook's pyplot backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = [r for r in rows if r.get("status", "ok") == "ok" and r["acc_mean"] is not None and r["params"]]
    seen, unique = set(), []
    for r in rows:  # paired post-hoc rows repeat next to each variant; plot each group once
        if (r["section"], r["label"]) not in seen:
            seen.add((r["section"], r["label"]))
            unique.append(r)
    sections = list(dict.fromkeys(r["section"] for r in unique)) or [title or "no complete runs"]
    fig = Figure(figsize=(8 * len(sections), 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    for i, sec in enumerate(sections):
        ax = fig.add_subplot(1, len(sections), i + 1)
        in_sec = [r for r in unique if r["section"] == sec]
        where = _layout(in_sec) if in_sec else {}
        for family, style in FAMILY_STYLE.items():
            pts = [r for r in in_sec if r["family"] == family]
            if not pts:
                continue
            yerr = [0 if r["acc_ci_low"] is None else 100 * (r["acc_mean"] - r["acc_ci_low"]) for r in pts]
            ax.errorbar([where[id(r)][0] for r in pts], [100 * r["acc_mean"] for r in pts], yerr=yerr,
                        linestyle="none", capsize=3, label=family, **style)
            for r in pts:
                x, tx, ty = where[id(r)]
                ax.annotate(r["label"], (x, 100 * r["acc_mean"]), xytext=(tx, ty), fontsize=6.5, alpha=0.85,
                            va="center", arrowprops=dict(arrowstyle="-", lw=0.4, alpha=0.4))
        ax.set_xlabel("parameters (points with nearly equal counts drawn side by side)")
        ax.set_ylabel("test accuracy %  (error bars: 95% CI)")
        ax.set_title(sec if title is None else f"{title}\n{sec}", fontsize=9)
        ax.grid(alpha=0.3)
        if ax.containers:
            ax.legend(fontsize=8, loc="lower right")
    if path is not None:
        fig.savefig(path, format="png", dpi=130)
    return fig


def series_count(fig) -> int:
    """Number of plotted series (error-bar containers) over all panels."""
    return sum(len(ax.containers) for ax in fig.axes)
