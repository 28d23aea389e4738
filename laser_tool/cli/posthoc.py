"""The post-hoc commands: `reduce`, `search`, `spectrum`. The work lives in posthoc/reduce.py,
search.py and spectrum.py; this file only parses options and prints."""
import csv
import io
import json
from pathlib import Path

import click

from ..errors import UserError
from ..lists import comma_list
from ..runs.schema import read_reduce_report
from ..vocab import CALIB_BATCHES, CALIBRATIONS, SEARCH_CRITERIA, STORES
from .options import RegistryChoice, device_option, reduce_methods

RUN_ARG = click.argument("run", type=click.Path(path_type=Path))
DEVICE = device_option("auto")
BATCH = click.option("--batch-size", type=int, default=500, show_default=True, help="Evaluation batch size.")
DATA = [click.option("--data-dir", help="Where the run's dataset lives (default: the run's own data_dir)."),
        click.option("--dataset", help="Dataset name, for checkpoints whose config names none, or folder:PATH "
                                        "for a run's image folder that has moved.")]
CALIB = click.option("--calib-batches", type=int, default=CALIB_BATCHES, show_default=True,
                     help="Training-split batches (128 images each) for whiten/asvd/fisher.")


def data_options(f):
    for opt in reversed(DATA):
        f = opt(f)
    return f


@click.command("reduce")
@RUN_ARG
@click.option("--layer", "-l", "layers", multiple=True, required=True, metavar="SELECTOR",
              help="Layer(s) to reduce; repeatable. See SELECTOR above.")
@click.option("--rank", "-r", metavar="SPEC", help="Rank for selectors without their own =SPEC.")
@click.option("--method", type=RegistryChoice(reduce_methods), default="svd", show_default=True,
              help="Truncation method (see above).")
@click.option("--store", type=click.Choice(STORES), default="dense", show_default=True,
              help="dense: write the truncated matrix back (LASER's way); factored: rank-r U,V layers.")
@click.option("--out", type=click.Path(path_type=Path), help="New run directory (default RUN-reduced-...).")
@CALIB
@click.option("--calibrate", type=click.Choice(CALIBRATIONS), default="original", show_default=True,
              help="original: every layer calibrated on the unreduced model; sequential: each on the inputs "
                   "of the model with the earlier layers already cut (whiten/asvd/fisher only).")
@DEVICE
@BATCH
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print reduce.json instead of a table.")
def reduce_cmd(run, layers, rank, method, store, out, calib_batches, calibrate, device, batch_size, data_dir,
               dataset, as_json):
    """Cut chosen layers of a trained RUN to a chosen rank; write a new run directory.

    \b
    SELECTOR (matched against the names `laser-tool info` prints):
      blocks.3.ffn.in        one layer by name
      '*.ffn.in', 'blocks.*' shell-style globs (quote them)
      3:fc_in, '*:mlp'       LASER's (block, type); type is one of
                             q k v qkv out fc_in fc_out mlp attn all
                             (vit-tiny fuses q, k, v: use qkv; xt-vit's fc_in matches ffn1 and ffn2)
      SELECTOR=SPEC          a rank for this selector only; later selectors win
    \b
    SPEC: an integer rank | rho:F  int(min(m,n)*F), LASER's fraction of the maximum rank
          | params:F  int(F*m*n/(m+n)), the seed's low-rank rank (fraction F of the parameters)
          | energy:F  the smallest rank keeping fraction F of the squared singular values of W
    \b
    Methods: svd (exact truncated SVD, optimal in Frobenius norm); whiten (SVD-LLM: whitening by
    the Cholesky factor of X^T X, optimal for the layer's output error on calibration inputs);
    asvd (columns scaled by mean|x|^0.5); fisher (FWSVD: rows weighted by summed squared per-sample
    gradients; uses labels). Calibration batches come from the training split only.
    \b
    The input is never modified. The new run holds model.safetensors, config.json (model spec
    plus a "reduction" list of every step), reduce.json (per layer: shape, ranks, params,
    relative Frobenius error, energy kept of W's own spectrum and of the spectrum the method truncates,
    which differ for whiten/asvd/fisher; val/test accuracy before and after), final.json and
    predictions.safetensors (the predicted class of every test and validation image).
    Reduced runs can be reduced again.
    """
    from ..posthoc.reduce import ReduceSettings, reduce_run
    settings = ReduceSettings(rank=rank, method=method, store=store, calib_batches=calib_batches,
                              calibrate=calibrate, device=device, batch_size=batch_size, data_dir=data_dir,
                              dataset=dataset)
    path = reduce_run(run, list(layers), settings, out=out)
    rep = read_reduce_report(path)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(f"{'layer':<22} {'shape':>10} {'rank':>10} {'params':>17} {'rel err':>8} {'energy':>7}")
    for l in rep["layers"]:
        shape, ranks = f"{l['shape'][0]}x{l['shape'][1]}", f"{l['rank_before']}->{l['rank_after']}"
        params = f"{l['params_before']:,}->{l['params_after']:,}"
        click.echo(f"{l['name']:<22} {shape:>10} {ranks:>10} {params:>17} {l['rel_frobenius_error']:>8.4f} "
                   f"{l['energy_kept_truncated']:>7.4f}")
    click.echo(f"val acc {rep['val_acc_before']:.4f} -> {rep['val_acc_after']:.4f}   "
               f"test acc {rep['test_acc_before']:.4f} -> {rep['test_acc_after']:.4f}   "
               f"params {rep['params_before']:,} -> {rep['params_after']:,}")
    click.echo(f"wrote {path}")


