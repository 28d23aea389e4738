"""Inference latency, measured so that two models can be compared on a shared, noisy machine.

Every model being compared is timed in the same rounds: round i runs each model once (each sample repeats
the batch enough times to last about TARGET_S, so a 0.3 ms batch of one is not timed alone), in an order
rotated by one model per round, so a burst of load on the machine hits every model alike instead of
whichever happened to be timed then. Each sample follows one untimed run of the same model, so it times
the model warm, as a server running it would, not the cache misses of switching from the model before. Per model and batch size: the median over the rounds and its
interquartile range. Threads are fixed (torch intra-op threads, onnxruntime intra-op threads with one
inter-op thread) and restored afterwards.

A model is timed as it would be deployed (`deployed_forms`): onnxruntime on the CPU where it can be exported
(onnx.py; torch eager otherwise, named), and, where its layers are factored or structured, also its dense
multiply-out (dense.py), since a cut that saves parameters can run slower than the dense matmul it replaced;
the row takes the faster form and names it. On a GPU the same is done in torch eager at batch 1 and 1024.
"""
import math
import statistics
import time

import torch

from ..device import cpu_name
from ..errors import UserError
from .dense import dense_model
from .onnx import example_images, import_onnx, onnx_bytes, session

BATCHES = (1, 64)
GPU_BATCHES = (1, 1024)
ROUNDS = 30
TARGET_S = 0.005
AS_TRAINED, DENSE = "as trained", "dense multiply-out"


