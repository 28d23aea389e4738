"""Calibration for the activation-aware methods: batches from the training split only (a fixed
function of the run's seed), and one pass that gathers each selected layer's statistics (Calib).

Two calibrations (`reduce --calibrate`):
  original    one pass over the unreduced model gathers every layer's statistics (SVD-LLM's way): each
              layer is fitted to inputs it will not see once the layers before it are cut.
  sequential  layers in forward order, each calibrated on the inputs of the model whose earlier layers
              are already cut, as layer-wise post-training methods (GPTQ, OBC) do: one pass per layer.
"""
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models.surgery import slots
from ..vocab import CALIBRATIONS
from .decompose import Calib
from .methods import METHODS, calibrated, method as method_named

CALIB_BATCH_SIZE = 128


def calibration_batches(splits, n_batches: int, seed: int, batch_size: int = CALIB_BATCH_SIZE):
    """(images, labels) pairs from the training split, a fixed function of the run's seed."""
    if n_batches < 1:
        raise UserError(f"--calib-batches {n_batches}: activation-aware methods need at least one batch")
    n = len(splits.train_x)
    if n == 0:
        raise UserError("the training split is empty: no calibration data for an activation-aware method; "
                        "use --method svd or a run with training data")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:n_batches * batch_size]
    return [(splits.train_x[idx[i:i + batch_size]], splits.train_y[idx[i:i + batch_size]])
            for i in range(0, len(idx), batch_size)]


def collect_calibration(model, names, batches, method: str, device="cpu") -> dict:
    """{layer name: Calib} from one pass (two for fisher: it needs a backward) over the batches.

    Statistics are taken on the unreduced model for every selected layer at once, as SVD-LLM does.
    """
    by_name = {s.name: s for s in slots(model)}
    gathers = method_named(method).gathers   # the statistic the method needs (methods.py)
    stats = {n: Calib() for n in names}
    captured = {}

    def hook(name):
        def fn(module, args, out):
            x = args[0].detach()
            c = stats[name]
            x2 = x.reshape(-1, x.shape[-1]).double()
            if gathers == "xtx":
                c.xtx = x2.T @ x2 if c.xtx is None else c.xtx + x2.T @ x2
            if gathers == "abs_sum":
                a = x2.abs().sum(0)
                c.abs_sum = a if c.abs_sum is None else c.abs_sum + a
            c.tokens += x2.shape[0]
            if gathers == "row_fisher":
                captured[name] = (x.reshape(x.shape[0], -1, x.shape[-1]), out)
        return fn

    handles = [by_name[n].module.register_forward_hook(hook(n)) for n in names]
    model.eval()
    try:
        for images, labels in batches:
            x = images.to(device).float().div_(255)
            if gathers != "row_fisher":   # forward statistics: no gradient needed
                with torch.no_grad():
                    model(x)
                continue
            with torch.enable_grad():
                loss = F.cross_entropy(model(x).float(), labels.to(device), reduction="sum")
                grads = torch.autograd.grad(loss, [captured[n][1] for n in names])
            for n, g in zip(names, grads):
                xin = captured[n][0]
                g = g.reshape(xin.shape[0], -1, g.shape[-1]).double()
                xin = xin.double()
                # Per-sample gradient G_b = g_b^T x_b; its squared row norms are g_b^T (x_b x_b^T) g_b,
                # which never forms the (batch, d_out, d_in) gradient tensor.
                K = xin @ xin.transpose(1, 2)
                rows = torch.einsum("bti,btu,bui->i", g, K, g).cpu()
                c = stats[n]
                c.row_fisher = rows if c.row_fisher is None else c.row_fisher + rows
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    return stats


def check_calibrate(calibrate: str, method: str) -> None:
    """A calibration mode names one of CALIBRATIONS, and only an activation-aware method has one."""
    if calibrate not in CALIBRATIONS:
        raise UserError(f"unknown --calibrate {calibrate!r}; choose {' or '.join(CALIBRATIONS)}")
    if calibrate != "original" and not calibrated(method):
        aware = [m for m in METHODS if calibrated(m)]
        raise UserError(f"--calibrate {calibrate} needs an activation-aware method ({', '.join(aware)}); "
                        f"{method} uses no calibration: drop --calibrate or pick --method {aware[0]}")


def calibrate_sequentially(model, names, batches, method: str, cut, device="cpu") -> dict:
    """{layer name: Calib}, each layer's taken on `model` after `cut(name, calib)` has replaced (in place)
    every layer before it in `names` (give them in forward order). The first layer's Calib is exactly
    collect_calibration's on the unreduced model; the later ones see the reduced layers' outputs."""
    stats = {}
    for name in names:
        stats[name] = collect_calibration(model, [name], batches, method, device)[name]
        cut(name, stats[name])
    return stats
