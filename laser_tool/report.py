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
    "narrower": dict(marker="^", markersize=8, color="tab:green"),
    "post-hoc": dict(marker="s", markersize=7, color="tab:blue"),
    "healed": dict(marker="D", markersize=7, color="tab:purple"),
    "progressive": dict(marker="v", markersize=8, color="tab:orange"),
}
CSV_COLUMNS = ("section", "label", "family", "curve", "baseline", "paired_with", "n", "seeds", "params", "keep",
               "targeted_layers", "acc_mean", "acc_std", "acc_ci_low", "acc_ci_high", "ci_kind", "val_acc_mean",
               "val_acc_std", "metric", "diff_vs_baseline", "diff_vs_baseline_ci", "diff_vs_baseline_ci_kind",
               "p_vs_baseline", "p_vs_baseline_holm", "p_vs_baseline_kind", "diff_vs_paired", "diff_vs_paired_ci",
               "diff_vs_paired_ci_kind", "p_vs_paired", "p_vs_paired_holm", "p_vs_paired_kind", "params_vs_paired",
               "forward_flops", "train_flops", "train_seconds", "images_per_s", "heal_epochs", "test_size",
               "accs", "val_accs", "runs", "warnings")
P_MARK = {"mcnemar": "ᴹ", "paired-t": "ᵗ", "welch": "ᵂ", "z-unpaired": "ᶻ"}
CI_MARK = {"test-set": "†", "paired-images": "‡"}


def _pct(x, digits=2):
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _pp(r, name):
    """'-0.52 ± 0.61' in percentage points; † marks an interval from test-set sampling alone."""
    d, half = r[f"diff_vs_{name}"], r[f"diff_vs_{name}_ci"]
    if d is None:
        return ""
    if half is None:
        return f"{100 * d:+.2f}"
    return f"{100 * d:+.2f} ± {100 * half:.2f}" + CI_MARK.get(r[f"diff_vs_{name}_ci_kind"], "")


def _p(p):
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_holm(r, name):
    """'0.004ᴹ (0.012)': raw p marked with the test that made it, Holm-adjusted p in brackets."""
    p = r[f"p_vs_{name}"]
    if p is None:
        return "n/a"
    return f"{_p(p)}{P_MARK.get(r[f'p_vs_{name}_kind'], '')} ({_p(r.get(f'p_vs_{name}_holm'))})"


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
    metric = getattr(comparison, "metric", "test")
    head = (f"| row | family | n | params | keep | test acc % (mean ± sd) | 95% CI | val acc % | "
            f"Δ {metric} vs baseline (pp) | p (Holm) | Δ {metric} vs train-time (pp) | p (Holm) | train s | "
            f"infer img/s |")
    for sec in sections:
        out += [f"### {sec}", "", head, "|" + "---|" * 14]
        for r in comparison.rows:
            if r["section"] != sec:
                continue
            label = r["label"] if r["paired_with"] is None else f"↳ {r['label']}"
            if r["family"] == "baseline":
                base_d, base_p = "", ""
            elif r.get("baseline") is None:
                base_d, base_p = "no same-recipe baseline", ""
            else:
                base_d, base_p = _pp(r, "baseline"), _p_holm(r, "baseline")
            paired_p = "" if r["paired_with"] is None else _p_holm(r, "paired")
            keep = "" if r.get("keep") is None else f"{r['keep']:.3f}"
            val = _pct(r.get("val_acc_mean"))
            val += "" if r.get("val_acc_std") is None else f" ± {_pct(r['val_acc_std'])}"
            out.append(f"| {label} | {r['family']} | {r['n']} | {_num(r['params'])} | {keep} | {_acc(r)} | {_ci(r)} | "
                       f"{val} | {base_d} | {base_p} | {_pp(r, 'paired')} | {paired_p} | "
                       f"{_num(r['train_seconds'], '{:,.0f}')} | {_num(r['images_per_s'], '{:,.0f}')} |")
        out.append("")
    out += [line for f in footnotes(comparison.rows, metric) for line in (f, "")]
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


