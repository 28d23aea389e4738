"""Monarch and BTT layers, the --keep budget, the structured parameterisation and spectral init."""
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from laser_tool.models.budget import KEEP_SLACK, candidates, choose as choose_for, dense_params
from laser_tool.models.families import family, names as family_names
from laser_tool.models.families.btt import btt_params, even_split, prime_split
from laser_tool.errors import UserError
from laser_tool.models.families.lowrank import LowRankLinear
from laser_tool.models.layers import layer_kind
from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.models import parametrize
from laser_tool.models.parametrize import init_std, lr_multipliers, make_structured, spectral_init
from laser_tool.models.families.btt import BTTLinear
from laser_tool.models.families.monarch import MonarchLinear
from laser_tool.models.surgery import find_slot, make_layer, named_linears
from trainers.optim import make_optimizer, set_lr
from conftest import TINY, cli, one_line_error

KINDS = family_names()   # every registered family


def choose(kind, d_in, d_out, bias, keep):
    return choose_for(family(kind), d_in, d_out, bias, keep)


def settings(kind, d_in, d_out, bias):
    return candidates(family(kind), d_in, d_out, bias)

pytestmark = pytest.mark.usefixtures("one_thread")

# Non-square, non-power-of-two, prime and padded shapes.
SHAPES = [(48, 80), (384, 256), (100, 36), (7, 13), (96, 40), (30, 12), (1152, 512)]
BENCH_SHAPES = [(512, 256), (256, 1024), (384, 256)]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def reference_output(layer, x):
    y = x @ layer.dense_weight().T
    return y if layer.bias is None else y + layer.bias


# --------------------------------------------------------------------------------- dense equivalence


@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("make", [lambda i, o, b: MonarchLinear(i, o, blocks=min(3, i, o), bias=b),
                                  lambda i, o, b: MonarchLinear(i, o, blocks=min(4, i, o), bias=b),
                                  lambda i, o, b: BTTLinear(i, o, rank=1, bias=b),
                                  lambda i, o, b: BTTLinear(i, o, rank=3, bias=b)])
@pytest.mark.parametrize("bias", [True, False])
def test_monarch_and_btt_equal_their_dense_weight_with_gradients(d_in, d_out, make, bias):
    layer = make(d_in, d_out, bias)
    x = torch.randn(2, 5, d_in, requires_grad=True)
    g = torch.randn(2, 5, d_out)
    y = layer(x)
    assert y.shape == (2, 5, d_out) and layer.dense_weight().shape == (d_out, d_in)
    assert rel_err(y, reference_output(layer, x)) <= 1e-5
    # gradients through forward() equal those through the dense-weight formula
    (y * g).sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    (reference_output(layer, x) * g).sum().backward()
    for a, b in zip(got, [x.grad] + [p.grad for p in layer.parameters()]):
        assert rel_err(a, b) <= 1e-5


def test_monarch_is_two_block_diagonals_with_a_permutation_between():
    """Independent reference from the definition, with explicit index loops (8 -> 12, 2 blocks)."""
    layer = MonarchLinear(8, 12, blocks=2, bias=False)
    nb, (ib, mid), ob = 2, layer.w1.shape[1:], layer.w2.shape[2]
    L = torch.zeros(nb * mid, 8)                   # block-diagonal: block k maps inputs k*ib.. to k*mid..
    R = torch.zeros(nb * ob, nb * mid)
    for k in range(nb):
        L[k * mid:(k + 1) * mid, k * ib:(k + 1) * ib] = layer.w1[k].detach().T
    for j in range(nb):
        for s in range(ob):
            for q in range(mid):
                R[s * nb + j, q * nb + j] = layer.w2[j, q, s].detach()   # reads element q*nb+j, writes s*nb+j
    assert rel_err(layer.dense_weight().detach(), (R @ L)[:12]) <= 1e-6


