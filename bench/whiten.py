"""Why whitening (SVD-LLM) loses to plain SVD at high compression on the quick model: a diagnosis.

    .venv/bin/python bench/whiten.py --run RUN [--data-dir DIR] [--out bench/results/whiten.json]
    .venv/bin/python bench/whiten.py --tiny --data-dir DIR --out FILE     # smoke test, seconds on CPU

On a trained run (the quick baseline), every attention and FFN layer cut to each budget as the quick frontier
cuts it (`*:all=params:KEEP`, factored), by svd and by whiten, measuring:
  per layer  the relative output error ||(W - W_r) X|| / ||W X|| of the layer alone, on its calibration
             inputs (8 training batches, what whitening minimises) and on held-out inputs (validation
             images, never calibrated on), all inputs from the unreduced model, over all tokens and over
             the CLS token alone (the only token the head reads); also whiten fitted on 4x more
             calibration data, with X^T X damped (GPTQ-style), and with the CLS token weighted as much as
             all other tokens; ||W_r||_2 / ||W||_2 (how much the cut layer can amplify its input)
  end to end validation accuracy and, per layer, the relative error of the layer's output in the cut model
             against the unreduced model's (the compounded error), for svd, whiten with original
             calibration, whiten with sequential calibration (each layer on the inputs of the model whose
             earlier layers are already cut), damped whiten and CLS-weighted whiten
The CLS split assumes the CLS-pooled vit-tiny (token 0 is the CLS token).
Validation images only: nothing here looks at the test set.
"""
import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402
from reduce import TINY_SPEC, train_run  # noqa: E402  (bench/reduce.py: a quickly trained run)

from laser_tool.device import resolve_device  # noqa: E402
from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.models.evaluate import evaluate  # noqa: E402
from laser_tool.models.layers import FactoredLinear, dense_weight  # noqa: E402
from laser_tool.models.surgery import slots  # noqa: E402
from laser_tool.posthoc.calibration import (calibrate_sequentially, calibration_batches,  # noqa: E402
                                            collect_calibration)
from laser_tool.posthoc.decompose import Calib, Decomposition  # noqa: E402
from laser_tool.posthoc.ranks import resolve_rank, select  # noqa: E402
from laser_tool.posthoc.reduce import forward_order, run_data  # noqa: E402
from laser_tool.runs.checkpoint import load_run  # noqa: E402

DAMPS = (0.1,)
TINY = dict(keeps="0.5,0.1", heldout=100, drift_images=50, calib_batches=1, more_batches=2)


def grams(model, names, images, batch=500) -> dict:
    """{name: Calib} (X^T X in float64) of each layer's inputs over `images`, on `model`."""
    return collect_calibration(model, names, [(images[i:i + batch], None) for i in range(0, len(images), batch)],
                               "whiten")


def out_err(W, Wr, G) -> float:
    """||(W - W_r) X^T|| / ||W X^T|| over the inputs X with X^T X = G (the bias cancels)."""
    D = W - Wr
    return float((torch.trace(D @ G @ D.T) / torch.trace(W @ G @ W.T).clamp_min(1e-300)).sqrt())


def damped(calib: Calib, d: float) -> Calib:
    """X^T X + d * mean(diag) * I: GPTQ's dampening, which bounds the whitened cut's gain on directions
    the calibration inputs barely visit."""
    G = calib.xtx
    return Calib(xtx=G + d * G.diagonal().mean() * torch.eye(G.shape[0], dtype=G.dtype), tokens=calib.tokens)


@torch.no_grad()
def token_grams(model, names, images, batch=500) -> dict:
    """{name: (X^T X of the CLS token (position 0), X^T X of the other tokens, tokens per image)}."""
    by_name, got = {s.name: s for s in slots(model)}, {n: [0.0, 0.0, 0] for n in names}

    def hook(name):
        def fn(module, args, out):
            x = args[0].double()
            g = got[name]
            g[0] = g[0] + x[:, 0].T @ x[:, 0]
            rest = x[:, 1:].reshape(-1, x.shape[-1])
            g[1], g[2] = g[1] + rest.T @ rest, x.shape[1]
        return fn
    handles = [by_name[n].module.register_forward_hook(hook(n)) for n in names]
    model.eval()
    try:
        for i in range(0, len(images), batch):
            model(images[i:i + batch].float().div(255))
    finally:
        for h in handles:
            h.remove()
    return {n: tuple(g) for n, g in got.items()}


def cls_equal(tok) -> Calib:
    """The CLS token weighted as much as all the other tokens together (its rows counted T-1 times): the
    head reads the CLS token only, which token-averaged X^T X weights 1/T."""
    G_cls, G_rest, T = tok
    return Calib(xtx=(T - 1) * G_cls + G_rest, tokens=T)