def footnotes(rows, metric="test") -> list:
    """The sentences under the tables: what each column means and which tests made the p-values shown."""
    from .stats import P_KINDS
    out = [f"↳ rows: the baseline reduced post hoc to the train-time row above it (same layers, parameters "
           f"within 2%); their Δ and p are against that row. keep: the fraction of the targeted layers' "
           f"parameters a row keeps (the layers that differ from its baseline's). Δ: difference of mean {metric} "
           f"accuracy ± the half-width of its 95% interval. p: two-sided, marked with the test that made it; in "
           f"brackets Holm's adjustment across all comparisons of the table. Each row is tested only against the "
           f"baseline of its own training recipe. val acc: accuracy on the validation split held out of training "
           f"(for a trained row the best epoch's, which chose the checkpoint, so it leans high); test acc is "
           f"measured once, on the test set, and is the unbiased one. train s: training time of the weights a row "
           f"holds (post-hoc rows inherit their baseline's; healed rows add the fine-tune)."]
    kinds = {r.get(f"p_vs_{n}_kind") for r in rows for n in ("baseline", "paired")}
    out += [f"{mark} {P_KINDS[k]}." for k, mark in P_MARK.items() if k in kinds]
    cis = {r.get(f"diff_vs_{n}_ci_kind") for r in rows for n in ("baseline", "paired")} | {r["ci_kind"] for r in rows}
    if "test-set" in cis:
        out.append("† one seed, unpaired: the interval covers only the test set's sampling noise (binomial, normal "
                   "approximation), not seed-to-seed variation, which is usually larger.")
    if "paired-images" in cis:
        out.append("‡ one seed, paired: the interval of the difference over the same images (each image counts "
                   "+1, -1 or 0); it covers test-set noise only, not seed-to-seed variation.")
    if any(r["n"] == 1 for r in rows):
        out.append("One seed measures the test set's noise only; use `--seeds 3` or more for t-tests over seeds.")
    return out


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


def pareto(points) -> list:
    """Indices of the points (x, y) no other point beats: none has x <= and y >= with one strict.
    Lower x (cost) and higher y (accuracy) are better."""
    out = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            out.append(i)
    return sorted(out, key=lambda i: points[i][0])


AXES = {"keep": "fraction of the targeted layers' parameters kept",
        "train_flops": "training FLOPs (≈ 3 × forward × images seen)"}


