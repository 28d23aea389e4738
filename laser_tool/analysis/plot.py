"""The comparison figure: accuracy against the fraction of the targeted layers' parameters kept and
against training FLOPs, one curve per way of slimming, the Pareto frontier ringed."""
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..fileio import atomic_write_bytes

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
    Pareto frontier ringed, each baseline a horizontal band. Returns the matplotlib Figure (written
    atomically as PNG when `path` is given). Uses the Agg canvas directly, so it works headless and leaves a notebook's
    pyplot backend alone."""
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
