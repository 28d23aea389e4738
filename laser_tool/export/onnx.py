"""ONNX export of a model as it is: a factored layer stays two matmuls, a structured layer its own ops.

torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, which needs onnxscript) traces every model
and layer here (vit-tiny, xt-vit; low-rank, SKL, DYAD, Monarch, BTT, factored) with a dynamic batch axis.
The TorchScript exporter (dynamo=False) is the fallback for a model the dynamo exporter cannot trace;
it is not the default because its graph of vit-tiny's masked attention uses EyeLike on booleans, which
onnxruntime 1.32 has no kernel for. Each export is checked under onnxruntime on the CPU against torch on a
batch of another size than the one traced (max abs difference <= TOLERANCE) before anything is written.

onnx, onnxruntime and onnxscript are optional (pip install -e '.[export]'); they are imported only here,
when an ONNX export is asked for.
"""
import contextlib
import io
import json
import warnings

import numpy as np
import torch

from ..errors import UserError

TOLERANCE = 1e-4
INSTALL = "pip install -e '.[export]' (onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2)"
META_WRITER, META_EXPORT = "written_by", "laser_tool_export"


def import_onnx():
    """(onnx, onnxruntime), or one line naming the install command."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
    except ImportError as e:
        raise UserError(f"export --format onnx needs onnx, onnxruntime and onnxscript ({e.name or e} is not "
                        f"installed): {INSTALL}") from None
    return onnx, onnxruntime


def example_images(spec, batch: int, seed: int = 0) -> torch.Tensor:
    """Images shaped like the model's inputs, in [0, 1] as the loader gives them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, spec.channels, spec.image_size, spec.image_size, generator=g)


def _export(model, x, dynamo: bool) -> bytes:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["images"], output_names=["logits"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        return buf.getvalue()


def session(data: bytes, threads: int = None):
    """An onnxruntime CPU session of a serialised model (`threads`: intra-op threads, None = its default)."""
    _, ort = import_onnx()
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # Idle pool threads spin for a while after each run by default: with several sessions timed in turn,
    # one session's spinning threads would steal the cores from the next one's run.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def max_difference(data: bytes, model, x: torch.Tensor) -> float:
    """max |onnxruntime(x) - torch(x)| of the model's logits."""
    with torch.no_grad():
        ref = model(x).float().numpy()
    sess = session(data)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - ref).max())


def onnx_bytes(model, spec, meta: dict = None):
    """(serialised ONNX model, {exporter, max_abs_diff, checked_batch}) of `model` in eval mode, checked
    against torch under onnxruntime; `meta` is stored in the model's metadata_props. Raises UserError
    when no exporter gives a graph that matches."""
    onnx, _ = import_onnx()
    model = model.eval()
    trace, check = example_images(spec, 2), example_images(spec, 5, seed=1)
    errors = []
    for dynamo in (True, False):
        name = "dynamo" if dynamo else "torchscript"
        try:
            data = _export(model, trace, dynamo)
            diff = max_difference(data, model, check)
        except Exception as e:  # noqa: BLE001 - an exporter or runtime failure moves on to the next exporter
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")
            continue
        if diff > TOLERANCE:
            errors.append(f"{name}: onnxruntime differs from torch by {diff:.2e} > {TOLERANCE:g}")
            continue
        proto = onnx.load_from_string(data)
        entries = {META_WRITER: "laser-tool", META_EXPORT: json.dumps(meta or {}, default=str)}
        for k, v in entries.items():
            proto.metadata_props.add(key=k, value=v)
        return proto.SerializeToString(), dict(exporter=name, max_abs_diff=diff, checked_batch=len(check))
    raise UserError(f"the model could not be exported to ONNX so that onnxruntime matches torch "
                    f"({'; '.join(errors)}); nothing was written")


def written_by_laser_tool(path) -> bool:
    """True when `path` is an ONNX file laser-tool's export wrote (its metadata says so)."""
    try:
        onnx, _ = import_onnx()
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file, or no onnx to read one: not provably ours
        return False
    return any(p.key == META_WRITER and p.value == "laser-tool" for p in proto.metadata_props)
