"""The seed's ViT-tiny (catid/cifar10deepspeed models/vit_small.py, adapted from vit-pytorch's
vit_for_small_dataset): shifted-patch tokenisation, locality self-attention with a learnable
temperature and a masked diagonal, sigmaReparam projections, CLS pooling.

`ViTTiny(spec)` reads its sizes from a resolved `models.spec.ModelSpec`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import SNLinear


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
    """Locality self-attention: learnable temperature, each token barred from attending to itself.

    The seed applies no dropout to the attention probabilities (only after to_out); `attn_dropout`
    is our own option and is 0 unless asked for.
    """

    def __init__(self, dim, heads, dim_head, dropout, attn_dropout=0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.attn_dropout = heads, attn_dropout
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
                                             dropout_p=self.attn_dropout if self.training else 0.0)
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
    def __init__(self, s):
        super().__init__()
        num_patches = (s.image_size // s.patch_size) ** 2
        self.embed = ShiftedPatchTokenization(s.dim, s.patch_size, s.channels)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, s.dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, s.dim))
        self.emb_drop = nn.Dropout(s.emb_dropout)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(attn=LSA(s.dim, s.heads, s.dim_head, s.dropout, s.attn_dropout),
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
