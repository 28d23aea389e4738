"""The seed's two models to the parameter, and layer surgery that changes exactly the intended layers."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from laser_tool.errors import UserError
from laser_tool.models.families import family, names as family_names
from laser_tool.models.layers import SigmaReparam, unwrapped
from laser_tool.vocab import ARCHS
from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.vocab import TARGETS
from laser_tool.models.surgery import apply_variant, find_slot, named_linears

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- exact parameter counts


def test_vit_tiny_seed_count():
    assert count_params(build_model(ModelSpec(arch="vit-tiny"))) == 4_363_254


def test_vit_tiny_dyad_count():
    spec = ModelSpec(arch="vit-tiny", mlp_dim=1024, variant="dyad", targets=["ffn"], n_dyad=8)
    model = build_model(spec)
    assert count_params(model) == 4_366_326
    kinds = {r["name"]: r["kind"] for r in named_linears(model)}
    assert all(kinds[f"blocks.{i}.ffn.{io}"] == "dyad" for i in range(4) for io in ("in", "out"))


def test_xt_vit_seed_count():
    assert count_params(build_model(ModelSpec(arch="xt-vit"))) == 5_812_538


def test_xt_vit_skl_attn_out_count():
    # The seed blog printed 5,606,202 for this row, but the SKL code it posted gives, for each of the 4
    # attn-out layers (384 -> 256): sn=20, sm=16, k=320, r=int(0.5*384*256/(2*320)+0.5)=77, so
    # 2*77*320 = 49,280 params instead of 98,304: 5,812,538 - 4*(98,304 - 49,280) = 5,616,442.
    # The blog's figure is 10,240 lower (= 4 * 2,560 = 4 * 2*k*4, i.e. r=73 would match it); it cannot
    # be reproduced from the posted formula, so we follow the formula (ANCHORS row G).
    spec = ModelSpec(arch="xt-vit", variant="skl", targets=["attn-out"], scale=0.5)
    model = build_model(spec)
    assert count_params(model) == 5_616_442
    skl = [r for r in named_linears(model) if r["kind"] == "skl"]
    assert [r["name"] for r in skl] == [f"blocks.{i}.attn.out" for i in range(4)]
    assert all(r["params"] == 2 * 77 * 320 for r in skl)


# ----------------------------------------------------------------------------- model-level variants


def ffn_widths(model):
    return {r["out_features"] for r in named_linears(model) if r["name"].endswith(".in")}


@pytest.mark.parametrize("arch", ARCHS)
def test_half_ffn_and_mlp_dim_override(arch, small):
    assert ffn_widths(build_model(ModelSpec(arch=arch, **small))) == {128}
    assert ffn_widths(build_model(ModelSpec(arch=arch, variant="half-ffn", **small))) == {64}
    small["mlp_dim"] = 96
    assert ffn_widths(build_model(ModelSpec(arch=arch, **small))) == {96}
    assert ffn_widths(build_model(ModelSpec(arch=arch, variant="half-ffn", **small))) == {48}


def test_seed_widths_and_half_ffn():
    assert ffn_widths(build_model(ModelSpec(arch="xt-vit"))) == {1024}
    assert ffn_widths(build_model(ModelSpec(arch="xt-vit", variant="half-ffn"))) == {512}
    assert ModelSpec(arch="vit-tiny").resolved().mlp_dim == 256
    assert ModelSpec(arch="vit-tiny", mlp_dim=1024).resolved().mlp_dim == 1024


@pytest.mark.parametrize("arch", ARCHS)
def test_small_model_shapes_and_channels(arch, small):
    model = build_model(ModelSpec(arch=arch, channels=1, image_size=28, num_classes=7, **{
        k: v for k, v in small.items() if k != "image_size"}))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_spec_errors():
    with pytest.raises(UserError, match="vit-tiny"):
        ModelSpec(arch="nope").resolved()
    with pytest.raises(UserError, match="half-ffn"):
        ModelSpec(variant="nope").resolved()
    with pytest.raises(UserError, match="patch"):
        ModelSpec(image_size=30, patch_size=4).resolved()
    with pytest.raises(UserError, match="--target"):
        build_model(ModelSpec(variant="skl", dim=64, depth=1, heads=2, dim_head=32, mlp_dim=128))


def test_spec_round_trip():
    spec = ModelSpec(arch="xt-vit", variant="dyad", targets=["ffn"], n_dyad=4, blocks=[1])
    assert ModelSpec.from_dict({**spec.to_dict(), "unknown_key": 1}) == spec
    off = ModelSpec(variant="lowrank", targets=["attn"], sigma_reparam=False)
    assert ModelSpec.from_dict(off.to_dict()) == off


def test_sigma_reparam_is_kept_unless_switched_off(small):
    """vit-tiny's attention projections are SNLinear: a structured layer there keeps sigmaReparam by
    default; --no-sigma-reparam (and a structured spec written before the setting) drops it."""
    def attn_kinds(spec):
        return {type(find_slot(build_model(spec), n).module) for n in ("blocks.0.attn.qkv", "blocks.0.attn.out")}
    spec = ModelSpec(arch="vit-tiny", variant="lowrank", targets=["attn"], keep=0.5, **small)
    assert attn_kinds(spec) == {SigmaReparam}
    assert attn_kinds(replace(spec, sigma_reparam=False)) == {family("lowrank")}
    old = {k: v for k, v in spec.to_dict().items() if k != "sigma_reparam"}   # a config.json from before
    assert ModelSpec.from_dict(old).sigma_reparam is False
    assert attn_kinds(ModelSpec.from_dict(old)) == {family("lowrank")}
    # one more parameter (sigma) per wrapped layer, nothing else
    n_on, n_off = count_params(build_model(spec)), count_params(build_model(replace(spec, sigma_reparam=False)))
    assert n_on - n_off == 2 * small["depth"]


# ----------------------------------------------------------------------------- surgery

# Which layers each target must replace, written out per architecture (not derived from surgery.py).
EXPECTED = {
    "vit-tiny": {
        "ffn-in": ["ffn.in"], "ffn-out": ["ffn.out"], "ffn": ["ffn.in", "ffn.out"],
        "attn-out": ["attn.out"], "attn-qkv": ["attn.qkv"], "attn": ["attn.qkv", "attn.out"],
    },
    "xt-vit": {
        "ffn-in": ["ffn1.in", "ffn2.in"], "ffn-out": ["ffn1.out", "ffn2.out"],
        "ffn": ["ffn1.in", "ffn1.out", "ffn2.in", "ffn2.out"],
        "attn-out": ["attn.out"], "attn-qkv": ["attn.q", "attn.k", "attn.v"],
        "attn": ["attn.q", "attn.k", "attn.v", "attn.out"],
    },
}


def test_expected_table_covers_all_targets():
    assert set(TARGETS) == set(EXPECTED["vit-tiny"]) == set(EXPECTED["xt-vit"])


def forward_backward(model, image_size=16, channels=3):
    model.train()
    out = model(torch.randn(2, channels, image_size, image_size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([1, 7])).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", family_names())    # every registered family, so a new one is covered
@pytest.mark.parametrize("target", list(EXPECTED["vit-tiny"]))
def test_surgery_changes_exactly_the_intended_layers(arch, kind, target, small):
    model = build_model(ModelSpec(arch=arch, **small))
    before = {r["name"]: r for r in named_linears(model)}
    n_before = count_params(model)
    replaced = apply_variant(model, ModelSpec(variant=kind, targets=[target], scale=0.5, n_dyad=4))
    after = {r["name"]: r for r in named_linears(model)}

    expected = {f"blocks.{i}.{suffix}" for i in range(small["depth"]) for suffix in EXPECTED[arch][target]}
    assert set(replaced) == expected
    assert list(after) == list(before)                     # same names, same order
    changed = {n for n in after if after[n]["kind"] != before[n]["kind"]}
    assert changed == expected
    for n in after:
        assert (after[n]["in_features"], after[n]["out_features"]) == \
               (before[n]["in_features"], before[n]["out_features"])
        if n in expected:
            assert after[n]["kind"] == kind
            m = find_slot(model, n).module
            assert isinstance(unwrapped(m), family(kind))
            # a structured layer replacing a sigmaReparam projection keeps sigmaReparam; others get none
            assert isinstance(m, SigmaReparam) == (before[n]["kind"] == "sn-linear")
    # the model's parameter count moved by exactly the replaced layers' difference
    assert count_params(model) == n_before - sum(before[n]["params"] - after[n]["params"] for n in expected)

    forward_backward(model, small["image_size"])
    for n in expected:
        for pname, p in find_slot(model, n).module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (n, pname)


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_restrict_the_variant(arch, small):
    spec = ModelSpec(arch=arch, variant="dyad", targets=["ffn", "attn-out"], n_dyad=4, blocks=[1], **small)
    model = build_model(spec)
    changed = {r["name"] for r in named_linears(model) if r["kind"] == "dyad"}
    expected = {f"blocks.1.{s}" for s in EXPECTED[arch]["ffn"] + EXPECTED[arch]["attn-out"]}
    assert changed == expected
    forward_backward(model, small["image_size"])


@pytest.mark.parametrize("arch", ARCHS)
def test_build_model_applies_variant_like_apply_variant(arch, small):
    a = build_model(ModelSpec(arch=arch, variant="lowrank", targets=["ffn-in", "attn-out"], scale=0.25, **small))
    b = build_model(ModelSpec(arch=arch, **small))
    apply_variant(b, ModelSpec(variant="lowrank", targets=["ffn-in", "attn-out"], scale=0.25))
    assert named_linears(a) == named_linears(b)
    assert count_params(a) == count_params(b)


@pytest.mark.parametrize("arch", ARCHS)
def test_names_are_shared_between_architectures(arch, small):
    names = [r["name"] for r in named_linears(build_model(ModelSpec(arch=arch, **small)))]
    assert names[0] == "embed" and names[-1] == "head"
    assert len(names) == len(set(names))
    assert {"blocks.0.attn.out", "blocks.1.attn.out"} <= set(names)


def test_surgery_errors(small):
    model = build_model(ModelSpec(arch="vit-tiny", **small))
    with pytest.raises(UserError, match="lowrank, skl, dyad"):
        apply_variant(model, ModelSpec(variant="sparse", targets=["ffn"]))
    with pytest.raises(UserError, match="ffn-in"):
        apply_variant(model, ModelSpec(variant="skl", targets=["mlp"]))
    with pytest.raises(UserError, match="blocks"):
        apply_variant(model, ModelSpec(variant="skl", targets=["ffn"], blocks=[5]))
    with pytest.raises(UserError) as e:
        apply_variant(model, ModelSpec(variant="dyad", targets=["ffn-in"], n_dyad=3))
    msg = str(e.value)
    assert "blocks.0.ffn.in" in msg and "64->128" in msg and "divisible by n_dyad=3" in msg and "\n" not in msg
    with pytest.raises(UserError, match="blocks.0.ffn.in.*rank 0"):
        apply_variant(model, ModelSpec(variant="lowrank", targets=["ffn-in"], scale=0.0001))
    with pytest.raises(UserError, match="did you mean"):
        find_slot(model, "blocks.0.ffn.inn")