@click.command("search")
@RUN_ARG
@click.option("--budget", required=True, metavar="params:F|uniform:F|latency:F",
              help="params:F: keep at most fraction F of the selected layers' parameters (factored form); "
                   "uniform:F: at most what the uniform cut `reduce --rank params:F` of every selected layer "
                   "leaves (the frontier study's budget); latency:F: at most fraction F of the selected layers' "
                   "dense time for a batch of 64 images, each layer timed dense and at each grid rank on this CPU.")
@click.option("--layers", "layers", multiple=True, metavar="GLOB",
              help="Layers to consider (names, globs or B:TYPE as in reduce); repeatable. Default: all.")
@click.option("--method", type=RegistryChoice(reduce_methods), default="svd", show_default=True)
@click.option("--ranks", metavar="SPEC,SPEC,...", help="Rank grid per layer (default params:0.05,0.1,0.2,"
              "0.3,0.4,0.5,0.6,0.8). SPECs as in reduce.")
@click.option("--no-compose", is_flag=True, help="Skip the greedy compose pass after the allocation.")
@click.option("--val-images", type=int, metavar="N",
              help="Search on the first N validation images only (cheaper; default: the whole split).")
@click.option("--criterion", type=click.Choice(SEARCH_CRITERIA), default="acc", show_default=True,
              help="What the allocation's threshold bounds: each layer's validation accuracy drop or loss rise "
                   "(loss ranks layers where a small split shows no accuracy drop).")
@click.option("--apply", is_flag=True, help="Also write the reduced run (factored layers).")
@click.option("--out", type=click.Path(path_type=Path), help="Directory for --apply (default RUN-reduced-...).")
@click.option("--report", type=click.Path(path_type=Path),
              help="Where to write the search JSON (default RUN-search-METHOD-HASH.json beside RUN).")