def test_btt_is_a_two_core_block_tensor_train():
    """W[j0*n1+j1, i1*m0+i0] = sum_r core1[i1, i0, j0*r..] core2[j0, i1*r.., j1], written as loops."""
    layer = BTTLinear(12, 20, rank=2, bias=False)
    (m0, m1, n0, n1), r = layer.dims, layer.rank
    c1 = layer.core1.detach().reshape(m1, m0, n0, r)
    c2 = layer.core2.detach().reshape(n0, m1, r, n1)
    W = torch.zeros(20, 12)
    for i1 in range(m1):
        for i0 in range(m0):
            for j0 in range(n0):
                for j1 in range(n1):
                    W[j0 * n1 + j1, i1 * m0 + i0] = (c1[i1, i0, j0] * c2[j0, i1, :, j1]).sum()
    assert (m0, m1, n0, n1) == (2, 6, 2, 10)          # 12 = 2*2*3 -> (2, 6); 20 = 2*2*5 -> (2, 10)
    assert rel_err(layer.dense_weight().detach(), W) <= 1e-6


def test_full_rank_btt_expresses_any_matrix():
    """At rank min(m0, n1) a BTT layer can hold any matrix: each (i1, j0) block of W is an m0 x n1 matrix
    that one SVD splits between core 1 and core 2 exactly."""
    layer = BTTLinear(12, 20, rank=2, bias=False)          # m0=2, m1=6, n0=2, n1=10: full at 2
    (m0, m1, n0, n1), r = layer.dims, layer.rank
    target = torch.randn(20, 12)
    c1, c2 = torch.zeros(m1, m0, n0, r), torch.zeros(n0, m1, r, n1)
    for i1 in range(m1):
        for j0 in range(n0):
            block = target[j0 * n1:(j0 + 1) * n1, i1 * m0:(i1 + 1) * m0].T          # (m0, n1)
            U, S, Vh = torch.linalg.svd(block, full_matrices=False)
            c1[i1, :, j0], c2[j0, i1] = U * S, Vh
    with torch.no_grad():
        layer.core1.copy_(c1.reshape(m1, m0, n0 * r))
        layer.core2.copy_(c2.reshape(n0, m1 * r, n1))
    assert rel_err(layer.dense_weight().detach(), target) < 1e-5


# --------------------------------------------------------------------------------- parameter counts


def authors_factorize(x, n=2):
    """Qiu et al.'s `factorize` (compute-better-spent, nn/cola_nn.py) as they wrote it, on sympy's factorint:
    the reference our own prime_split must match."""
    from sympy import factorint
    numbers = [1] * n
    for prime, count in factorint(x).items():
        for _ in range(count):
            min_index = min(range(n), key=lambda i: numbers[i])
            numbers[min_index] *= prime
    return sorted(numbers)


def test_btt_splits_widths_as_the_authors_code():
    assert all(list(prime_split(x)) == authors_factorize(x) for x in range(1, 2050))
    # Where the greedy rule and the most even pair differ: 1152 = 2^7 * 3^2. Seven 2s alternate into
    # (16, 8), then 3 -> (16, 24), 3 -> (48, 24): 24 x 48, where the most even pair is 32 x 36.
    assert prime_split(1152) == (24, 48) and even_split(1152) == (32, 36)
    # vit-tiny's qkv 512 -> 1152 at rank 1 with bias: 512 = 16 x 32 both ways (m1 = 32), so
    # 512*n0 + 1152*32 + 1152: n0 = 24 gives 12,288 + 36,864 + 1,152 = 50,304 (the authors' split);
    # n0 = 32 would give 16,384 + 36,864 + 1,152 = 54,400.
    assert sum(p.numel() for p in BTTLinear(512, 1152, rank=1).parameters()) == 50304
    assert btt_params(512, 1152, 1, True) == 50304


