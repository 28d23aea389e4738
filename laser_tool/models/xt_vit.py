"""The seed's x-transformers ViT: ViTransformerWrapper(Encoder(residual_attn, macaron, rmsnorm)).

x-transformers is imported only when this model is built or inspected (it costs seconds).
"""
import warnings

import torch.nn as nn

from ..errors import UserError


def import_x_transformers():
    """x-transformers warns about torch.jit.script on import under torch 2.14; that is not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import x_transformers
    return x_transformers


def build_xt_vit(s) -> nn.Module:
    """The model from a resolved `models.ModelSpec`, built exactly as the seed builds it."""
    xt = import_x_transformers()
    encoder = xt.Encoder(dim=s.dim, depth=s.depth, heads=s.heads, attn_dim_head=s.dim_head,
                         ff_mult=s.mlp_dim / s.dim, residual_attn=True, macaron=True, use_rmsnorm=True,
                         ff_dropout=s.dropout, attn_dropout=s.attn_dropout)
    model = xt.ViTransformerWrapper(image_size=s.image_size, patch_size=s.patch_size, channels=s.channels,
                                    num_classes=s.num_classes, attn_layers=encoder, emb_dropout=s.emb_dropout)
    # x-transformers sizes the FFN as int(dim * mult); make sure that is the width asked for.
    got = next(m for m in model.modules() if isinstance(m, xt.x_transformers.FeedForward)).ff[2].in_features
    if got != s.mlp_dim:
        raise UserError(f"xt-vit cannot make an FFN of width {s.mlp_dim} from dim {s.dim}; pick another --mlp-dim")
    return model
