"""Our seed models against the seed's own forward passes, with identical weights.

vit-tiny is checked against a re-implementation of the seed's models/vit_small.py written here from
its description (ANCHORS.md), module names and all: SPT tokens, LSA with a masked diagonal and an
exp(temperature) scale, sigmaReparam linears with one power-iteration step per training forward,
FFN without norms, CLS pooling. xt-vit is checked against x-transformers' own ViTransformerWrapper,
built exactly as the seed's script builds it.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.models.xt_vit import import_x_transformers
from trainers.optim import make_optimizer


# ------------------------------------------------------------------ the seed's ViT-tiny, from its description

class SeedSNLinear(nn.Linear):
    """sigmaReparam as the seed uses it: W / sigma_hat * sigma, sigma_hat from one power iteration."""

    def __init__(self, d_in, d_out, bias=True):
        super().__init__(d_in, d_out, bias=bias)
        self.register_buffer("u", torch.zeros(d_in))
        self.sigma = nn.Parameter(torch.ones(1))

    def get_sigma(self):
        with torch.no_grad():
            v = F.normalize(self.weight.mv(self.u), dim=0)
            u = F.normalize(self.weight.T.mv(v), dim=0)
            if self.training:
                self.u.data.copy_(u)
        return torch.einsum("c,cd,d->", v, self.weight, u)

    def forward(self, x):
        return F.linear(x, self.weight / self.get_sigma() * self.sigma, self.bias)


class SeedSPT(nn.Module):
    def __init__(self, dim, patch, channels):
        super().__init__()
        self.patch = patch
        self.to_patch_tokens = nn.Sequential(nn.LayerNorm(patch * patch * 5 * channels),
                                             nn.Linear(patch * patch * 5 * channels, dim))

    def forward(self, x):
        shifts = ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1))
        x = torch.cat((x, *[F.pad(x, s) for s in shifts]), dim=1)
        b, c, H, W = x.shape
        p = self.patch
        tokens = torch.stack([x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(0, 2, 3, 1).reshape(b, -1)
                              for i in range(H // p) for j in range(W // p)], dim=1)  # (p1 p2 c) per patch
        return self.to_patch_tokens(tokens)


class SeedLSA(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.temperature = nn.Parameter(torch.log(torch.tensor(dim_head ** -0.5)))
        self.to_qkv = SeedSNLinear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(SeedSNLinear(inner, dim), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = q @ k.transpose(-1, -2) * self.temperature.exp()
        mask = torch.eye(n, dtype=torch.bool)
        dots = dots.masked_fill(mask, -torch.finfo(dots.dtype).max)
        out = dots.softmax(dim=-1) @ v  # no dropout on the attention probabilities
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class SeedViTTiny(nn.Module):
    def __init__(self, image, patch, channels, classes, dim, depth, heads, dim_head, mlp):
        super().__init__()
        self.to_patch_embedding = SeedSPT(dim, patch, channels)
        self.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layers = nn.ModuleList(nn.ModuleList([
            SeedLSA(dim, heads, dim_head),
            nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, dim), nn.Dropout(0.0))])
            for _ in range(depth))
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, img):
        x = self.to_patch_embedding(img)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embedding
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.mlp_head(x[:, 0])


def seed_names(depth):
    """Our state-dict keys -> the seed's."""
    m = {"embed.norm.weight": "to_patch_embedding.to_patch_tokens.0.weight",
         "embed.norm.bias": "to_patch_embedding.to_patch_tokens.0.bias",
         "embed.proj.weight": "to_patch_embedding.to_patch_tokens.1.weight",
         "embed.proj.bias": "to_patch_embedding.to_patch_tokens.1.bias",
         "pos_embedding": "pos_embedding", "cls_token": "cls_token",
         "head_norm.weight": "mlp_head.0.weight", "head_norm.bias": "mlp_head.0.bias",
         "head.weight": "mlp_head.1.weight", "head.bias": "mlp_head.1.bias"}
    for i in range(depth):
        a, f = f"blocks.{i}.attn.", f"blocks.{i}.ffn."
        m[a + "temperature"] = f"layers.{i}.0.temperature"
        for ours, seed in (("to_qkv.", "to_qkv."), ("to_out.", "to_out.0.")):
            for t in ("weight", "u", "sigma") + (("bias",) if ours == "to_out." else ()):
                m[a + ours + t] = f"layers.{i}.0.{seed}{t}"
        for ours, idx in (("fc_in.", 0), ("fc_out.", 3)):
            for t in ("weight", "bias"):
                m[f + ours + t] = f"layers.{i}.1.{idx}.{t}"
    return m


