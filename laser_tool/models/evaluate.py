"""Accuracy, loss and predicted classes of a model on a uint8 image tensor, in large no-grad batches.

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
def evaluate_with_predictions(model, images, labels, batch_size=1000, device=None, amp_dtype=None):
    """(mean loss, accuracy, predicted class per image as int64 on the CPU) of `model` on uint8 images
    (N,C,H,W) scaled to [0,1] as in training. Labels may be None: then loss and accuracy are None."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, preds = 0.0, 0, []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
        with torch.autocast(device.type if hasattr(device, "type") else str(device).split(":")[0],
                            dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(x)
        pred = logits.argmax(-1)
        preds.append(pred.cpu())
        if labels is not None:
            y = labels[i:i + batch_size].to(device, non_blocking=True)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (pred == y).sum().item()
    model.train(was_training)
    n = max(len(images), 1)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    if labels is None:
        return None, None, pred
    return total_loss / n, correct / n, pred


def evaluate(model, images, labels, batch_size=1000, device=None, amp_dtype=None):
    """(mean loss, accuracy) of `model` on uint8 images (N,C,H,W) scaled to [0,1] as in training."""
    loss, acc, _ = evaluate_with_predictions(model, images, labels, batch_size, device, amp_dtype)
    return loss, acc


def predict(model, images, batch_size=1000, device=None, amp_dtype=None) -> torch.Tensor:
    """Predicted class per image (int64, CPU), in the order of `images`."""
    return evaluate_with_predictions(model, images, None, batch_size, device, amp_dtype)[2]