def ort_runner(data: bytes, threads: int):
    """fn(images) running a serialised ONNX model under onnxruntime on the CPU."""
    sess = session(data, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def torch_runner(model, device="cpu"):
    """fn(images) running `model` in torch eager (inference mode), synchronised on a GPU."""
    model = model.eval().to(device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def run(x):
        with torch.inference_mode():
            model(x.to(device))
        sync()
    return run


def _quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def time_interleaved(runners: dict, images, batches=BATCHES, rounds: int = ROUNDS, threads: int = 2) -> dict:
    """{key: {"B": {median_ms, iqr_ms}}} of every runner (fn(images)) at each batch size, timed in shared
    rounds (see the module docstring). `images(B)` gives the batch every runner is fed."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {k: {} for k in runners}
    try:
        for b in batches:
            x, keys, inner = images(b), list(runners), {}
            for k in keys:  # warm-up (kernel choice, allocation), then how many runs make one sample
                for _ in range(3):
                    runners[k](x)
                t0 = time.perf_counter()
                runners[k](x)
                inner[k] = max(1, math.ceil(TARGET_S / max(time.perf_counter() - t0, 1e-6)))
            samples = {k: [] for k in keys}
            for i in range(rounds):
                for k in keys[i % len(keys):] + keys[:i % len(keys)]:
                    runners[k](x)  # untimed: the model timed before this one left the caches its own
                    t0 = time.perf_counter()
                    for _ in range(inner[k]):
                        runners[k](x)
                    samples[k].append((time.perf_counter() - t0) / inner[k])
            for k in keys:
                q1, med, q3 = _quartiles(samples[k])
                out[k][str(b)] = dict(median_ms=round(1e3 * med, 4), iqr_ms=round(1e3 * (q3 - q1), 4))
    finally:
        torch.set_num_threads(before)
    return out


def runtime_name(kind: str) -> str:
    if kind == "onnxruntime":
        return f"onnxruntime {import_onnx()[1].__version__} CPU"
    return f"torch {torch.__version__} eager {kind.removeprefix('torch-')}"


def deployed_forms(model, spec, threads: int) -> dict:
    """{form: (runtime, fn(images))} of a model on the CPU: as trained, and (where any layer is factored or
    structured) its dense multiply-out; each under onnxruntime where it exports and matches torch, else in
    torch eager."""
    forms = {AS_TRAINED: model.eval()}
    try:
        dense, _, converted = dense_model(model, spec, keep_bias=True)
        if converted:
            forms[DENSE] = dense
    except UserError:
        pass  # a model with no original architecture to multiply out into is deployed as it is
    out = {}
    for form, m in forms.items():
        try:
            data, _ = onnx_bytes(m, spec.resolved())
            out[form] = ("onnxruntime", ort_runner(data, threads))
        except UserError:  # not installed, or no exporter reproduces the model: torch is what runs it
            out[form] = ("torch-cpu", torch_runner(m))
    return out


def runnable_forms(model, spec, threads: int) -> dict:
    """deployed_forms, less any form that fails on one batch (raises UserError when none runs)."""
    x, out, errors = example_images(spec.resolved(), 2), {}, []
    for form, (runtime, fn) in deployed_forms(model, spec, threads).items():
        try:
            fn(x)
            out[form] = (runtime, fn)
        except Exception as e:  # noqa: BLE001 - a model that cannot run is reported, not timed
            errors.append(f"{form}: {type(e).__name__}: {str(e)[:100]}")
    if not out:
        raise UserError(f"the model does not run ({'; '.join(errors)})")
    return out


def measure_models(models: dict, threads: int = 2, rounds: int = ROUNDS, device="cpu") -> tuple:
    """({key: latency record}, {key: why it could not be timed}) of models {key: (model, spec)} timed
    together: per key, every deployed form in the shared rounds, the faster at batch 64 chosen. A record:
    {batch: {"1": {median_ms, iqr_ms}, "64": ...}, runtime, form, threads, rounds, processor, forms: {form:
    {runtime, batch}}}, with `gpu` (torch eager at batch 1 and 1024) when `device` is a GPU."""
    runners, runtimes, specs, errors = {}, {}, {}, {}
    for key, (model, spec) in models.items():
        try:
            forms = runnable_forms(model, spec, threads)
        except UserError as e:
            errors[key] = str(e)
            continue
        specs[key] = spec.resolved()
        for form, (runtime, fn) in forms.items():
            runners[(key, form)], runtimes[(key, form)] = fn, runtime
    if not specs:
        return {}, errors
    check_same_inputs(specs.values())
    first = next(iter(specs.values()))
    timed = time_interleaved(runners, lambda b: example_images(first, b), BATCHES, rounds, threads)
    out = {}
    for key in specs:
        forms = {form: dict(runtime=runtime_name(runtimes[(k, form)]), batch=timed[(k, form)])
                 for (k, form) in runners if k == key}
        best = min(forms, key=lambda f: forms[f]["batch"]["64"]["median_ms"])
        out[key] = dict(batch=forms[best]["batch"], runtime=forms[best]["runtime"], form=best, threads=threads,
                        rounds=rounds, processor=cpu_name(), forms=forms)
    if str(device).startswith("cuda"):
        gpu = time_interleaved({k: torch_runner(models[k][0], device) for k in specs},
                               lambda b: example_images(first, b), GPU_BATCHES, rounds, threads)
        for key in specs:
            out[key]["gpu"] = dict(batch=gpu[key], runtime=runtime_name("torch-cuda"),
                                   device=torch.cuda.get_device_name(device))
    return out, errors


def check_same_inputs(specs) -> None:
    """Models timed together take one batch of images: their input shapes must agree."""
    shapes = {(s.channels, s.image_size) for s in specs}
    if len(shapes) > 1:
        raise UserError(f"models with different input shapes {sorted(shapes)} cannot be timed together")


def measure(model, spec, threads: int = 2, reps: int = 20) -> dict:
    """`export --measure-latency`: {processor, threads, onnxruntime, reps, batches: {"B": {ms, ms_per_image,
    median_ms, iqr_ms}}} of the model as exported (as trained), `reps` shared rounds per batch, and `dense`:
    the same figures of its dense multiply-out where it has one, timed in the same rounds."""
    _, ort = import_onnx()
    records, errors = measure_models({"m": (model, spec)}, threads=threads, rounds=reps)
    if AS_TRAINED not in (records.get("m") or {}).get("forms", {}):
        raise UserError(f"the model could not be timed: {errors.get('m', 'it does not run as exported')}")
    per_image = lambda batch: {b: dict(ms=v["median_ms"], ms_per_image=round(v["median_ms"] / int(b), 5), **v)
                               for b, v in batch.items()}
    forms = records["m"]["forms"]
    out = dict(processor=cpu_name(), threads=threads, onnxruntime=ort.__version__, reps=reps,
               runtime=forms[AS_TRAINED]["runtime"], batches=per_image(forms[AS_TRAINED]["batch"]))
    if DENSE in forms:
        out["dense"] = dict(runtime=forms[DENSE]["runtime"], batches=per_image(forms[DENSE]["batch"]))
    return out
