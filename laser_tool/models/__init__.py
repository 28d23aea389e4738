"""Models: the spec and its builder, the architectures, the layers, and the surgery that names and
replaces their Linear-like layers."""
from .spec import ARCH_DEFAULTS, ModelSpec, build_model, count_params

__all__ = ["ARCH_DEFAULTS", "ModelSpec", "build_model", "count_params"]
