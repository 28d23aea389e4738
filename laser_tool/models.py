"""The seed's two vision transformers, built by name from a `ModelSpec`.

- `vit-tiny`: the seed's ViT-tiny (catid/cifar10deepspeed models/vit_small.py, itself adapted from
  vit-pytorch's vit_for_small_dataset): shifted-patch tokenisation, locality self-attention with a
  learnable temperature and a masked diagonal, sigmaReparam projections, CLS pooling.
- `xt-vit`: the seed's x-transformers ViTransformerWrapper(Encoder(residual_attn, macaron, rmsnorm)).

A `ModelSpec` holds everything needed to rebuild a model (it is stored in every checkpoint), including
the train-time variant and any per-layer replacements made after training.
"""
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError
from .layers import SNLinear

ARCHS = ("vit-tiny", "xt-vit")
VARIANTS = ("lowrank", "skl", "dyad", "half-ffn")

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
    emb_dropout: Optional[float] = None
    variant: Optional[str] = None         # lowrank | skl | dyad | half-ffn | None (baseline)
    targets: list = field(default_factory=list)   # ffn-in, ffn-out, ffn, attn-out, attn-qkv, attn
    scale: float = 0.5                    # lowrank r / SKL scale
    blocks: Optional[list] = None         # restrict the variant to these block indices
    n_dyad: int = 8
    dyad_variant: str = "it"
    # Per-layer replacements made after training (post-hoc reduction), applied last:
    # {layer name: {"kind": "factored", "rank": r, "bias": bool} or {"kind": "linear", "bias": bool}}
    layers: dict = field(default_factory=dict)

    def resolved(self) -> "ModelSpec":
        """A copy with the arch defaults filled in and half-ffn applied to mlp_dim."""
        if self.arch not in ARCHS:
            raise UserError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.variant is not None and self.variant not in VARIANTS:
            raise UserError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.targets and self.variant not in ("lowrank", "skl", "dyad"):
            raise UserError(f"--target applies only to the lowrank, skl and dyad variants (got variant "
                            f"{self.variant}); add --variant or drop --target")
        filled = {k: v for k, v in ARCH_DEFAULTS[self.arch].items() if getattr(self, k) is None}
        spec = replace(self, **filled)
        if spec.image_size % spec.patch_size:
            raise UserError(f"image size {spec.image_size} is not divisible by patch size {spec.patch_size}; "
                            f"pick a patch size that divides it")
        return spec

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------
# ViT-tiny


class ShiftedPatchTokenization(nn.Module):
    """SPT: the image and four one-pixel diagonal shifts, stacked on channels, cut into patches."""

    SHIFTS = ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1))

    def __init__(self, dim, patch_size, channels):
        super().__init__()
        self.p = patch_size
        patch_dim = patch_size * patch_size * 5 * channels
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def patches(self, img):
        """The normalised patch vectors that `proj` embeds."""
        x = torch.cat([img, *(F.pad(img, s) for s in self.SHIFTS)], dim=1)
        b, c, H, W = x.shape
        p = self.p
        # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        x = x.reshape(b, c, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
        return self.norm(x)

    def forward(self, img):
        return self.proj(self.patches(img))


class LSA(nn.Module):
    """Locality self-attention: learnable temperature, each token barred from attending to itself."""

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.temperature = nn.Parameter(torch.log(torch.tensor(dim_head ** -0.5)))
        self.to_qkv = SNLinear(dim, inner * 3, bias=False)
        self.to_out = SNLinear(inner, dim)
        self.out_drop = nn.Dropout(dropout)

    def attend(self, x):
        """Everything before to_out: the heads' outputs, merged (post-hoc search re-runs from here)."""
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        # dots * exp(temperature) == (q * exp(temperature)) @ k^T, so SDPA with scale 1 is exact.
        keep = ~torch.eye(n, dtype=torch.bool, device=x.device)
        out = F.scaled_dot_product_attention(q * self.temperature.exp(), k, v, attn_mask=keep, scale=1.0,
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, -1)

    def forward(self, x):
        return self.out_drop(self.to_out(self.attend(x)))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden)
        self.fc_out = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc_out(self.drop(F.gelu(self.fc_in(x)))))


class ViTTiny(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        num_patches = (s.image_size // s.patch_size) ** 2
        self.embed = ShiftedPatchTokenization(s.dim, s.patch_size, s.channels)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, s.dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, s.dim))
        self.emb_drop = nn.Dropout(s.emb_dropout)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(attn=LSA(s.dim, s.heads, s.dim_head, s.dropout),
                               ffn=FeedForward(s.dim, s.mlp_dim, s.dropout)))
            for _ in range(s.depth))
        self.head_norm = nn.LayerNorm(s.dim)
        self.head = nn.Linear(s.dim, s.num_classes)

    def add_tokens(self, x):
        """Patch embeddings -> the transformer's input: CLS token in front, positions added."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.emb_drop(x)

    def forward(self, img):
        x = self.add_tokens(self.embed(img))
        for block in self.blocks:
            x = block["attn"](x) + x
            x = block["ffn"](x) + x
        return self.head(self.head_norm(x[:, 0]))


# ---------------------------------------------------------------------------------------------
# x-transformers ViT


def import_x_transformers():
    """x-transformers warns about torch.jit.script on import under torch 2.14; that is not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import x_transformers
    return x_transformers


def build_xt_vit(s: ModelSpec) -> nn.Module:
    xt = import_x_transformers()
    encoder = xt.Encoder(dim=s.dim, depth=s.depth, heads=s.heads, attn_dim_head=s.dim_head,
                         ff_mult=s.mlp_dim / s.dim, residual_attn=True, macaron=True, use_rmsnorm=True,
                         ff_dropout=s.dropout, attn_dropout=s.dropout)
    model = xt.ViTransformerWrapper(image_size=s.image_size, patch_size=s.patch_size, channels=s.channels,
                                    num_classes=s.num_classes, attn_layers=encoder, emb_dropout=s.emb_dropout)
    # x-transformers sizes the FFN as int(dim * mult); make sure that is the width asked for.
    got = next(m for m in model.modules() if isinstance(m, xt.x_transformers.FeedForward)).ff[2].in_features
    if got != s.mlp_dim:
        raise UserError(f"xt-vit cannot make an FFN of width {s.mlp_dim} from dim {s.dim}; pick another --mlp-dim")
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the architecture, apply the train-time variant, then any post-hoc layer replacements."""
    from .surgery import apply_layer_overrides, apply_variant  # surgery imports this module

    s = spec.resolved()
    if s.variant == "half-ffn":
        s = replace(s, mlp_dim=s.mlp_dim // 2)
    model = ViTTiny(s) if s.arch == "vit-tiny" else build_xt_vit(s)
    if s.variant in ("lowrank", "skl", "dyad"):
        if not s.targets:
            raise UserError(f"variant {s.variant!r} needs at least one --target")
        apply_variant(model, s.variant, s.targets, s.scale, s.blocks, n_dyad=s.n_dyad,
                      dyad_variant=s.dyad_variant)
    if s.layers:
        apply_layer_overrides(model, s.layers)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