def twins(dim=64, depth=2, heads=2, dim_head=32, mlp=96, image=16, patch=4, dropout=0.0):
    ours = build_model(ModelSpec(arch="vit-tiny", image_size=image, patch_size=patch, channels=3, num_classes=10,
                                 dim=dim, depth=depth, heads=heads, dim_head=dim_head, mlp_dim=mlp,
                                 dropout=dropout, emb_dropout=dropout))
    seed = SeedViTTiny(image, patch, 3, 10, dim, depth, heads, dim_head, mlp)
    names = seed_names(depth)
    ours_sd = ours.state_dict()
    assert set(names) == set(ours_sd) and set(names.values()) == set(seed.state_dict())
    seed.load_state_dict({names[k]: v.clone() for k, v in ours_sd.items()})
    return ours, seed, names


def test_vit_tiny_equals_the_seeds_forward_in_eval_and_train_mode():
    torch.manual_seed(0)
    ours, seed, names = twins()
    x = torch.rand(3, 3, 16, 16)
    ours.eval(), seed.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=1e-5, atol=1e-5)
    ours.train(), seed.train()  # dropout 0: train mode differs only by the power-iteration update of u
    for _ in range(2):          # twice, so the second pass runs on the updated u of both models
        torch.testing.assert_close(ours(x), seed(x), rtol=1e-5, atol=1e-5)
    seed_sd = seed.state_dict()
    for k, v in ours.state_dict().items():
        if k.endswith(".u"):
            torch.testing.assert_close(v, seed_sd[names[k]], rtol=1e-6, atol=1e-6)


def test_vit_tiny_gradients_equal_the_seeds():
    """The backward too: every parameter's gradient of a training-mode loss, against the seed's model."""
    torch.manual_seed(0)
    ours, seed, names = twins()
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    ours.train(), seed.train()
    F.cross_entropy(ours(x), y).backward()
    F.cross_entropy(seed(x), y).backward()
    seed_params = dict(seed.named_parameters())
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, seed_params[names[k]].grad, rtol=1e-4, atol=1e-6, msg=k)


def test_vit_tiny_at_the_seeds_size_matches_its_forward_and_count():
    torch.manual_seed(1)
    ours, seed, _ = twins(dim=512, depth=4, heads=6, dim_head=64, mlp=256, image=32, patch=4)
    assert count_params(ours) == count_params(seed) == 4_363_254
    x = torch.rand(2, 3, 32, 32)
    ours.eval(), seed.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=1e-4, atol=1e-4)


def test_seed_init_details():
    """No attention dropout unless asked for; to_out's bias keeps nn.Linear's init (not zeros)."""
    model = build_model(ModelSpec(arch="vit-tiny"))
    attn = model.blocks[0]["attn"]
    assert attn.attn_dropout == 0.0 and attn.out_drop.p == 0.1  # the seed's dropout 0.1 sits after to_out
    b = attn.to_out.bias
    assert b.abs().max() > 0 and b.abs().max() <= 1 / attn.to_out.in_features ** 0.5
    assert build_model(ModelSpec(arch="vit-tiny", attn_dropout=0.2)).blocks[0]["attn"].attn_dropout == 0.2


@pytest.mark.parametrize("decay_all", [False, True])
def test_decay_all_is_the_seeds_adamw(decay_all):
    model = build_model(ModelSpec(arch="vit-tiny", dim=32, depth=1, heads=2, dim_head=16, mlp_dim=32))
    opt = make_optimizer(model, 1e-3, 0.1, decay_all=decay_all)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    scalars = [p for p in model.parameters() if p.ndim < 2]
    assert all((id(p) in decayed) == decay_all for p in scalars)
    assert all(id(p) in decayed for p in model.parameters() if p.ndim >= 2)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


# ------------------------------------------------------------------ x-transformers, as the seed builds it

def test_xt_vit_equals_x_transformers_built_as_the_seed_builds_it():
    xt = import_x_transformers()
    torch.manual_seed(0)
    seed = xt.ViTransformerWrapper(image_size=32, patch_size=4, num_classes=10, attn_layers=xt.Encoder(
        dim=256, depth=4, heads=6, residual_attn=True, macaron=True, use_rmsnorm=True))
    ours = build_model(ModelSpec(arch="xt-vit"))
    a, b = ours.state_dict(), seed.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert count_params(ours) == count_params(seed) == 5_812_538
    ours.load_state_dict(b)
    ours.eval(), seed.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=1e-5, atol=1e-5)
