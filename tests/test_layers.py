"""Every structured layer is exactly the dense matrix it claims to be, with the seed's/papers' sizes."""
import itertools
import math

import pytest
import torch
import torch.nn as nn

from laser_tool.errors import UserError
from laser_tool.vocab import DYAD_VARIANTS
from laser_tool.models.budget import fraction_rank
from laser_tool.models.families.btt import BTTLinear
from laser_tool.models.families.dyad import DyadLinear
from laser_tool.models.families.lowrank import LowRankLinear
from laser_tool.models.families.monarch import MonarchLinear
from laser_tool.models.families.skl import SKLinear, round_up_sqrt, skl_rank
from laser_tool.models.layers import FactoredLinear, SigmaReparam, SNLinear, dense_weight, layer_kind
from laser_tool.models.parametrize import spectral_init

pytestmark = pytest.mark.usefixtures("one_thread")

# Non-square shapes; most sizes are not perfect squares (48, 80, 384, 192, 7, 13), some are (256, 100, 36, 64).
SHAPES = [(48, 80), (384, 256), (100, 36), (80, 48), (64, 192), (7, 13)]
DYAD_SHAPES = [(48, 80, 4), (384, 256, 8), (96, 40, 8), (256, 1024, 8), (12, 30, 3)]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def check_dense_equivalence(layer, d_in, batch=3, tokens=5):
    x = torch.randn(batch, tokens, d_in)
    y = layer(x)
    W = dense_weight(layer)
    assert W.shape == (layer.out_features, d_in)
    ref = x @ W.T
    if layer.bias is not None:
        ref = ref + layer.bias
    assert y.shape == (batch, tokens, layer.out_features)
    assert rel_err(y, ref) <= 1e-5
    # also a plain 2-D input
    x2 = torch.randn(4, d_in)
    ref2 = x2 @ W.T + (0 if layer.bias is None else layer.bias)
    assert rel_err(layer(x2), ref2) <= 1e-5


# --------------------------------------------------------------------------------- dense equivalence

@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("r", [0.5, 0.25])
def test_lowrank_equals_dense(d_in, d_out, r):
    if fraction_rank(d_in, d_out, r) < 1:
        pytest.skip("rank 0 at this size")
    check_dense_equivalence(LowRankLinear(d_in, d_out, r=r), d_in)


@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_skl_equals_dense(d_in, d_out):
    check_dense_equivalence(SKLinear(d_in, d_out, scale=0.5), d_in)


@pytest.mark.parametrize("d_in,d_out,n_dyad", DYAD_SHAPES)
@pytest.mark.parametrize("variant", DYAD_VARIANTS)
@pytest.mark.parametrize("bias", [True, False])
def test_dyad_equals_dense(d_in, d_out, n_dyad, variant, bias):
    check_dense_equivalence(DyadLinear(d_in, d_out, n_dyad=n_dyad, bias=bias, variant=variant), d_in)


