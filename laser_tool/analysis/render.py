"""Render a Comparison as markdown, CSV or JSON (the figure is plot.py's).

Accuracies are stored as fractions (as in final.json) and shown here in percent; differences are in
percentage points (pp). A number that cannot be computed (n < 2) is printed as n/a, never as 0.
"""
import csv
import io
import json

from .rows import VERSUS
from .speed import latency_ms
from .stats import P_KINDS

CSV_COLUMNS = ("section", "label", "family", "curve", "baseline", "paired_with", "n", "seeds", "params", "keep",
               "targeted_layers", "acc_mean", "acc_std", "acc_ci_low", "acc_ci_high", "ci_kind", "val_acc_mean",
               "val_acc_std", "metric", "diff_vs_baseline", "diff_vs_baseline_ci", "diff_vs_baseline_ci_kind",
               "p_vs_baseline", "p_vs_baseline_holm", "p_vs_baseline_kind", "diff_vs_paired", "diff_vs_paired_ci",
               "diff_vs_paired_ci_kind", "p_vs_paired", "p_vs_paired_holm", "p_vs_paired_kind", "params_vs_paired",
               "forward_flops", "train_flops", "train_seconds", "latency_ms_b1", "latency_ms_b64", "latency_form",
               "heal_epochs", "test_size",
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
    """'0.004ᴹ (0.012)': raw p marked with the test that made it, Holm-adjusted p in brackets (ᶜ: the
    answer's confirmatory Holm, else this table's exploratory one)."""
    p = r[f"p_vs_{name}"]
    if p is None:
        return "n/a"
    mark = "ᶜ" if r.get(f"p_vs_{name}_family") == "confirmatory" else ""
    return f"{_p(p)}{P_MARK.get(r[f'p_vs_{name}_kind'], '')} ({_p(r.get(f'p_vs_{name}_holm'))}{mark})"


def _num(x, fmt="{:,.0f}"):
    return "n/a" if x is None else fmt.format(x)


def _acc(r):
    return _pct(r["acc_mean"]) + ("" if r["acc_std"] is None else f" ± {_pct(r['acc_std'])}")


def _ci(r):
    if r["acc_ci_low"] is None:
        return "n/a"
    return f"[{_pct(r['acc_ci_low'])}, {_pct(r['acc_ci_high'])}]" + ("†" if r["ci_kind"] == "test-set" else "")


def _latency(r) -> str:
    """'0.41 / 9.80 ± 0.12': median ms per batch of 1 and of 64 images, the batch-64 interquartile range, and
    'ᵈ' where the dense multiply-out is the faster form; blank if not measured."""
    lat = r.get("latency") or {}
    b = lat.get("batch") or {}
    if not b:
        return ""
    dense = "ᵈ" if lat.get("form") == "dense multiply-out" else ""
    return (f"{_num(b['1']['median_ms'], '{:.2f}')} / {_num(b['64']['median_ms'], '{:.2f}')} ± "
            f"{_num(b['64']['iqr_ms'], '{:.2f}')}{dense}")


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
            f"latency ms b1 / b64 |")
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
                       f"{_num(r['train_seconds'], '{:,.0f}')} | {_latency(r)} |")
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
    out = [f"↳ rows: the baseline reduced post hoc to the train-time row above it (same layers, parameters "
           f"within 2%); their Δ and p are against that row. keep: the fraction of the targeted layers' "
           f"parameters a row keeps (the layers that differ from its baseline's). Δ: difference of mean {metric} "
           f"accuracy ± the half-width of its 95% interval. p: two-sided, marked with the test that made it; in "
           f"brackets Holm's adjustment across the comparisons of the table (exploratory; ᶜ: a confirmatory "
           f"comparison of the answer, with the answer's Holm p). Each row is tested only against the "
           f"baseline of its own training recipe. val acc: accuracy on the validation split held out of training "
           f"(for a trained row the best epoch's, which chose the checkpoint, so it leans high); test acc is "
           f"measured once, on the test set, and is the unbiased one. train s: training time of the weights a row "
           f"holds (post-hoc rows inherit their baseline's; healed rows add the fine-tune)."]
    timed = next((r["latency"] for r in rows if r.get("latency")), None)
    if timed:
        out.append(f"latency ms b1 / b64: median milliseconds per batch of 1 and of 64 images, ± the batch-64 "
                   f"interquartile range, of the row's model as deployed ({timed['runtime']} where it exports, "
                   f"torch eager otherwise; {timed['threads']} threads, {timed['processor']}): every row timed in "
                   f"the same {timed['rounds']} rounds, in rotated order, so machine load hits all alike; a "
                   f"factored or structured model is also timed multiplied out dense and the faster form is "
                   f"shown (ᵈ: the dense one). results.json's `latency` holds every form's figures.")
    kinds = {r.get(f"p_vs_{n}_kind") for r in rows for n in VERSUS}
    out += [f"{mark} {P_KINDS[k]}." for k, mark in P_MARK.items() if k in kinds]
    cis = {r.get(f"diff_vs_{n}_ci_kind") for r in rows for n in VERSUS} | {r["ci_kind"] for r in rows}
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
        r = dict(r, **latency_fields(r))
        w.writerow([";".join(map(str, r[c])) if isinstance(r[c], list) else ("" if r[c] is None else r[c])
                    for c in CSV_COLUMNS] + ["ok", "", ""])
    for p in comparison.problems:
        w.writerow([""] * len(CSV_COLUMNS) + [p["status"], p["run"], p["reason"]])
    return buf.getvalue()


def latency_fields(r) -> dict:
    """The flat latency columns of a row: batch-1 and batch-64 median ms and the form timed."""
    return dict(latency_ms_b1=latency_ms(r, "1"), latency_ms_b64=latency_ms(r, "64"),
                latency_form=(r.get("latency") or {}).get("form"))


def to_json(comparison, **extra) -> str:
    """results.json: the rows, problems and notes, and `extra` top-level entries (a study's `answer`)."""
    return json.dumps(dict(rows=comparison.rows, problems=comparison.problems, notes=comparison.notes, **extra),
                      indent=2) + "\n"


def render(comparison, fmt: str) -> str:
    return {"md": markdown, "csv": to_csv, "json": to_json}[fmt](comparison)
