"""AdamW and the learning-rate schedule.

The schedule is a pure function of the optimizer step, with its lengths given in true epochs:
linear warmup for `warmup_epochs`, then (`--schedule`, vocab.SCHEDULES) cosine decay to zero at the last
step (the default), linear decay to zero, or wsd (warmup-stable-decay: the peak held, then linear to zero
over the last WSD_DECAY of the steps). (The seed handed an
epoch-based CosineAnnealingWarmRestarts to DeepSpeed, which stepped it every optimizer step, so its
"5 warmup epochs" were 5 steps; here nothing depends on who calls what how often.)
"""
import math

import torch

from laser_tool.vocab import SCHEDULES

WSD_DECAY = 0.2   # wsd: the fraction of all steps the final linear decay takes
# config.json's schedule "kind" per shape (the cosine one is the words every run before --schedule wrote)
SCHEDULE_KINDS = {
    "cosine": "linear warmup then cosine to 0",
    "linear": "linear warmup then linear to 0",
    "wsd": f"linear warmup, constant, then linear to 0 over the last {WSD_DECAY:.0%} of steps (warmup-stable-decay)",
}


def lr_multiplier_of(model) -> dict:
    """{id(parameter): multiplier} from modules that carry an `lr_mult` dict (structured layers under
    --param structured, laser_tool/parametrize.py); every other parameter learns at the base rate."""
    out = {}
    for m in model.modules():
        for name, mult in getattr(m, "lr_mult", {}).items():
            out[id(m.get_parameter(name))] = float(mult)
    return out


def make_optimizer(model, lr: float, weight_decay: float, fused: bool = False, decay_all: bool = False):
    """AdamW. By default no weight decay on biases, norms and scalars (1-D tensors); decay_all=True decays
    every parameter, as the seed's AdamW(model.parameters()) did. fused=True (CUDA) runs one kernel per step.

    Parameters with a learning-rate multiplier other than 1 get their own groups (after the two usual
    ones, so a model without multipliers has exactly those two) whose "lr_mult" set_lr applies.
    """
    mults = lr_multiplier_of(model)
    def decays(p):
        return decay_all or p.ndim >= 2

    decay = [p for p in model.parameters() if p.requires_grad and decays(p) and mults.get(id(p), 1.0) == 1.0]
    no_decay = [p for p in model.parameters() if p.requires_grad and not decays(p) and mults.get(id(p), 1.0) == 1.0]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    scaled = {}
    for p in model.parameters():
        mult = mults.get(id(p), 1.0)
        if p.requires_grad and mult != 1.0:
            key = (mult, decays(p))
            if key not in scaled:
                scaled[key] = {"params": [], "weight_decay": weight_decay if decays(p) else 0.0,
                               "lr_mult": mult, "lr": lr * mult}
            scaled[key]["params"].append(p)
    groups += list(scaled.values())
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, shape: str = "cosine") -> float:
    """Learning rate for optimizer step `step` (0-based). Every shape reaches 0 at step `total_steps`
    (one past the last); wsd starts its decay at total_steps - round(WSD_DECAY * total_steps), or at the
    warmup's end if that comes later."""
    if shape not in SCHEDULES:
        raise ValueError(f"unknown schedule {shape!r}; choose {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if shape == "wsd":
        start = max(warmup_steps, total_steps - max(1, round(WSD_DECAY * total_steps)))
        if step < start:
            return base_lr
        return base_lr * (1.0 - min(1.0, (step - start) / max(1, total_steps - start)))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if shape == "linear":
        return base_lr * (1.0 - min(1.0, progress))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