def cut_model(model, plan, decs):
    """A copy of `model` with each planned layer replaced by its rank-r factored layer from `decs`."""
    m = copy.deepcopy(model)
    by_name = {s.name: s for s in slots(m)}
    for name, r in plan.items():
        old = by_name[name].module
        U, V = decs[name].factors(r)
        by_name[name].set(FactoredLinear(U, V, None if old.bias is None else old.bias.detach().clone()))
    return m


@torch.no_grad()
def drift(model, cut, names, images, batch=500) -> dict:
    """Per layer: ||y_cut - y|| / ||y|| of the layer's output on `images`, the cut model against `model`."""
    outs, num, den = {}, dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)

    def hook(key):
        def fn(module, args, out):
            outs[key] = out.double()
        return fn
    handles = [s.module.register_forward_hook(hook((tag, s.name))) for tag, m in (("ref", model), ("cut", cut))
               for s in slots(m) if s.name in num]
    model.eval(), cut.eval()
    try:
        for i in range(0, len(images), batch):
            x = images[i:i + batch].float().div(255)
            model(x), cut(x)
            for n in names:
                num[n] += float((outs["cut", n] - outs["ref", n]).pow(2).sum())
                den[n] += float(outs["ref", n].pow(2).sum())
    finally:
        for h in handles:
            h.remove()
    return {n: round((num[n] / den[n]) ** 0.5, 4) for n in names}


def per_layer(names, W, plan, calib_g, more_g, held_g, tok_g, held_tok):
    rows = {}
    for n in names:
        r, Wn = plan[n], W[n]
        svd = Decomposition(Wn)
        wh = Decomposition(Wn, "whiten", calib_g[n])
        wh_more = Decomposition(Wn, "whiten", more_g[n])
        ev = torch.linalg.eigvalsh(calib_g[n].xtx)
        row = dict(rank=r, shape=list(Wn.shape), cholesky_shift=wh.info.get("cholesky_shift", 0.0),
                   cond_xtx=float(ev[-1] / ev[0].clamp_min(1e-300)))
        wh_damp = Decomposition(Wn, "whiten", damped(calib_g[n], 0.1))
        wh_cls = Decomposition(Wn, "whiten", cls_equal(tok_g[n]))
        G_cls, G_rest, T = held_tok[n]
        row["cls_energy_share"] = round(float(torch.trace(G_cls) / (torch.trace(G_cls) + torch.trace(G_rest))), 4)
        for tag, d in (("svd", svd), ("whiten", wh), ("whiten_more_calib", wh_more), ("whiten_damp0.1", wh_damp),
                       ("whiten_cls_equal", wh_cls)):
            U, V = d.factors(r, torch.float64)
            Wr = U @ V
            row[tag] = dict(calib=round(out_err(Wn, Wr, calib_g[n].xtx), 4),
                            heldout=round(out_err(Wn, Wr, held_g[n].xtx), 4),
                            heldout_cls=round(out_err(Wn, Wr, G_cls), 4),
                            gain=round(float(torch.linalg.matrix_norm(Wr, 2) / torch.linalg.matrix_norm(Wn, 2)), 3))
        rows[n] = row
    return rows


