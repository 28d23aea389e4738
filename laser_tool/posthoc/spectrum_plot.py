"""The figures of `laser-tool spectrum --plot`: normalised spectra per layer role, and a progressive
run's statistics over training with its cuts marked. Drawn on matplotlib's Agg canvas (headless, and
a notebook's pyplot is left alone), written atomically."""
import io

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..fileio import atomic_write_bytes


def plot_spectra(rows, path) -> None:
    """Normalised spectra (s_i / s_1 against i / max rank), one panel per layer role across blocks."""
    groups = {}
    for r in rows:
        role = r["layer"].split(".", 2)[2] if r["layer"].startswith("blocks.") else r["layer"]  # attn.out, ...
        groups.setdefault(role, []).append(r)
    fig = Figure(figsize=(4 * len(groups), 3.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)
    for ax, (role, rs) in zip(axes[0], groups.items()):
        for r in rs:
            s = torch.tensor(r["singular_values"])
            x = torch.arange(1, len(s) + 1) / len(s)
            ax.semilogy(x, (s / s[0]).clamp_min(1e-12), label=f"{r['layer']} ({r['mp_count']} > MP)")
        ax.set_title(role)
        ax.set_xlabel("index / max rank")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("s_i / s_1")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def plot_over_training(rows, cuts, path, title="") -> None:
    """Stable rank, effective rank and top singular value of each layer against epochs; a dashed
    vertical line at every cut (labelled with the ranks it set)."""
    keys = (("stable_rank", "stable rank"), ("effective_rank", "effective rank"), ("top_sv", "top singular value"))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, squeeze=False)
    for ax, (key, name) in zip(axes[0], keys):
        for layer in layers:
            pts = [(r["epoch"], r[key]) for r in rows if r["layer"] == layer]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=layer)
        for c in cuts:
            ax.axvline(c["epoch"], color="black", linestyle="--", linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for c in cuts:
        ranks = sorted({l["rank_after"] for l in c["layers"]})
        rtext = f"r={ranks[0]}" if len(ranks) == 1 else f"r={ranks[0]}-{ranks[-1]}"
        axes[0][0].annotate(f"cut {rtext}", (c["epoch"], 1), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=7)
    axes[0][-1].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