@CALIB
@DEVICE
@BATCH
@data_options
def search_cmd(run, budget, layers, method, ranks, no_compose, val_images, criterion, apply, out, report,
               calib_batches, device, batch_size, data_dir, dataset):
    """Find per-layer ranks that meet a parameter (or measured latency) budget with the best validation accuracy.

    \b
    1. Sensitivity table: each selected layer alone at each grid rank -> validation accuracy.
       One SVD per layer; the activations entering the layer under test are cached, so each
       candidate re-runs only the network from that layer on (same numbers as a full evaluation).
    2. Allocation by threshold search: for a threshold t, every layer takes its cheapest grid
       rank whose accuracy drop (alone; --criterion loss: loss rise) is <= t; the smallest t
       whose allocation fits the budget wins. The budget counts the selected layers only,
       factored rank r costing r*(m+n)+bias (uniform:F: what the uniform cut params:F leaves).
       It is an upper bound: the chosen ranks use at most it, and the output says how much.
    3. LASER's greedy compose done right: from the last layer to the first, try successively
       lower grid ranks with everything in place; accept a step only if validation accuracy is
       >= the best so far; a layer stops at its first rejected step.
    4. The test set is evaluated once, on the chosen model.
    Only the training (calibration) and validation splits inform the choice (--val-images N:
    the first N validation images only).
    """
    from ..posthoc.search import SearchSettings, search_run
    grid = comma_list(ranks, "--ranks", example="params:0.1,params:0.5") if ranks is not None else None
    settings = SearchSettings(layers=list(layers) or ["*"], method=method, ranks=grid, compose=not no_compose,
                              val_images=val_images, criterion=criterion, calib_batches=calib_batches,
                              device=device, batch_size=batch_size, data_dir=data_dir, dataset=dataset)
    rep = search_run(run, budget, settings, apply, out=out, report=report)
    limit = (f"{rep['budget_ms']:.3f} ms of {rep['chosen']['dense_ms']:.3f} dense" if rep["budget_kind"] == "latency"
             else f"{rep['budget_params']:,.0f}")
    click.echo(f"base val acc {rep['base_val_acc']:.4f}; selected layers {rep['selected_params']:,} params, "
               f"budget {limit}")
    for name, rows in rep["table"].items():
        cells = " ".join(f"{c['rank']}:{c['val_acc']:.3f}" for c in rows)
        click.echo(f"  {name:<22} {cells}")
    a, c = rep["allocation"], rep["chosen"]
    click.echo(f"allocation (t={a['threshold']:.4f}): {a['params']:,} params, val acc {a['val_acc']:.4f}")
    accepted = sum(s["accepted"] for s in rep["compose"]["steps"])
    click.echo(f"compose: {accepted} of {len(rep['compose']['steps'])} steps accepted")
    click.echo(f"chosen: {json.dumps(c['ranks'])}")
    click.echo(f"        {c['params']:,} params, val acc {c['val_acc']:.4f}, test acc {c['test_acc']:.4f}"
               + (f" (searched on {rep['val_images']:,} validation images)" if val_images else ""))
    if rep["budget_kind"] == "latency":
        click.echo(f"budget: {c['latency_ms']:.3f} of at most {rep['budget_ms']:.3f} ms used (the selected layers' "
                   f"measured time for a batch of 64; dense {c['dense_ms']:.3f} ms); {c['params']:,} params "
                   f"({c['fraction_kept']:.1%} of {rep['selected_params']:,})")
    else:
        click.echo(f"budget: {c['params']:,} of at most {rep['budget_params']:,.0f} params used "
                   f"({c['fraction_kept']:.1%} of the selected layers' {rep['selected_params']:,}; "
                   f"the budget is an upper bound)")

    click.echo(f"wrote {rep['report']}" + (f" and {rep['applied']}" if rep.get("applied") else ""))


@click.command("spectrum")
@RUN_ARG
@click.option("--layers", "layers", multiple=True, metavar="GLOB", help="Layers (default all); repeatable.")
@click.option("--ranks", metavar="SPEC,SPEC,...", default="rho:0.05,rho:0.1,rho:0.25,rho:0.5,params:0.5",
              show_default=True, help="Candidate ranks at which to report the energy kept.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the table here instead of stdout.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also draw the spectra into FILE.png.")
@click.option("--over-training", is_flag=True,
              help="A progressive run's per-epoch statistics (from metrics.jsonl) instead; --plot draws them "
                   "against epochs with the cuts marked.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out or --plot file.")
