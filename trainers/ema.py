"""An exponential moving average of the weights (`train --ema DECAY`): what a run with it evaluates
(validation each epoch, hence the best-by-validation choice, and the test) and saves (model.safetensors,
last.safetensors); the live weights it trains stay in the resume point only.

After every optimizer step, for each parameter: avg <- d * avg + (1 - d) * live (one torch._foreach_lerp_
over all of them); buffers (sigmaReparam's power-iteration vector) are copied. The decay is warmed up,
    d = min(DECAY, (1 + n) / (10 + n)),   n = optimizer steps since the average (re)started,
TensorFlow's ExponentialMovingAverage(num_updates) rule, which airbench's short runs also warm up like.
Why: without a warm-up the random initialisation keeps a share DECAY^n of the average (0.999 after the
quick preset's ~860 steps still leaves 42% of it); timm's ModelEmaV3 warm-up, 1 - (1 + n/gamma)^-power,
does the same with two more settings to choose, this one has none.

The average is a deep copy of the raw model (never the compiled or DDP-wrapped one, which share its
parameters), so it draws nothing from the RNG and a run without --ema runs no line of this file. Every
DDP rank keeps it (the ranks' weights are equal after each step), rank 0 evaluates and saves it. The
resume point holds its tensors as `ema.<state_dict key>` and the step it started at as the counter
`ema_start`, so a resumed run is bitwise the uninterrupted one. A progressive cut (progressive.py)
changes the model's layers: the average restarts from the cut model's weights, warm-up included (the
simplest correct choice; averaging the old dense weights into new factors has no meaning).
"""
import copy

import torch

WARMUP = "min(ema, (1 + n) / (10 + n)), n = optimizer steps since the average (re)started"


def decay_at(decay: float, n: int) -> float:
    """The decay of the n-th update (n >= 1) since the average started."""
    return min(decay, (1 + n) / (10 + n))


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = self._copy(model)

    @staticmethod
    def _copy(model):
        avg = copy.deepcopy(model).eval()
        for p in avg.parameters():
            p.grad = None
            p.requires_grad_(False)
        return avg

    def restart(self, model, counters: dict) -> None:
        """Start again from `model`'s weights now (after a progressive cut), warm-up included."""
        self.module = self._copy(model)
        counters["ema_start"] = counters["global_step"]

    @torch.no_grad()
    def update(self, model, counters: dict) -> None:
        """After an optimizer step (counters["global_step"] already counts it)."""
        d = decay_at(self.decay, counters["global_step"] - counters.get("ema_start", 0))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - d)
        for avg, live in zip(self.module.buffers(), model.buffers()):
            avg.copy_(live)

    def state_tensors(self) -> dict:
        return {f"ema.{k}": v for k, v in self.module.state_dict().items()}

    def load_tensors(self, tensors: dict) -> None:
        """From a resume point's tensors (strict: a resume point without them is not this run's)."""
        self.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
