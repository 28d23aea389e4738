"""Inference latency of an exported ONNX model under onnxruntime on the CPU: the median of repeated
timed runs of one fixed batch, per batch size, after warm-up runs (the first runs pick kernels and
allocate). Threads are fixed (intra-op `threads`, one inter-op thread) so figures compare across models."""
import statistics
import time

from ..device import cpu_name
from .onnx import example_images, import_onnx, session

BATCHES = (1, 64)


def time_batch(sess, x, reps: int, warmup: int = 3) -> float:
    """Median seconds of one run of `sess` on the numpy batch `x`."""
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(data: bytes, spec, batches=BATCHES, threads: int = 2, reps: int = 20) -> dict:
    """{processor, threads, onnxruntime, reps, batches: {"B": {ms, ms_per_image}}} of a serialised model."""
    _, ort = import_onnx()
    sess = session(data, threads)
    out = {}
    for b in batches:
        s = time_batch(sess, example_images(spec, b).numpy(), reps)
        out[str(b)] = dict(ms=round(1e3 * s, 4), ms_per_image=round(1e3 * s / b, 5))
    return dict(processor=cpu_name(), threads=threads, onnxruntime=ort.__version__, reps=reps, batches=out)
