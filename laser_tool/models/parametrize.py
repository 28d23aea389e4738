"""How a structured layer's factors start and learn: `--param structured` and `--init spectral`.

`standard` (the seed's) gives every factor an nn.Linear-style init and the dense learning rate; a
product of factors then starts at a different scale and its features move at a different speed than the
dense layer it replaces. `structured` follows Qiu et al. 2024 (compute-better-spent, nn/cola_nn.py):
each factor, seen as a matrix with fan-in f_in and fan-out f_out, starts at
    std = sqrt(1/f_in) * min(1, sqrt(f_out/f_in))          (muP: spectral norm ~ sqrt(f_out/f_in))
and learns at lr * d_in / f_in / n_factors, with d_in the replaced layer's input width, so that each
factor's feature update is about a dense layer's share (their heuristic; scalars and biases keep the dense
rate, the dense layers and the baseline are untouched). For DYAD the two block-diagonal terms are summed,
not chained; the same rule gives each n_dyad/2, i.e. the dense rate per unit of fan-in (2*d_in/n_dyad).

`spectral` (a family with a `spectral_init`: low-rank, Khodak et al. 2021): the factors are U sqrt(S)
and sqrt(S) V^T of the SVD of the dense layer's own initial matrix, truncated to the rank, so at full
rank the layer starts as exactly that dense layer.

Each family states its factors' fans (`factor_fans`) and its spectral init in its own module (families/).
"""
import math

import torch
import torch.nn as nn

from ..errors import UserError
from .families import FAMILIES


def factor_fans(layer: nn.Module) -> dict:
    """{parameter name: (fan_in, fan_out)} for each weight factor of a structured layer (its family's own
    `factor_fans`, families/)."""
    if not hasattr(layer, "factor_fans"):
        raise UserError(f"{type(layer).__name__} has no structured parameterisation")
    return layer.factor_fans()


def init_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(1 / fan_in) * min(1.0, math.sqrt(fan_out / fan_in))


def structured_multipliers(layer: nn.Module) -> dict:
    fans = factor_fans(layer)
    return {name: layer.in_features / fan_in / len(fans) for name, (fan_in, _) in fans.items()}


@torch.no_grad()
def make_structured(layer: nn.Module, init: bool = True) -> nn.Module:
    """Give `layer` the structured init (unless init=False, e.g. after a spectral init) and multipliers."""
    if init:
        for name, (fan_in, fan_out) in factor_fans(layer).items():
            layer.get_parameter(name).normal_(0.0, init_std(fan_in, fan_out))
    layer.lr_mult = structured_multipliers(layer)   # read by trainers/optim.make_optimizer
    return layer


def spectral_init(layer: nn.Module, W: torch.Tensor, bias) -> nn.Module:
    """The layer's factors from the SVD of the dense (d_out, d_in) matrix W, by its family's own
    `spectral_init` (families/); a family without one refuses `--init spectral`."""
    if not hasattr(layer, "spectral_init"):
        offered = [f.kind for f in FAMILIES.values() if hasattr(f, "spectral_init")]
        raise UserError(f"--init spectral applies only to the {', '.join(offered)} variant; drop it or use "
                        f"--variant {offered[0]}")
    return layer.spectral_init(W, bias)


def lr_multipliers(model: nn.Module) -> dict:
    """{parameter name: learning-rate multiplier} for every parameter whose multiplier is not 1."""
    out = {}
    for mname, m in model.named_modules():
        for pname, mult in getattr(m, "lr_mult", {}).items():
            out[f"{mname}.{pname}" if mname else pname] = mult
    return out


def update_ratio(make_layer, d_in: int, d_out: int, param: str, opt: str = "sgd", seed: int = 0) -> float:
    """RMS change of a layer's output on a fixed batch after one optimizer step (lr 1e-3, each parameter
    at its lr multiplier), over a dense nn.Linear's: how well a parameterisation sizes its updates.
    `make_layer()` builds the layer (seeded like the dense one); `param` structured applies the rule."""
    g = torch.Generator().manual_seed(seed)
    x, up = torch.randn(64, d_in, generator=g), torch.randn(64, d_out, generator=g)

    def step(layer):
        mult = getattr(layer, "lr_mult", {})
        groups = [{"params": [p], "lr": 1e-3 * mult.get(n, 1.0)} for n, p in layer.named_parameters()]
        o = torch.optim.SGD(groups) if opt == "sgd" else torch.optim.Adam(groups)
        y0 = layer(x).detach()
        (layer(x) * up).sum().div(len(x)).backward()
        o.step()
        with torch.no_grad():
            return (layer(x) - y0).pow(2).mean().sqrt().item()
    torch.manual_seed(seed)
    dense = step(nn.Linear(d_in, d_out))
    torch.manual_seed(seed)
    layer = make_layer()
    if param == "structured":
        make_structured(layer)
    return step(layer) / dense
