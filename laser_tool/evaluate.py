"""Accuracy and loss of a model on a uint8 image tensor, in large no-grad batches on the device."""
import torch
import torch.nn.functional as F


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