def plot(doc: dict, path: Path) -> None:
    """Per keep: each layer's held-out output error alone (all tokens, and the CLS token), and its compounded
    error in the cut model (all tokens), with each method's validation accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keeps = list(doc["results"])
    fig, axes = plt.subplots(2, len(keeps), figsize=(4.2 * len(keeps), 6.4), squeeze=False, sharey="row")
    for j, k in enumerate(keeps):
        res = doc["results"][k]
        names = list(res["layers"])
        x = range(len(names))
        for tag, style, c in (("svd", "o", "C0"), ("whiten", "s", "C1"), ("whiten_cls_equal", "v", "C4")):
            axes[0][j].plot(x, [res["layers"][n][tag]["heldout"] for n in names], style + "-", c=c, ms=4,
                            label=f"{tag}, all tokens")
            axes[0][j].plot(x, [res["layers"][n][tag]["heldout_cls"] for n in names], style + ":", c=c, ms=4,
                            label=f"{tag}, CLS token")
        for tag, style in (("svd", "o-"), ("whiten", "s-"), ("whiten_sequential", "d-"), ("whiten_damp0.1", "^--"),
                           ("whiten_cls_equal", "v-")):
            e = res["end_to_end"][tag]
            axes[1][j].plot(x, [e["drift"][n] for n in names], style, ms=4,
                            label=f"{tag} (val {100 * e['val_acc']:.1f}%)")
        axes[0][j].set_title(f"keep {k}: layer alone, held-out inputs")
        axes[1][j].set_title(f"keep {k}: layer output in the cut model")
        for row in (0, 1):
            axes[row][j].set_xticks(list(x), [n.replace("blocks.", "b").replace(".attn", "").replace(".ffn", "")
                                              for n in names], rotation=70, fontsize=7)
            axes[row][j].legend(fontsize=7)
            axes[row][j].set_yscale("log")
    axes[0][0].set_ylabel("relative output error")
    axes[1][0].set_ylabel("relative error vs unreduced")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run (default: train a small one, as bench/reduce.py does)")
    ap.add_argument("--data-dir")
    ap.add_argument("--keeps", default="0.5,0.25,0.1")
    ap.add_argument("--heldout", type=int, default=2000, help="validation images for held-out errors")
    ap.add_argument("--drift-images", type=int, default=1000, help="validation images for the compounded error")
    ap.add_argument("--calib-batches", type=int, default=8, help="as reduce's default (128 images each)")
    ap.add_argument("--more-batches", type=int, default=32, help="the larger calibration set")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--plot", help="also draw the figure of docs/whitening.md to this PNG")
    ap.add_argument("--out", help="results file (default bench/results/whiten.json)")
    a = tiny.parse(ap, argv, TINY, "bench/results/whiten.json")
    a.out = a.out or str(Path(__file__).parent / "results" / "whiten.json")
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    dev = resolve_device("cpu")
    tmp = tempfile.TemporaryDirectory()
    run = Path(a.run) if a.run else train_run(Path(tmp.name), a.data_dir, 100, 2, dev, TINY_SPEC)
    model, cfg = load_run(run, dev)
    sp = run_data(cfg, a.data_dir)
    seed = cfg.get("seed", 0)
    batches = calibration_batches(sp, a.calib_batches, seed)
    more = calibration_batches(sp, a.more_batches, seed)
    held = sp.val_x[:a.heldout]
    base_val = evaluate(model, sp.val_x, sp.val_y, 500, dev)[1]
    chosen0 = select(model, ["*:all=params:0.5"], None)
    names = forward_order(model, chosen0)
    W = {n: dense_weight(chosen0[n][0].module).detach().double() for n in names}
    calib_g = collect_calibration(model, names, batches, "whiten")     # exactly what reduce calibrates on
    more_g = collect_calibration(model, names, more, "whiten")
    held_g = grams(model, names, held)
    tok_g = token_grams(model, names, torch.cat([b[0] for b in batches]))
    held_tok = token_grams(model, names, held)
    results = {}
    for keep in [float(k) for k in a.keeps.split(",")]:
        chosen = select(model, [f"*:all=params:{keep:g}"], None)
        plan = {n: resolve_rank(chosen[n][1], *W[n].shape, torch.linalg.svdvals(W[n]), n) for n in names}
        layers = per_layer(names, W, plan, calib_g, more_g, held_g, tok_g, held_tok)
        decs = {"svd": {n: Decomposition(W[n]) for n in names},
                "whiten": {n: Decomposition(W[n], "whiten", calib_g[n]) for n in names},
                "whiten_cls_equal": {n: Decomposition(W[n], "whiten", cls_equal(tok_g[n])) for n in names},
                **{f"whiten_damp{d:g}": {n: Decomposition(W[n], "whiten", damped(calib_g[n], d)) for n in names}
                   for d in DAMPS}}
        cuts = {tag: cut_model(model, plan, d) for tag, d in decs.items()}
        seq = copy.deepcopy(model)
        by_name = {s.name: s for s in slots(seq)}

        def cut_one(name, calib, by_name=by_name, plan=plan):
            old = by_name[name].module
            U, V = Decomposition(W[name], "whiten", calib).factors(plan[name])
            by_name[name].set(FactoredLinear(U, V, None if old.bias is None else old.bias.detach().clone()))
        calibrate_sequentially(seq, names, batches, "whiten", cut_one)
        cuts["whiten_sequential"] = seq
        e2e = {tag: dict(val_acc=evaluate(m, sp.val_x, sp.val_y, 500, dev)[1],
                         drift=drift(model, m, names, held[:a.drift_images]))
               for tag, m in cuts.items()}
        results[f"{keep:g}"] = dict(layers=layers, end_to_end=e2e)
        print(f"keep {keep:g}: " + ", ".join(f"{t} {v['val_acc']:.4f}" for t, v in e2e.items()), flush=True)
    doc = dict(about=__doc__.strip().splitlines()[0], run=str(run), model=cfg["model"], base_val_acc=base_val,
               calib_images=sum(len(b[0]) for b in batches), more_calib_images=sum(len(b[0]) for b in more),
               heldout_images=len(held), val_images=len(sp.val_x), torch=torch.__version__,
               threads=torch.get_num_threads(), seconds=round(time.time() - t0, 1), results=results)
    if a.tiny:
        doc["tiny"] = True
    atomic_write_json(Path(a.out), doc)
    if a.plot:
        plot(doc, Path(a.plot))


if __name__ == "__main__":
    main()