def _panel(ax, rows, x: str, colours: dict) -> None:
    """One panel: a horizontal band per baseline, a curve per family with its 95% band, the frontier."""
    for b in (r for r in rows if r["family"] == "baseline"):
        if b["acc_ci_low"] is not None:
            ax.axhspan(100 * b["acc_ci_low"], 100 * b["acc_ci_high"], color="black", alpha=0.08, lw=0)
        ax.axhline(100 * b["acc_mean"], color="black", lw=1, ls="--", label=f"baseline {b['label']}"
                   if b["label"] != "baseline" else "baseline (band: 95% CI)")
    pts = [r for r in rows if r["family"] != "baseline" and r.get(x) is not None]
    for curve in dict.fromkeys(r["curve"] for r in pts):
        cs = sorted((r for r in pts if r["curve"] == curve), key=lambda r: r[x])
        xs, ys = [r[x] for r in cs], [100 * r["acc_mean"] for r in cs]
        style = FAMILY_STYLE.get(cs[0]["family"], {})
        line, = ax.plot(xs, ys, marker=style.get("marker", "o"), ms=6, color=colours[curve], label=curve, lw=1.4)
        line.set_gid(f"series:{curve}")
        if all(r["acc_ci_low"] is not None for r in cs):
            ax.fill_between(xs, [100 * r["acc_ci_low"] for r in cs], [100 * r["acc_ci_high"] for r in cs],
                            color=colours[curve], alpha=0.10, lw=0)
    cand = pts + [r for r in rows if r["family"] == "baseline" and r.get(x) is not None]
    front = [cand[i] for i in pareto([(r[x], r["acc_mean"]) for r in cand])]
    if front:
        ax.plot([r[x] for r in front], [100 * r["acc_mean"] for r in front], ls=":", color="black", lw=1,
                marker="o", ms=11, mfc="none", mec="black", label="Pareto frontier", gid="frontier")
    xs = [r[x] for r in cand]
    if x == "keep":
        ax.set_xlim(0, 1.05)  # budgets are fractions: a linear axis reads them directly
    elif xs and min(xs) > 0 and max(xs) / min(xs) > 3:
        ax.set_xscale("log")
    # The view follows the points, not the bands: a two-seed t-band (t = 12.7 at 1 df) would flatten them.
    ys = [100 * r["acc_mean"] for r in cand] + [100 * b["acc_mean"] for b in rows if b["family"] == "baseline"]
    if ys:
        pad = max(0.5, 0.3 * (max(ys) - min(ys)))
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
    if not pts:
        ax.text(0.5, 0.5, f"no row records its {'training FLOPs' if x != 'keep' else 'budget'}",
                transform=ax.transAxes, ha="center", va="center", alpha=0.6)
    ax.set_xlabel(AXES[x])
    ax.set_ylabel("test accuracy %  (bands: 95% CI, clipped to the view)")
    ax.grid(alpha=0.3)


def plot(rows, path=None, title=None):
    """Per section, two panels: test accuracy (%) against the fraction of the targeted layers' parameters
    kept, and against training FLOPs; one curve per family (way of slimming) with its 95% band, the
    Pareto frontier ringed, each baseline a horizontal band. Returns the matplotlib Figure (saved as PNG
    when `path` is given). Uses the Agg canvas directly, so it works headless and leaves a notebook's
    pyplot backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = [r for r in rows if r.get("status", "ok") == "ok" and r["acc_mean"] is not None]
    seen, unique = set(), []
    for r in rows:  # paired post-hoc rows repeat next to each variant; plot each group once
        if (r["section"], r["label"]) not in seen:
            seen.add((r["section"], r["label"]))
            unique.append(r)
    sections = list(dict.fromkeys(r["section"] for r in unique)) or [title or "no complete runs"]
    fig = Figure(figsize=(14, 5.2 * len(sections)), layout="constrained")
    FigureCanvasAgg(fig)
    curves = list(dict.fromkeys(r.get("curve") or r["family"] for r in unique if r["family"] != "baseline"))
    cmap = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive",
            "tab:cyan", "tab:gray"]
    colours = {c: cmap[i % len(cmap)] for i, c in enumerate(curves)}
    for i, sec in enumerate(sections):
        in_sec = [dict(r, curve=r.get("curve") or r["family"]) for r in unique if r["section"] == sec]
        for j, x in enumerate(("keep", "train_flops")):
            ax = fig.add_subplot(len(sections), 2, 2 * i + j + 1)
            ax.set_gid(x)
            _panel(ax, in_sec, x, colours)
            ax.set_title(sec if title is None else f"{title}\n{sec}", fontsize=9)
            if j == 0 and ax.lines:
                ax.legend(fontsize=7, loc="lower right")
    if path is not None:
        fig.savefig(path, format="png", dpi=120)
    return fig


def series_names(fig) -> list:
    """The family curves drawn in each accuracy-vs-keep panel, in order (one list entry per curve)."""
    return [ln.get_gid()[len("series:"):] for ax in fig.axes if ax.get_gid() == "keep" for ln in ax.lines
            if (ln.get_gid() or "").startswith("series:")]


def series_count(fig) -> int:
    """Number of family curves over the accuracy-vs-keep panels (one per family per section)."""
    return len(series_names(fig))
