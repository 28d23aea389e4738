"""Inference speed of a run's model: forward-pass images/s on the device compare is told to use."""
import time

import torch

from ..models import ModelSpec
from ..runs.checkpoint import load_run


def measure_images_per_s(run_dir, device="cpu", batch=256, reps=10):
    """Forward-pass images/s of a run's model on a fixed random batch shaped like its inputs (median
    of `reps` timed passes after one warm-up), so every row is timed the same way on the same device."""
    model, config = load_run(run_dir, device)
    s = ModelSpec.from_dict(config["model"]).resolved()
    x = torch.rand(batch, s.channels, s.image_size, s.image_size, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        model(x)
        model(x)  # two warm-ups: allocator and kernel choices settle on the first passes
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]
