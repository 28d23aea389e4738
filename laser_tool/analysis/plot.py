"""The comparison figure: each row's test accuracy against its baseline's (pp), over the fraction of the
targeted layers' parameters kept, over training FLOPs and over measured latency (where rows were timed),
one curve per way of slimming, the Pareto frontier ringed, the answer's winners starred."""
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from ..fileio import atomic_write_bytes
from .latency_frontier import SCOPE as LATENCY_SCOPE
from .speed import latency_ms

FAMILY_STYLE = {  # one marker per family, so the plot reads without colour
    "baseline": dict(marker="*", markersize=14, color="black"),
    "train-time": dict(marker="o", markersize=7, color="tab:red"),
    "narrower": dict(marker="^", markersize=8, color="tab:green"),
    "post-hoc": dict(marker="s", markersize=7, color="tab:blue"),
    "healed": dict(marker="D", markersize=7, color="tab:purple"),
    "progressive": dict(marker="v", markersize=8, color="tab:orange"),
    "continued": dict(marker="P", markersize=8, color="tab:gray"),
}

def pareto(points) -> list:
    """Indices of the points (x, y) no other point beats: none has x <= and y >= with one strict.
    Lower x (cost) and higher y (accuracy) are better."""
    out = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            out.append(i)
    return sorted(out, key=lambda i: points[i][0])


AXES = {"keep": "fraction of the targeted layers' parameters kept (log)",
        "train_flops": "training FLOPs of the weights a row holds (log)",
        "latency_ms_b64": "measured latency, ms per batch of 64 as deployed (log)"}
LINEAR_PP = 2.0  # the y axis is linear within ±2 pp of the baseline and logarithmic beyond, so a collapsed
                 # post-hoc cut at -25 pp and the 0.1 pp gaps near the baseline both stay readable
Y_TICKS = (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10)


def _delta(r, base: dict, key="acc_mean"):
    """A row's test accuracy minus its own baseline's, in pp (None without a baseline or a value)."""
    b = base.get(r.get("baseline")) if r["family"] != "baseline" else r
    return None if b is None or r.get(key) is None else 100 * (r[key] - b["acc_mean"])


def _panel(ax, rows, x: str, colours: dict, winners=()) -> None:
    """One panel: each row's test accuracy minus its baseline's (pp, symlog), a curve per family with its
    95% band, the baseline's band around 0, the frontier ringed, the validation-chosen winners starred."""
    base = {r["label"]: r for r in rows if r["family"] == "baseline"}
    for b in base.values():
        if b["acc_ci_low"] is not None:
            ax.axhspan(_delta(b, base, "acc_ci_low"), _delta(b, base, "acc_ci_high"), color="black", alpha=0.08, lw=0)
    ax.axhline(0, color="black", lw=1, ls="--", label="baseline (band: 95% CI)")
    pts = [r for r in rows if r["family"] != "baseline" and r.get(x) and _delta(r, base) is not None]
    for curve in dict.fromkeys(r["curve"] for r in pts):
        cs = sorted((r for r in pts if r["curve"] == curve), key=lambda r: r[x])
        xs = [r[x] for r in cs]
        style = FAMILY_STYLE.get(cs[0]["family"], {})
        line, = ax.plot(xs, [_delta(r, base) for r in cs], marker=style.get("marker", "o"), ms=6,
                        color=colours[curve], label=curve, lw=1.4)
        line.set_gid(f"series:{curve}")
        if all(r["acc_ci_low"] is not None for r in cs):
            ax.fill_between(xs, [_delta(r, base, "acc_ci_low") for r in cs], [_delta(r, base, "acc_ci_high") for r in cs],
                            color=colours[curve], alpha=0.10, lw=0)
    cand = pts + [r for r in base.values() if r.get(x)]
    front = [cand[i] for i in pareto([(r[x], _delta(r, base)) for r in cand])]
    if front:
        ax.plot([r[x] for r in front], [_delta(r, base) for r in front], ls=":", color="black", lw=1,
                marker="o", ms=11, mfc="none", mec="black", label="Pareto frontier", gid="frontier")
    won = [r for r in pts if r["label"] in winners]
    if won:
        ax.plot([r[x] for r in won], [_delta(r, base) for r in won], ls="none", marker="*", ms=16, mfc="gold",
                mec="black", label="winner (chosen on validation)", gid="winners")
    if cand and min(r[x] for r in cand) > 0:
        ax.set_xscale("log")
        if x == "keep":  # the budgets themselves as ticks
            ticks = sorted({round(r[x], 2) for r in cand})
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
        if x == "latency_ms_b64":  # milliseconds read plainly, not as powers of ten
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_yscale("symlog", linthresh=LINEAR_PP)
    ax.yaxis.set_major_locator(FixedLocator(Y_TICKS))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+g}" if v else "0"))
    if not pts:
        what = {"keep": "budget", "train_flops": "training FLOPs", "latency_ms_b64": "latency"}[x]
        ax.text(0.5, 0.5, f"no row records its {what}",
                transform=ax.transAxes, ha="center", va="center", alpha=0.6)
    ax.set_xlabel(AXES[x])
    ax.set_ylabel(f"test accuracy − baseline, pp (linear within ±{LINEAR_PP:g}, log beyond)")
    ax.grid(alpha=0.3, which="both")


