"""A model's description (`ModelSpec`) and the one way to build it: the seed's two vision transformers.

- `vit-tiny` (vit_tiny.py): the seed's ViT-tiny: shifted-patch tokenisation, locality self-attention
  with a learnable temperature and a masked diagonal, sigmaReparam projections, CLS pooling.
- `xt-vit` (xt_vit.py): the seed's x-transformers ViTransformerWrapper(Encoder(residual_attn, macaron,
  rmsnorm)).
- `timm:NAME` (timm_vit.py) and `python:MODULE:FUNCTION` (factory.py): models from outside, built with
  the spec's `arch_args`; their sizes are read off the built model (external.py).

A `ModelSpec` holds everything needed to rebuild a model (it is stored in every checkpoint), including
the train-time variant and any per-layer replacements made after training.
"""
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import torch.nn as nn

from ..errors import UserError, flag_name, is_positive_int
from ..vocab import ARCHS, INITS, PARAMS
from .external import SIZE_FIELDS, build_external, is_external, natural_sizes
from .families import FAMILIES, flag_fields
from .surgery import apply_layer_overrides, apply_variant
from .vit_tiny import ViTTiny
from .xt_vit import build_xt_vit

# Arch defaults are the seed's settings (ANCHORS.md).
ARCH_DEFAULTS = {
    "vit-tiny": dict(dim=512, depth=4, heads=6, dim_head=64, mlp_dim=256, dropout=0.1, emb_dropout=0.1),
    "xt-vit": dict(dim=256, depth=4, heads=6, dim_head=64, mlp_dim=1024, dropout=0.0, emb_dropout=0.0),
}


