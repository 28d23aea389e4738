"""`laser-tool export`: a thin Click wrapper over export/run.py."""
from pathlib import Path

import click

from ..vocab import EXPORT_FORMATS


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True,
              help="dense: a state dict for the original model class, reduced layers multiplied out; "
                   "onnx: the model as it is (factored layers as two matmuls), checked with onnxruntime.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File to write (.safetensors for dense, .onnx for onnx); an existing one only if export wrote it.")
@click.option("--measure-latency", is_flag=True,
              help="onnx: also time it under onnxruntime on the CPU (batch 1 and 64), beside its dense "
                   "multiply-out where it is factored, and record the figures in RUN/export/latency.json. The dense "
                   "export is full size: it saves no time, only the factored one can.")
@click.option("--threads", type=int, default=2, show_default=True, help="onnxruntime intra-op threads for the timing.")
@click.option("--reps", type=int, default=20, show_default=True,
              help="Timed rounds per batch size (the median and interquartile range are kept).")
@click.option("--keep-bias", is_flag=True,
              help="dense: where a layer's bias has no place in the original (a low-rank layer in place of a "
                   "bias-free projection), keep that layer as nn.Linear with a bias, recorded in the spec.")
def export_cmd(run, fmt, out, measure_latency, threads, reps, keep_bias):
    """Export a finished RUN's model as a deployable file.

    \b
    dense  every low-rank, structured or factored layer multiplied out into the layer it replaced, so
           the state dict loads with strict=True into the original constructor (the seed's ViT-tiny,
           x-transformers' ViTransformerWrapper); the metadata holds that original model spec, so
           laser_tool.load_run(FILE) rebuilds it as well. LASER's same-size use.
    onnx   the model as it is, exported by torch's dynamo exporter with a dynamic batch axis.
    Both are checked against the run's model on a batch (max abs difference of the logits <= 1e-4)
    and written atomically; nothing is written when a check fails.
    """
    from ..export.run import export_run
    info = export_run(run, fmt, out, measure_latency, threads, reps, keep_bias)
    if fmt == "dense":
        layers = ", ".join(l["name"] for l in info["multiplied_out"]) or "none"
        click.echo(f"multiplied out: {layers}")
    else:
        click.echo(f"exporter: {info['exporter']}")
    click.echo(f"max abs difference to the run's model: {info['max_abs_diff']:.2e} (batch of {info['checked_batch']})")
    lat = info.get("latency") or {}
    for name, doc in (("exported", lat), ("dense multiply-out", lat.get("dense"))):
        for b, v in (doc or {}).get("batches", {}).items():
            click.echo(f"{name}: {doc['runtime']}, {lat['threads']} threads, batch {b}: {v['ms']:.3f} ms "
                       f"(IQR {v['iqr_ms']:.3f}; {v['ms_per_image']:.4f} ms/image)")
    if info.get("latency_file"):
        click.echo(f"latency: {info['latency_file']}")
    click.echo(f"wrote {info['out']}")