@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_factored_equals_dense(d_in, d_out, bias):
    rank = max(1, min(d_in, d_out) // 3)
    layer = FactoredLinear(torch.randn(d_out, rank), torch.randn(rank, d_in), torch.randn(d_out) if bias else None)
    assert layer.rank == rank and (layer.bias is None) == (not bias)
    check_dense_equivalence(layer, d_in)
    assert sum(p.numel() for p in layer.parameters()) == rank * (d_in + d_out) + (d_out if bias else 0)


def test_factored_rejects_mismatched_rank():
    with pytest.raises(ValueError):
        FactoredLinear(torch.randn(8, 3), torch.randn(4, 5))


@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_snlinear_equals_dense(d_in, d_out, bias):
    layer = SNLinear(d_in, d_out, bias=bias)
    with torch.no_grad():  # move W away from the init so the power-iteration estimate actually matters
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        if bias:
            layer.bias.normal_()
    layer.eval()
    check_dense_equivalence(layer, d_in)
    # In training the forward does one power-iteration step from the stored u, exactly what
    # dense_weight() computes from the same u (before the forward updates it).
    layer.train()
    W = layer.dense_weight()
    x = torch.randn(2, 3, d_in)
    ref = x @ W.T + (0 if layer.bias is None else layer.bias)
    assert rel_err(layer(x), ref) <= 1e-5


@pytest.mark.parametrize("d_in,d_out", [(48, 80), (64, 192), (7, 13)])
@pytest.mark.parametrize("bias", [True, False])
def test_sigma_reparam_at_full_rank_is_the_snlinear(d_in, d_out, bias):
    """A full-rank low-rank layer holding an SNLinear's raw matrix, wrapped in SigmaReparam with its u and
    sigma, is that SNLinear: the same outputs, the same power-iteration updates of u over training
    forwards, the same gradients to the input and to sigma, in train and in eval mode."""
    torch.manual_seed(0)
    sn = SNLinear(d_in, d_out, bias=bias)
    with torch.no_grad():
        sn.weight.add_(0.05 * torch.randn_like(sn.weight))   # so u is not the exact singular vector
        sn.sigma.mul_(1.3)
        if bias:
            sn.bias.normal_()
    low = LowRankLinear(d_in, d_out, rank=min(d_in, d_out))
    spectral_init(low, sn.weight, sn.bias)                    # U S V^T of the raw weight: exactly it
    wrapped = SigmaReparam(low)
    with torch.no_grad():
        wrapped.u.copy_(sn.u), wrapped.sigma.copy_(sn.sigma)
    for training in (True, True, True, False):
        sn.train(training), wrapped.train(training)
        x = torch.randn(4, 3, d_in, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        a, b = sn(x), wrapped(x2)
        assert rel_err(b, a) <= 1e-5
        assert (wrapped.u - sn.u).abs().max() <= 1e-5
        g = torch.randn_like(a)
        (a * g).sum().backward(), (b * g).sum().backward()
        assert rel_err(x2.grad, x.grad) <= 1e-5
        assert torch.allclose(wrapped.sigma.grad, sn.sigma.grad, rtol=1e-4, atol=1e-6)
        sn.zero_grad(), wrapped.zero_grad()
    assert rel_err(wrapped.dense_weight(), sn.dense_weight()) <= 1e-5


@pytest.mark.parametrize("make", [lambda: LowRankLinear(24, 40, rank=5), lambda: SKLinear(24, 40),
                                  lambda: DyadLinear(24, 40, n_dyad=4), lambda: MonarchLinear(24, 40, blocks=4),
                                  lambda: BTTLinear(24, 40, rank=2)])
def test_sigma_reparam_wraps_every_structured_layer(make):
    """Wrapped, each structured layer is still the dense matrix it reports (the identity post-hoc
    reduction relies on), its spectral norm equals the learned sigma, and every factor gets a gradient."""
    torch.manual_seed(1)
    layer = SigmaReparam(make())
    with torch.no_grad():
        layer.sigma.fill_(2.5)
    layer.eval()
    check_dense_equivalence(layer, 24)
    assert torch.linalg.matrix_norm(dense_weight(layer).detach(), ord=2).item() == pytest.approx(2.5, rel=1e-4)
    layer.train()
    layer(torch.randn(6, 24)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert layer_kind(layer) == layer_kind(layer.layer)


def test_plain_linear_dense_weight():
    layer = nn.Linear(10, 6)
    assert dense_weight(layer) is layer.weight
    assert layer_kind(layer) == "linear"


def test_layer_kinds():
    assert layer_kind(LowRankLinear(8, 6)) == "lowrank"
    assert layer_kind(SKLinear(8, 6)) == "skl"
    assert layer_kind(DyadLinear(8, 8, n_dyad=4)) == "dyad"
    assert layer_kind(SNLinear(8, 6)) == "sn-linear"
    assert layer_kind(FactoredLinear(torch.randn(6, 2), torch.randn(2, 8))) == "factored"
    with pytest.raises(TypeError):
        layer_kind(nn.ReLU())


# --------------------------------------------------------------------------------- sizes and rules

@pytest.mark.parametrize("d_in,d_out", SHAPES + [(256, 1024), (1024, 256), (384, 256)])
@pytest.mark.parametrize("r", [0.5, 0.25, 0.9])
def test_fraction_rank_rule(d_in, d_out, r):
    rank = int(r * d_in * d_out / (d_in + d_out))
    if rank < 1:
        with pytest.raises(UserError):
            LowRankLinear(d_in, d_out, r=r)
        return
    layer = LowRankLinear(d_in, d_out, r=r)
    assert layer.rank == rank
    assert isinstance(layer.down, nn.Linear) and isinstance(layer.up, nn.Linear)
    assert layer.down.bias is not None and layer.up.bias is not None   # seed: two nn.Linear with bias
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == rank * (d_in + d_out) + rank + d_out


def test_lowrank_seed_values():
    assert fraction_rank(256, 1024, 0.5) == 102
    assert fraction_rank(384, 256, 0.5) == 76


@pytest.mark.parametrize("n,m", SHAPES + [(256, 1024), (1024, 256)])
@pytest.mark.parametrize("scale", [0.5, 0.25, 1.0])
def test_skl_rank_rule_and_params(n, m, scale):
    sn, sm = math.ceil(math.sqrt(n)), math.ceil(math.sqrt(m))
    assert sn * sn >= n > (sn - 1) ** 2 and sm * sm >= m > (sm - 1) ** 2
    assert (round_up_sqrt(n), round_up_sqrt(m)) == (sn, sm)
    k = sn * sm
    r = int(scale * n * m / (2 * k) + 0.5)
    assert skl_rank(n, m, scale) == r
    layer = SKLinear(n, m, scale=scale)
    assert layer.rank == r
    assert layer.A.shape == (k, r) and layer.B.shape == (r, k)
    assert layer.bias is None
    assert sum(p.numel() for p in layer.parameters()) == 2 * r * k


def test_skl_attn_out_seed_values():
    # attn-out of the seed's xt-vit: 384 -> 256 gives sn=20, sm=16, k=320, r=77 (row G of ANCHORS).
    layer = SKLinear(384, 256, scale=0.5)
    assert (layer.sn, layer.sm, layer.rank) == (20, 16, 77)
    assert sum(p.numel() for p in layer.parameters()) == 2 * 77 * 320


@pytest.mark.parametrize("n,m", [(48, 80), (100, 36), (7, 13)])
def test_skl_is_sum_of_kronecker_products(n, m):
    """Independent reference: S = sum_t kron(A[:, t].reshape(sn, sm), B[t].reshape(sn, sm)), cropped."""
    layer = SKLinear(n, m, scale=0.5)
    sn, sm = layer.sn, layer.sm
    S = torch.zeros(sn * sn, sm * sm)
    for t in range(layer.rank):
        S += torch.kron(layer.A[:, t].reshape(sn, sm), layer.B[t].reshape(sn, sm)).detach()
    assert rel_err(layer.dense_weight().detach(), S[:n, :m].T) <= 1e-5


def dyad_reference(layer):
    """The (d_out, d_in) matrix of a DyadLinear, built with explicit loops from the definition.

    Lower term: block j maps contiguous inputs j*bi+p to contiguous outputs j*bo+q.
    Upper term: block j reads inputs p*nd+j (strided) for it/dt, j*bi+p for ot, and writes outputs
    j*bo+q for it, q*nd+j (strided) for ot/dt.
    Built with index_put so it is differentiable in w_lower / w_upper.
    """
    nd, v = layer.n_dyad, layer.variant
    bi, bo = layer.in_features // nd, layer.out_features // nd
    rows_l, cols_l, rows_u, cols_u = [], [], [], []
    for j in range(nd):
        for p in range(bi):
            for q in range(bo):
                rows_l.append(j * bo + q)
                cols_l.append(j * bi + p)
                rows_u.append(j * bo + q if v == "it" else q * nd + j)
                cols_u.append(j * bi + p if v == "ot" else p * nd + j)
    W = torch.zeros(layer.out_features, layer.in_features)
    W = W.index_put((torch.tensor(rows_l), torch.tensor(cols_l)), layer.w_lower.reshape(-1), accumulate=True)
    W = W.index_put((torch.tensor(rows_u), torch.tensor(cols_u)), layer.w_upper.reshape(-1), accumulate=True)
    return W


@pytest.mark.parametrize("d_in,d_out,n_dyad", [(48, 80, 4), (96, 40, 8), (12, 30, 3), (8, 8, 8)])
@pytest.mark.parametrize("variant", DYAD_VARIANTS)
def test_dyad_matches_loop_reference(d_in, d_out, n_dyad, variant):
    layer = DyadLinear(d_in, d_out, n_dyad=n_dyad, variant=variant)
    W_ref = dyad_reference(layer)
    assert rel_err(layer.dense_weight().detach(), W_ref.detach()) <= 1e-6
    # gradients agree with the reference's too
    x = torch.randn(2, 3, d_in)
    g = torch.randn(2, 3, d_out)
    (layer(x) * g).sum().backward()
    got = [layer.w_lower.grad.clone(), layer.w_upper.grad.clone(), layer.bias.grad.clone()]
    layer.zero_grad()
    ((x @ dyad_reference(layer).T + layer.bias) * g).sum().backward()
    for a, b in zip(got, [layer.w_lower.grad, layer.w_upper.grad, layer.bias.grad]):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("variant", DYAD_VARIANTS)
def test_dyad_lower_term_is_block_diagonal(variant):
    d_in, d_out, nd = 48, 80, 4
    bi, bo = d_in // nd, d_out // nd
    layer = DyadLinear(d_in, d_out, n_dyad=nd, variant=variant)
    with torch.no_grad():
        layer.w_upper.zero_()
    W = layer.dense_weight().detach()
    for j, k in itertools.product(range(nd), range(nd)):
        block = W[j * bo:(j + 1) * bo, k * bi:(k + 1) * bi]
        if j == k:
            assert torch.equal(block, layer.w_lower[j].detach().T)
        else:
            assert not block.any()
    # and the upper term alone touches, for 'it', only inputs of the same residue mod n_dyad per block
    if variant == "it":
        with torch.no_grad():
            layer.w_upper.normal_()
            layer.w_lower.zero_()
        W = layer.dense_weight().detach()
        for j in range(nd):
            cols = W[j * bo:(j + 1) * bo].abs().sum(0).nonzero().flatten()
            assert set((cols % nd).tolist()) == {j}


@pytest.mark.parametrize("d_in,d_out,n_dyad", DYAD_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_dyad_param_count(d_in, d_out, n_dyad, bias):
    layer = DyadLinear(d_in, d_out, n_dyad=n_dyad, bias=bias)
    assert sum(p.numel() for p in layer.parameters()) == 2 * d_in * d_out // n_dyad + (d_out if bias else 0)


@pytest.mark.parametrize("d_in,d_out,n_dyad", [(48, 80, 7), (50, 80, 4), (48, 81, 4), (8, 8, 0)])
def test_dyad_rejects_indivisible_shapes(d_in, d_out, n_dyad):
    with pytest.raises(UserError) as e:
        DyadLinear(d_in, d_out, n_dyad=n_dyad)
    msg = str(e.value)
    assert "\n" not in msg and f"{d_in}->{d_out}" in msg and "divisible" in msg and f"n_dyad={n_dyad}" in msg


def test_dyad_rejects_unknown_variant():
    with pytest.raises(UserError, match="it, ot, dt"):
        DyadLinear(8, 8, n_dyad=4, variant="xx")


@pytest.mark.parametrize("cls,kw", [(LowRankLinear, "r"), (SKLinear, "scale")])
@pytest.mark.parametrize("scale", [0.0001, 0.0, -0.5])
def test_rank_zero_is_a_clear_error(cls, kw, scale):
    with pytest.raises(UserError, match="rank") as e:
        cls(64, 128, **{kw: scale})
    assert "scale" in str(e.value)


@pytest.mark.parametrize("variant", DYAD_VARIANTS)
def test_dyad_split_k_path_is_exact(variant, monkeypatch):
    """The row-chunked (split-K) product used on CUDA, forced on here: same outputs and gradients."""
    import laser_tool.models.families.dyad as L
    layer = DyadLinear(48, 80, n_dyad=4, variant=variant)
    x = torch.randn(2, 32, 48, requires_grad=True)       # 64 rows -> 4 chunks of 16
    g = torch.randn(2, 32, 80)
    results = []
    for chunks in (1, 4):
        monkeypatch.setattr(L, "_dyad_split", lambda a, c=chunks: c)
        x.grad = None
        layer.zero_grad()
        y = layer(x)
        y.backward(g)
        results.append([y.detach(), x.grad.clone(), layer.w_lower.grad.clone(), layer.w_upper.grad.clone()])
    for a, b in zip(*results):
        assert rel_err(a, b) <= 1e-6
    ref = x.detach() @ dyad_reference(layer).detach().T + layer.bias.detach()
    assert rel_err(results[1][0], ref) <= 1e-5


def official_dyad_forward(layer, x):
    """asappresearch/dyad's Dyad.forward (sparse_opt/dyad.py) as written there: feature-major x (d_in, N),
    weights (dyad_dim, dim_out, dim_in), bias (d_out, 1). Ours keeps (nd, bi, bo), hence the transposes."""
    nd, bi, bo = layer.n_dyad, layer.in_features // layer.n_dyad, layer.out_features // layer.n_dyad
    wl, wu = layer.w_lower.transpose(1, 2), layer.w_upper.transpose(1, 2)
    x1 = x.reshape(nd, bi, -1)
    x2 = x.reshape(bi, nd, -1).transpose(0, 1)
    out = (wl.bmm(x1) + wu.bmm(x2)).reshape(nd * bo, -1)
    return out + layer.bias[:, None]


@pytest.mark.parametrize("d_in,d_out,n_dyad", DYAD_SHAPES)
def test_dyad_it_matches_the_official_forward(d_in, d_out, n_dyad):
    layer = DyadLinear(d_in, d_out, n_dyad=n_dyad)
    x = torch.randn(d_in, 9)
    assert rel_err(layer(x.T).detach(), official_dyad_forward(layer, x).T.detach()) <= 1e-6


def test_dyad_init_bound_is_the_official_one():
    """The official layer draws every weight and the bias from U(-k, k), k = 1/sqrt(dim_in*dyad_dim): the
    full input width. At 256 -> 1024, n_dyad 8 that is 1/16 = 0.0625 (a per-block fan-in of 2*32 would
    give 0.125, twice as wide)."""
    torch.manual_seed(0)
    layer = DyadLinear(256, 1024, n_dyad=8)
    k = 1 / math.sqrt(256)
    for p in (layer.w_lower, layer.w_upper, layer.bias):
        assert p.abs().max().item() <= k and p.abs().max().item() > 0.99 * k
        # uniform on (-k, k): std k/sqrt(3)
        assert p.std().item() == pytest.approx(k / math.sqrt(3), rel=0.05)