@dataclass
class ModelSpec:
    arch: str = "vit-tiny"
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    patch_size: int = 4
    dim: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    dim_head: Optional[int] = None
    mlp_dim: Optional[int] = None         # FFN hidden width; half-ffn halves it
    dropout: Optional[float] = None
    attn_dropout: float = 0.0             # on attention probabilities; the seed's models have none
    emb_dropout: Optional[float] = None
    variant: Optional[str] = None         # lowrank | skl | dyad | monarch | btt | half-ffn | None (baseline)
    targets: list = field(default_factory=list)   # ffn-in, ffn-out, ffn, attn-out, attn-qkv, attn
    scale: float = 0.5                    # lowrank r / SKL scale
    blocks: Optional[list] = None         # restrict the variant to these block indices
    n_dyad: int = 8
    dyad_variant: str = "it"
    monarch_blocks: int = 4               # Qiu et al.'s default
    btt_rank: int = 1                     # Qiu et al.'s default
    keep: Optional[float] = None          # requested fraction of each targeted layer's parameters; when set it
                                          # decides rank / n_dyad / blocks (budget.py); what is reached is in
                                          # config.json "structure"
    param: str = "standard"               # standard (the seed's) | structured (Qiu et al.'s init and lr rule)
    init: str = "default"                 # default | spectral (low-rank factors from the SVD of a dense init)
    sigma_reparam: bool = True            # a structured layer replacing an SNLinear keeps sigmaReparam
                                          # (layers.SigmaReparam); False drops it (before 2026-12)
    # Per-layer replacements made after training (post-hoc reduction), applied last:
    # {layer name: {"kind": "factored", "rank": r, "bias": bool} or {"kind": "linear", "bias": bool}}
    layers: dict = field(default_factory=dict)
    # Constructor arguments of an external arch (timm:NAME, python:MODULE:FUNCTION): `--arch-arg K=V`.
    arch_args: dict = field(default_factory=dict)

    def resolved(self) -> "ModelSpec":
        """A copy with the arch defaults filled in and half-ffn applied to mlp_dim."""
        spec = self.validated()
        if not is_external(spec.arch) and spec.image_size % spec.patch_size:
            raise UserError(f"image size {spec.image_size} is not divisible by patch size {spec.patch_size}; "
                            f"pick a patch size that divides it")
        return spec

    def validated(self) -> "ModelSpec":
        """A copy with the arch defaults filled in, every value checked; the image size is not yet
        compared with the patch size (the trainer fits the image size to the dataset later)."""
        if self.arch not in ARCHS and not is_external(self.arch):
            raise UserError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}, timm:NAME or "
                            f"python:MODULE:FUNCTION")
        if not isinstance(self.arch_args, dict) or not all(isinstance(k, str) for k in self.arch_args):
            raise UserError(f"arch args {self.arch_args!r} must be a mapping of names to values (--arch-arg K=V)")
        if self.arch_args and not is_external(self.arch):
            raise UserError(f"--arch-arg applies to timm:NAME and python:MODULE:FUNCTION archs, not {self.arch}; "
                            f"use the model flags (--dim, --depth, ...) instead")
        if self.variant is not None and self.variant not in variants():
            raise UserError(f"unknown variant {self.variant!r}; choose one of {', '.join(variants())}")
        if self.targets and self.variant not in FAMILIES:
            raise UserError(f"--target applies only to the {', '.join(FAMILIES)} variants (got variant "
                            f"{self.variant}); add --variant or drop --target")
        self._check_structure()
        if is_external(self.arch):  # its sizes are the architecture's own, read off the model
            natural = natural_sizes(self)
            filled = {k: natural[k] for k in SIZE_FIELDS if getattr(self, k) is None}
            filled["patch_size"] = natural["patch_size"] or self.patch_size
        else:
            filled = {k: v for k, v in ARCH_DEFAULTS[self.arch].items() if getattr(self, k) is None}
        spec = replace(self, **filled)
        spec.check_values()
        return spec

    def check_values(self) -> None:
        """Sizes are integers >= 1 and dropouts in [0, 1): a wrong value fails here, in one line, not
        deep in torch (or, from a checkpoint's metadata, as a huge allocation)."""
        def bad(flag, v, want):
            raise UserError(f"model setting {flag} {v!r} is invalid: it must be {want}")
        external = is_external(self.arch)  # sizes the architecture does not have stay None
        counts = [k for k in flag_fields() if isinstance(getattr(ModelSpec, k, None), int)]  # n_dyad, blocks...
        for k in ("image_size", "channels", "num_classes", "patch_size", "dim", "depth", "heads", "dim_head",
                  "mlp_dim", *counts):
            v = getattr(self, k)
            if external and v is None and k in SIZE_FIELDS:
                continue
            if not is_positive_int(v):
                bad(flag_name(k), v, "an integer >= 1")
        for k in ("dropout", "emb_dropout", "attn_dropout"):
            v = getattr(self, k)
            if external and v is None:  # timm's dropouts are its own arguments (--arch-arg drop_rate=0.1)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                bad(flag_name(k), v, "a number in [0, 1)")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 < self.scale < float("inf"):
            bad("--scale", self.scale, "a finite number > 0")
        if not isinstance(self.targets, (list, tuple)) or not all(isinstance(t, str) for t in self.targets):
            bad("targets", self.targets, "a list of layer groups")
        if self.blocks is not None:
            if not isinstance(self.blocks, (list, tuple)) or not all(
                    isinstance(b, int) and not isinstance(b, bool) and 0 <= b < self.depth for b in self.blocks):
                bad("--blocks", self.blocks, f"block indices in 0..{self.depth - 1}")
        if not isinstance(self.layers, dict):
            bad("layers", self.layers, "a mapping of layer names to replacements")

    def _check_structure(self):
        """--keep, --param and --init only make sense with a structured variant."""
        if self.param not in PARAMS:
            raise UserError(f"unknown --param {self.param!r}; choose one of {', '.join(PARAMS)}")
        if self.init not in INITS:
            raise UserError(f"unknown --init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.keep is not None and not 0 < self.keep <= 1:
            raise UserError(f"--keep {self.keep:g} is outside (0, 1]; give the fraction of each dense layer "
                            f"to keep, e.g. --keep 0.5")
        for flag, given in (("--keep", self.keep is not None), ("--param structured", self.param != "standard"),
                            ("--init spectral", self.init != "default")):
            if given and self.variant not in FAMILIES:
                raise UserError(f"{flag} needs a structured variant (--variant {'|'.join(FAMILIES)}), got "
                                f"{self.variant or 'the baseline'}")
        spectral = [k for k, f in FAMILIES.items() if hasattr(f, "spectral_init")]
        if self.init == "spectral" and self.variant not in spectral:
            raise UserError(f"--init spectral applies only to --variant {'|'.join(spectral)} (got {self.variant}); "
                            f"drop it")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in d.items() if k in known}
        if given.get("arch", "vit-tiny") == "vit-tiny" and given.get("variant") in FAMILIES:
            given.setdefault("sigma_reparam", False)   # structured vit-tiny specs from before the field
                                                       # dropped sigmaReparam; for the rest it is moot
        return cls(**given)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the architecture, apply the train-time variant, then any post-hoc layer replacements."""
    s = spec.resolved()
    if s.variant == "half-ffn":
        s = replace(s, mlp_dim=s.mlp_dim // 2)
    if is_external(s.arch):
        model = build_external(s)
    else:
        model = ViTTiny(s) if s.arch == "vit-tiny" else build_xt_vit(s)
    if s.variant in FAMILIES:
        if not s.targets:
            raise UserError(f"variant {s.variant!r} needs at least one --target")
        apply_variant(model, s)
    if s.layers:
        apply_layer_overrides(model, s.layers)
    return model


def variants() -> tuple:
    """Every `--variant`: the structured families (families/) and half-ffn, a dense model with half the FFN."""
    return (*FAMILIES, "half-ffn")


def is_structured(spec) -> bool:
    """Whether a spec's variant is a structured layer family (not half-ffn, not the baseline)."""
    return spec.variant in FAMILIES


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