def plot(rows, path=None, title=None, winners=()):
    """Per section (and per training length, when the rows have several), two or three panels: each row's
    test accuracy minus its baseline's (pp) against the fraction of the targeted layers' parameters kept,
    against training FLOPs and (where rows were timed) against batch-64 latency, all on log axes; one curve
    per family (way of slimming) with its 95% band, the Pareto frontier ringed, the rows labelled in
    `winners` (the answer's, chosen on validation) starred. Returns the matplotlib Figure (written
    atomically as PNG when `path` is given). Uses the Agg canvas directly, so it works headless and leaves
    a notebook's pyplot backend alone."""
    rows = [dict(r, latency_ms_b64=latency_ms(r)) for r in rows
            if r.get("status", "ok") == "ok" and r["acc_mean"] is not None]
    seen, unique = set(), []
    for r in rows:  # paired post-hoc rows repeat next to each variant; plot each group once
        if (r["section"], r["label"]) not in seen:
            seen.add((r["section"], r["label"]))
            unique.append(r)
    # One row of panels per section, and per training length when the rows have several (epochs grid).
    timed = len({r.get("length") for r in unique if r.get("length") is not None}) > 1
    panel_of = lambda r: (r["section"], r.get("length") if timed else None)
    order = {sec: i for i, sec in enumerate(dict.fromkeys(r["section"] for r in unique))}
    sections = sorted(dict.fromkeys(map(panel_of, unique)), key=lambda k: (order[k[0]], k[1] or 0)) \
        or [(title or "no complete runs", None)]
    axes = ("keep", "train_flops") + (("latency_ms_b64",) if any(r["latency_ms_b64"] for r in unique) else ())
    fig = Figure(figsize=(7 * len(axes), 5.2 * len(sections)), layout="constrained")
    FigureCanvasAgg(fig)
    curves = list(dict.fromkeys(r.get("curve") or r["family"] for r in unique if r["family"] != "baseline"))
    cmap = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive",
            "tab:cyan", "tab:gray"]
    colours = {c: cmap[i % len(cmap)] for i, c in enumerate(curves)}
    for i, (sec, length) in enumerate(sections):
        in_sec = [dict(r, curve=r.get("curve") or r["family"]) for r in unique if panel_of(r) == (sec, length)]
        name = str(sec) if length is None else f"{sec}, {length} epochs"
        for j, x in enumerate(axes):
            ax = fig.add_subplot(len(sections), len(axes), len(axes) * i + j + 1)
            ax.set_gid(x)
            _panel(ax, in_sec, x, colours, winners)
            ax.set_title(name if title is None else f"{title}\n{name}", fontsize=9)
            if j == 0 and ax.lines:
                ax.legend(fontsize=7, loc="lower right")
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        atomic_write_bytes(path, buf.getvalue())
    return fig


def series_names(fig) -> list:
    """The family curves drawn in each accuracy-vs-keep panel, in order (one list entry per curve)."""
    return [ln.get_gid()[len("series:"):] for ax in fig.axes if ax.get_gid() == "keep" for ln in ax.lines
            if (ln.get_gid() or "").startswith("series:")]


def series_count(fig) -> int:
    """Number of family curves over the accuracy-vs-keep panels (one per family per section)."""
    return len(series_names(fig))


def plot_decided(decided: list, margin: float, path) -> None:
    """The decided answer's comparisons (decided.py), one line each: the per-seed test differences as dots,
    the interval the verdict used as a bar, the estimate as a tick, the equivalence margin shaded."""
    n = len(decided)
    fig = Figure(figsize=(8, 0.75 * n + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, c in enumerate(decided):
        y, dots = n - 1 - i, [100 * d for d in c.get("per_seed") or []]
        ax.plot(dots, [y] * len(dots), "o", ms=4, color="0.35", zorder=3)
        if c.get("ci") and None not in c["ci"]:
            ax.plot([100 * x for x in c["ci"]], [y, y], color="tab:blue", lw=4, alpha=0.6, zorder=2)
        if c.get("estimate") is not None:
            ax.plot([100 * c["estimate"]], [y], "|", color="tab:red", ms=14, mew=2, zorder=4)
        # the comparison's words above its line, across the plot: long labels would squeeze the axis
        where = f"≤ {c['budget']:.3g} ms" if c["scope"] == LATENCY_SCOPE else f"keep {c['budget']:.2g}"
        ax.annotate(f"{where}: {c['a_label']}  vs  {c['b_label']}: {c['verdict'].upper()}",
                    xy=(0.005, y + 0.3), xycoords=("axes fraction", "data"), fontsize=6.5, va="bottom")
    ax.axvspan(-100 * margin, 100 * margin, color="0.9", zorder=0)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks([])
    ax.set_ylim(-0.6, n - 0.1)
    ax.set_xlabel("A - B, test accuracy per confirmation seed (dots), pp; bar: the verdict's interval; red: "
                  "the estimate; grey: the margin", fontsize=7.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
