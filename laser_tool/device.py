"""`--device auto|cpu|cuda` -> a torch.device, with one clear error when CUDA is asked for but absent;
and the name of the CPU, for the figures that depend on it."""
import platform
import re

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"CUDA was asked for (--device {name}) but no CUDA device is available; "
                        f"use --device cpu or --device auto")
    return torch.device(name)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows: CPU results depend on it."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