def spectrum_cmd(run, layers, ranks, fmt, out, plot, over_training, overwrite):
    """Per layer: singular values, stable rank, effective rank, energy kept at candidate ranks, and
    the count above a Marchenko-Pastur noise threshold (noise level from the median singular value).

    Reads the weights only; no data needed. CSV has one row per layer (singular values joined by
    spaces in the last column); JSON a list of objects.

    With --over-training (runs trained with --reduce-at): one row per epoch and cut layer, epoch 0
    being initialisation: structural rank, stable rank, effective rank, top singular value. JSON
    also lists the cuts (step, epoch, ranks).
    """
    from ..fileio import check_output_file
    from ..runs.writer import run_root
    for path, what in ((out, "--out"), (plot, "--plot")):  # before the work: never the input, /dev/null, ...
        if path is not None:
            check_output_file(path, inputs=[run_root(run) or run], what=what, replace=overwrite)
    if over_training:
        return _over_training(run, layers, fmt, out, plot)
    from ..models.layers import dense_weight, layer_kind
    from ..models.selectors import match_all
    from ..models.surgery import slots
    from ..posthoc.ranks import parse_spec
    from ..posthoc.spectrum import spectrum_row
    from ..posthoc.spectrum_plot import plot_spectra
    from ..runs.checkpoint import load_run
    specs = [parse_spec(s) for s in comma_list(ranks, "--ranks", example="rho:0.1,params:0.5")]
    model, _ = load_run(run)
    rows = [spectrum_row(s.name, dense_weight(s.module).detach(), layer_kind(s.module), specs)
            for s in match_all(slots(model), layers or ["*"])]
    if fmt == "json":
        text = json.dumps(rows, indent=2) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        keys = ["layer", "d_out", "d_in", "kind", "max_rank", "numerical_rank", "stable_rank", "effective_rank",
                "mp_threshold", "mp_count"]
        w.writerow(keys + [f"{k}@{s}" for s in specs for k in ("rank", "energy")] + ["singular_values"])
        for r in rows:
            e = [v for s in specs for v in ((r["energy_at"][str(s)]["rank"], f"{r['energy_at'][str(s)]['energy']:.6f}")
                                            if str(s) in r["energy_at"] else ("", ""))]
            w.writerow([r[k] if not isinstance(r[k], float) else f"{r[k]:.6g}" for k in keys] + e +
                       [" ".join(f"{v:.6g}" for v in r["singular_values"])])
        text = buf.getvalue()
    _emit(text, out, plot, lambda path: plot_spectra(rows, path))


def _over_training(run, layers, fmt, out, plot):
    """The per-epoch statistics a progressive run recorded, of the layers `--layers` selects (the same
    selector grammar as everywhere, on the recorded layer names)."""
    from ..models.selectors import match_all, named_layer
    from ..posthoc.spectrum import training_spectra
    from ..posthoc.spectrum_plot import plot_over_training
    rows, cuts = training_spectra(run)
    if layers:
        recorded = [named_layer(n) for n in dict.fromkeys(r["layer"] for r in rows)]
        try:
            chosen = {s.name for s in match_all(recorded, layers)}
        except UserError as e:
            raise UserError(f"--layers {' '.join(layers)}: {e} (among the layers {run} recorded)") from None
        rows = [r for r in rows if r["layer"] in chosen]
    keys = ["epoch", "layer", "rank", "stable_rank", "effective_rank", "top_sv"]
    if fmt == "json":
        text = json.dumps(dict(rows=rows, cuts=cuts), indent=2) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(keys)
        for r in rows:
            w.writerow([f"{r[k]:.6g}" if isinstance(r[k], float) else r[k] for k in keys])
        text = buf.getvalue()
    _emit(text, out, plot, lambda path: plot_over_training(rows, cuts, path, title=str(run)))


def _emit(text, out, plot, draw):
    """The table to --out (atomically) or stdout, and the figure to --plot."""
    from ..fileio import atomic_write_text
    if out:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)
    if plot:
        draw(plot)
        click.echo(f"wrote {plot}", err=True)