def closed_form_params(kind, d_in, d_out, setting, bias=True):
    """Parameter counts written out per variant (independent of budget.py's helpers)."""
    if kind == "lowrank":
        r = setting["rank"]
        return d_in * r + r + r * d_out + d_out
    if kind == "skl":
        return 2 * setting["rank"] * math.ceil(math.sqrt(d_in)) * math.ceil(math.sqrt(d_out))
    if kind == "dyad":
        n = setting["n_dyad"]
        return n * (d_in // n) * (d_out // n) * 2 + d_out * bias
    if kind == "monarch":
        b = setting["blocks"]
        ib, ob = -(-d_in // b), -(-d_out // b)
        return b * ib * min(ib, ob) + b * min(ib, ob) * ob + d_out * bias
    if kind == "btt":
        r = setting["rank"]
        (m0, m1), (n0, _) = authors_factorize(d_in), authors_factorize(d_out)
        return r * (d_in * n0 + d_out * m1) + d_out * bias
    raise ValueError(kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_in,d_out", BENCH_SHAPES + [(64, 128), (96, 40)])
@pytest.mark.parametrize("keep", [0.75, 0.5, 0.25, 0.1])
def test_keep_reaches_the_nearest_fraction_and_counts_match_closed_forms(kind, d_in, d_out, keep):
    dense = d_in * d_out + d_out
    try:
        got = choose(kind, d_in, d_out, True, keep)
    except UserError as e:                     # only at the ends of what the variant can make
        fracs = [p / dense for _, p in settings(kind, d_in, d_out, True)]
        assert keep < min(fracs) * (1 - KEEP_SLACK) or keep > max(fracs) * (1 + KEEP_SLACK)
        assert "nearest reachable fraction" in str(e)
        return
    layer = make_layer(kind, d_in, d_out, True, keep=keep)
    setting = {k: v for k, v in got.items() if k not in ("params", "fraction")}
    n = sum(p.numel() for p in layer.parameters())
    assert n == got["params"] == closed_form_params(kind, d_in, d_out, setting)
    assert got["fraction"] == pytest.approx(n / dense)
    # within the variant's granularity: no other setting of this layer is nearer the request
    others = [p / dense for _, p in settings(kind, d_in, d_out, True)]
    assert all(abs(got["fraction"] - keep) <= abs(f - keep) + 1e-12 for f in others)
    if kind in ("lowrank", "skl", "btt"):       # one rank step
        step = closed_form_params(kind, d_in, d_out, {"rank": 2}) - closed_form_params(kind, d_in, d_out, {"rank": 1})
        assert abs(n - keep * dense) <= step / 2 + 1


def test_seed_settings_at_keep_half():
    # --keep 0.5 lands on the seed's own settings where the seed's formulas aim at half the weights
    assert choose("lowrank", 256, 1024, True, 0.5)["rank"] == 102        # seed: int(0.5*256*1024/1280)
    assert choose("dyad", 512, 256, True, 0.5)["n_dyad"] == 4
    assert choose("dyad", 512, 256, True, 0.25)["n_dyad"] == 8


@pytest.mark.parametrize("arch", ["vit-tiny", "xt-vit"])
@pytest.mark.parametrize("kind", ["monarch", "btt"])
def test_new_variants_are_drop_in_for_every_target(arch, kind, small):
    spec = ModelSpec(arch=arch, variant=kind, targets=["ffn", "attn"], keep=0.5, **small)
    model = build_model(spec)
    kinds = {r["name"]: r["kind"] for r in named_linears(model)}
    replaced = [n for n, k in kinds.items() if k == kind]
    assert len(replaced) == small["depth"] * (4 if arch == "vit-tiny" else 8)
    out = model(torch.randn(2, 3, 16, 16))
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    for n in replaced:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in find_slot(model, n).module.parameters())


# --------------------------------------------------------------------------------- bad input


def info(*args):
    """`laser-tool info` on the SMALL vit-tiny with these options."""
    return cli("info", "--arch", "vit-tiny", "--dim", "64", "--depth", "2", "--heads", "2", "--dim-head", "32",
               "--mlp-dim", "128", "--image-size", "16", "--patch-size", "4", *args)


@pytest.mark.parametrize("args,needles", [
    (["--variant", "lowrank", "--target", "ffn", "--keep", "0"], ["--keep 0 is outside (0, 1]"]),
    (["--variant", "lowrank", "--target", "ffn", "--keep", "1.5"], ["--keep 1.5 is outside (0, 1]"]),
    # BTT rank 1 on 64->128 (m0=m1=8, n0=8, n1=16): 64*8 + 128*8 + 128 bias = 1664 of 8320, i.e. 0.2
    (["--variant", "btt", "--target", "ffn", "--keep", "0.01"],
     ["blocks.0.ffn.in", "64->128", "cannot reach --keep 0.01", "nearest reachable fraction is 0.2"]),
    (["--variant", "monarch", "--target", "ffn", "--keep", "1"], ["blocks.0.ffn.in", "nearest reachable"]),
    (["--param", "structured"], ["--param structured needs a structured variant", "baseline"]),
    (["--variant", "half-ffn", "--keep", "0.5"], ["--keep needs a structured variant"]),
    (["--variant", "skl", "--target", "ffn", "--init", "spectral"], ["--init spectral applies only to"]),
    (["--variant", "lowrank", "--target", "ffn", "--keep", "0.5", "--scale", "0.3"], ["--keep or --scale"]),
])
def test_bad_structure_requests_are_one_line(args, needles):
    one_line_error(info(*args), *needles)


def test_info_shows_new_kinds():
    for kind in ("monarch", "btt"):
        r = info("--variant", kind, "--target", "ffn", "--keep", "0.5", "--json")
        assert r.exit_code == 0, r.output
        rows = {row["name"]: row for row in json.loads(r.stdout)["layers"]}
        assert rows["blocks.1.ffn.out"]["kind"] == kind
        assert 0.35 < rows["blocks.1.ffn.out"]["params"] / (128 * 64 + 64) < 0.65
    assert layer_kind(MonarchLinear(8, 8, 2)) == "monarch" and layer_kind(BTTLinear(8, 8)) == "btt"


# --------------------------------------------------------------------------------- parameterisation


def structured_layer(kind, d_in, d_out, keep):
    return make_structured(make_layer(kind, d_in, d_out, True, keep=keep))


@pytest.mark.parametrize("kind", KINDS)
def test_structured_init_and_multipliers_follow_the_rule(kind):
    torch.manual_seed(0)
    d_in, d_out = 384, 256
    layer = structured_layer(kind, d_in, d_out, 0.5)
    fans = {"lowrank": lambda m: {"down.weight": (d_in, m.rank), "up.weight": (m.rank, d_out)},
            "skl": lambda m: {"B": (m.sn, m.sm * m.rank), "A": (m.sn * m.rank, m.sm)},
            "dyad": lambda m: {"w_lower": (d_in // m.n_dyad, d_out // m.n_dyad),
                               "w_upper": (d_in // m.n_dyad, d_out // m.n_dyad)},
            "monarch": lambda m: {"w1": tuple(m.w1.shape[1:]), "w2": tuple(m.w2.shape[1:])},
            "btt": lambda m: {"core1": tuple(m.core1.shape[1:]), "core2": tuple(m.core2.shape[1:])}}[kind](layer)
    assert set(layer.lr_mult) == set(fans)
    for name, (fi, fo) in fans.items():
        assert layer.lr_mult[name] == pytest.approx(d_in / fi / 2)
        std = layer.get_parameter(name).std().item()
        assert std == pytest.approx(math.sqrt(1 / fi) * min(1, math.sqrt(fo / fi)), rel=0.1)
        assert init_std(fi, fo) == pytest.approx(math.sqrt(1 / fi) * min(1, math.sqrt(fo / fi)))


def update_ratio(kind, d_in, d_out, keep, param, opt="sgd"):
    """RMS of the change of the layer's output on a fixed batch after one step, over the dense layer's."""
    return parametrize.update_ratio(lambda: make_layer(kind, d_in, d_out, True, keep=keep), d_in, d_out,
                                    param, opt)


TALL_LOWRANK = "Qiu et al.'s rule sizes Adam steps; under SGD a tall low-rank layer's update grows as " \
               "sqrt(d_out/rank)/2 (2.4x at 256->1024, rank 51)"
UPDATE_CASES = [pytest.param(k, s, keep, marks=pytest.mark.xfail(strict=True, reason=TALL_LOWRANK))
                if (k, s, keep) == ("lowrank", (256, 1024), 0.25) else (k, s, keep)
                for k in KINDS for s in BENCH_SHAPES for keep in (0.5, 0.25)]


@pytest.mark.parametrize("kind,shape,keep", UPDATE_CASES)
def test_structured_update_size_is_within_2x_of_dense(kind, shape, keep):
    ratio = update_ratio(kind, *shape, keep, "structured")
    print(f"{kind} {shape} keep {keep}: structured {ratio:.2f}x dense, "
          f"standard {update_ratio(kind, *shape, keep, 'standard'):.2f}x")
    assert 0.5 <= ratio <= 2.0


@pytest.mark.parametrize("kind,keep", [("monarch", 0.5), ("monarch", 0.25), ("btt", 0.5), ("btt", 0.25),
                                       ("dyad", 0.25)])
@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_standard_update_size_is_not(kind, keep, shape):
    """Where the seed's parameterisation misses by more than 2x; for low-rank, SKL and DYAD at 0.5 it is
    within 2x as well at these shapes (see the note), so those are not claimed here."""
    standard = update_ratio(kind, *shape, keep, "standard")
    structured = update_ratio(kind, *shape, keep, "structured")
    assert not 0.5 <= standard <= 2.0
    assert abs(math.log(structured)) < abs(math.log(standard))


def test_optimizer_groups_carry_the_multipliers(small):
    base = build_model(ModelSpec(arch="vit-tiny", variant="lowrank", targets=["ffn"], **small))
    opt = make_optimizer(base, 1e-3, 0.05)
    assert len(opt.param_groups) == 2 and all("lr_mult" not in g for g in opt.param_groups)   # standard: as before
    model = build_model(ModelSpec(arch="vit-tiny", variant="lowrank", targets=["ffn"], param="structured", **small))
    mults = lr_multipliers(model)
    assert set(mults) == {f"blocks.{b}.ffn.{io}.{f}.weight" for b in range(2) for io in ("fc_in", "fc_out")
                          for f in ("down", "up")}
    opt = make_optimizer(model, 1e-3, 0.05)
    set_lr(opt, 2e-3)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["lr"] == pytest.approx(2e-3 * mults.get(name, 1.0))
        assert g["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


# --------------------------------------------------------------------------------- spectral init


@pytest.mark.parametrize("d_in,d_out", [(48, 80), (80, 48), (64, 64)])
def test_spectral_init_at_full_rank_is_the_dense_init(d_in, d_out):
    dense = nn.Linear(d_in, d_out)
    layer = spectral_init(LowRankLinear(d_in, d_out, rank=min(d_in, d_out)), dense.weight, dense.bias)
    assert rel_err(layer.dense_weight().detach(), dense.weight.detach()) <= 1e-5
    assert rel_err(layer.bias.detach(), dense.bias.detach()) <= 1e-6
    x = torch.randn(4, d_in)
    assert rel_err(layer(x).detach(), dense(x).detach()) <= 1e-5
    # the factors are balanced: U sqrt(S) and sqrt(S) V^T have equal singular values
    su = torch.linalg.svdvals(layer.up.weight.detach())
    sv = torch.linalg.svdvals(layer.down.weight.detach())
    assert rel_err(su, sv) <= 1e-4


def test_spectral_init_in_a_model_truncates_its_own_dense_init(small):
    torch.manual_seed(0)
    base = build_model(ModelSpec(arch="xt-vit", **small))
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="xt-vit", variant="lowrank", targets=["ffn-in"], init="spectral",
                                  param="structured", **small))
    W = find_slot(base, "blocks.0.ffn1.in").module.weight.detach()
    layer = find_slot(model, "blocks.0.ffn1.in").module
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    best = (U[:, :layer.rank] * S[:layer.rank]) @ Vh[:layer.rank]
    assert rel_err(layer.dense_weight().detach(), best) <= 1e-4      # Eckart-Young truncation of the dense init
    assert set(layer.lr_mult) == {"down.weight", "up.weight"}        # structured multipliers kept


def test_parameter_counts_of_a_model_change_by_the_budget(small):
    base = count_params(build_model(ModelSpec(arch="xt-vit", **small)))
    model = build_model(ModelSpec(arch="xt-vit", variant="btt", targets=["ffn"], keep=0.5, **small))
    rows = [r for r in named_linears(model) if r["kind"] == "btt"]
    saved = sum(dense_params(r["in_features"], r["out_features"], True) - r["params"] for r in rows)
    assert count_params(model) == base - saved


# --------------------------------------------------------------------------------- a training run records it


def test_run_records_the_budget_reached_and_the_multipliers_and_resumes_bitwise(tmp_path):
    from safetensors.torch import load_file
    from synthetic import write_tiny_mnist
    from trainers.config import TrainConfig
    from trainers.train import train
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    spec = replace(TINY, variant="lowrank", targets=["ffn"], keep=0.5, param="structured", init="spectral")
    cfg = TrainConfig(model=spec, dataset="mnist", data_dir=str(data_dir), val_size=200, epochs=2, augment=False,
                      batch_size=100, lr=3e-3, warmup_epochs=0.5, device="cpu", out=str(tmp_path / "a"))
    run = train(cfg, progress=False)
    assert run.name == "vit-tiny-mnist-lowrank-ffn-k0.5-structured-spectral-mlp64-seed0"
    st = json.loads((run / "config.json").read_text())["structure"]
    assert (st["keep"], st["param"], st["init"]) == (0.5, "structured", "spectral")
    fin = st["layers"]["blocks.0.ffn.in"]          # 32 -> 64: rank 10 gives (10*96 + 10 + 64) / (32*64 + 64)
    assert (fin["kind"], fin["rank"], fin["params"], fin["dense_params"]) == ("lowrank", 10, 1034, 2112)
    assert fin["fraction"] == pytest.approx(1034 / 2112, abs=1e-6)
    assert fin["lr_multipliers"] == {"down.weight": 0.5, "up.weight": pytest.approx(32 / 10 / 2)}
    assert abs(st["fraction"] - 0.5) < 0.05
    # an interrupted structured run resumes bitwise: the lr-multiplier groups survive the resume point
    with pytest.raises(KeyboardInterrupt):
        train(replace_out(cfg, tmp_path / "b"), progress=False, _interrupt_at_step=13)
    resumed = train(replace_out(cfg, tmp_path / "b"), progress=False)
    a, b = load_file(run / "state.safetensors"), load_file(resumed / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def replace_out(cfg, out):
    return replace(cfg, out=str(out))


def test_runs_written_before_the_new_model_settings_still_match():
    from trainers.config import TrainConfig
    from trainers.train import settings
    cfg = TrainConfig(model=ModelSpec(arch="vit-tiny", variant="lowrank", targets=["ffn"])).to_dict()
    old = json.loads(json.dumps(cfg))
    for k in ("keep", "param", "init", "monarch_blocks", "btt_rank"):
        del old["model"][k]                      # as config.json looked before these settings existed
    assert settings({"train": old}) == settings({"train": cfg})
    old["model"]["scale"] = 0.25
    assert settings({"train": old}) != settings({"train": cfg})


def test_monarch_bias_init_follows_fly():
    """HazyResearch/fly StructuredLinear.reset_parameters_bias: U(-1/sqrt(d_out), 1/sqrt(d_out)) (the bias's
    own length as its fan-in); each factor U(-1/sqrt(fan_in)) (kaiming_uniform a=sqrt(5))."""
    torch.manual_seed(0)
    layer = MonarchLinear(64, 1024, blocks=4)            # ib 16, mid 16, ob 256
    bound = 1 / math.sqrt(1024)
    assert bound * 0.95 < layer.bias.abs().max().item() <= bound
    for w, fan_in in ((layer.w1, 16), (layer.w2, 16)):
        assert 0.95 / math.sqrt(fan_in) < w.abs().max().item() <= 1 / math.sqrt(fan_in)


def fly_monarch_reference(layer, x):
    """HazyResearch/fly blockdiag_butterfly_multiply_reference(version=3) with MonarchLinear's pad/crop,
    written with reshapes for einops' rearranges. fly's w1 is (k, q, p), w2 (l, s, r): ours transposed."""
    w1, w2 = layer.w1.transpose(1, 2), layer.w2.transpose(1, 2)
    nb, b = layer.blocks, x.shape[0]
    x = torch.nn.functional.pad(x, (0, nb * w1.shape[2] - x.shape[1]))
    out1 = x @ torch.block_diag(*w1.unbind(0)).T
    out1 = out1.reshape(b, -1, nb).transpose(1, 2).reshape(b, -1)                # 'b (r l) -> b (l r)'
    out2 = out1 @ torch.block_diag(*w2.unbind(0)).T
    out2 = out2.reshape(b, nb, -1).transpose(1, 2).reshape(b, -1)                # 'b (l s) -> b (s l)'
    return out2[:, :layer.out_features] + layer.bias


@pytest.mark.parametrize("d_in,d_out,blocks", [(48, 80, 4), (80, 48, 4), (100, 36, 3), (64, 64, 8)])
def test_monarch_matches_fly_reference(d_in, d_out, blocks):
    layer = MonarchLinear(d_in, d_out, blocks=blocks)
    x = torch.randn(5, d_in)
    assert rel_err(layer(x).detach(), fly_monarch_reference(layer, x).detach()) <= 1e-6
