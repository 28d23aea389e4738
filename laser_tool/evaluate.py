"""Accuracy and loss of a model on a uint8 image tensor, in large no-grad batches on the device.

Every row of a comparison (trained, reduced, healed) is scored through `evaluate` with the precision
`eval_amp_dtype` picks from the device and the run's `amp` setting, so rows are comparable.
"""
import torch
import torch.nn.functional as F


def eval_amp_dtype(device, amp: str = "auto"):
    """The autocast dtype a run with this `amp` setting uses on `device` (None: full fp32).

    bf16 on CUDA (fp16 where the GPU lacks bf16), fp32 on the CPU or with amp "off": the same rule for
    training and for every evaluation of the run and of what is derived from it."""
    device = torch.device(device)
    if device.type != "cuda" or amp == "off":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(amp_dtype) -> str:
    """'bf16', 'fp16' or 'fp32': what final.json records as eval_precision."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")


@torch.no_grad()
def evaluate(model, images, labels, batch_size=1000, device=None, amp_dtype=None):
    """(mean loss, accuracy) of `model` on uint8 images (N,C,H,W) scaled to [0,1] as in training."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
        y = labels[i:i + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type if hasattr(device, "type") else str(device).split(":")[0],
                            dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train(was_training)
    n = max(len(images), 1)
    return total_loss / n, correct / n
