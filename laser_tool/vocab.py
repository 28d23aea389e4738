"""The project's vocabularies, in one place: every name a flag, a config or a table may use for an
architecture, a train-time variant, a layer role or group, a reduction method or a metric.

Layer roles are what a Linear-like layer does in a block; `info` prints them and every selector
matches on them:
  embed, head, attn-q, attn-k, attn-v, attn-qkv (vit-tiny fuses q, k, v), attn-out, ffn-in, ffn-out
"""
ARCHS = ("vit-tiny", "xt-vit")
# Architectures from outside: `timm:NAME` (timm's registry, built offline) and `python:MODULE:FUNCTION`
# (a factory the user wrote). Their constructor arguments are ModelSpec.arch_args (`--arch-arg K=V`).
EXTERNAL_ARCHS = ("timm:", "python:")
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist")   # data/files.py; also folder:PATH (data/folder.py)
# The train-time structured layer families and `--variant`'s choices are the family registry's
# (models/families/, models/spec.variants), not a list here.
PARAMS = ("standard", "structured")   # how structured factors start and learn (models/parametrize.py)
INITS = ("default", "spectral")
DYAD_VARIANTS = ("it", "ot", "dt")   # which side of a DYAD layer's second term is permuted (`--dyad-variant`)

ATTN_QKV = ("attn-q", "attn-k", "attn-v", "attn-qkv")
# `--target` groups (train-time variants) -> the roles they replace.
TARGETS = {
    "ffn-in": {"ffn-in"},
    "ffn-out": {"ffn-out"},
    "ffn": {"ffn-in", "ffn-out"},
    "attn-out": {"attn-out"},
    "attn-qkv": set(ATTN_QKV),
    "attn": {*ATTN_QKV, "attn-out"},
}
# LASER's layer types (`reduce --layer B:TYPE`) -> roles.
LAYER_TYPES = {
    "q": {"attn-q"}, "k": {"attn-k"}, "v": {"attn-v"}, "qkv": {"attn-qkv"}, "out": {"attn-out"},
    "fc_in": {"ffn-in"}, "fc_out": {"ffn-out"}, "mlp": {"ffn-in", "ffn-out"},
    "attn": {*ATTN_QKV, "attn-out"},
    "all": {*ATTN_QKV, "attn-out", "ffn-in", "ffn-out"},
}

# The post-hoc truncation methods are the method registry's (posthoc/methods.py), not a list here.
# How activation-aware methods calibrate (`reduce --calibrate`): every layer on the unreduced model's inputs
# (SVD-LLM), or each on the inputs of the model whose earlier layers are already cut (GPTQ-style).
CALIBRATIONS = ("original", "sequential")
CALIB_BATCHES = 8   # training-split batches they calibrate on by default (`--calib-batches`; a progressive cut too)
STORES = ("dense", "factored")
SEARCH_CRITERIA = ("acc", "loss")   # what a rank search's threshold bounds (`search --criterion`)
EXPORT_FORMATS = ("dense", "onnx")   # `export --format` (export/run.py)

# Settings that do not change what is trained (TrainConfig fields): a run may be resumed with them
# changed (trainers/train.py), and compare groups runs that differ only in them (analysis/describe.py).
# The study labels are among them: a study puts them on a run to name its place in the study
# (study/steps.py), and compare reads them to pick the run's baseline.
STUDY_LABELS = ("matched_to", "lr_grid")
RECIPE_NEUTRAL = frozenset({"device", "out", "name", "eval_batch_size", "compile", "data_dir", "download",
                            "tensorboard", *STUDY_LABELS})

# The learning-rate schedule's shapes (`train --schedule`, trainers/optim.py): after a linear warmup, cosine
# to 0, linear to 0, or warmup-stable-decay (constant, then linear to 0 over the last 20% of the steps).
SCHEDULES = ("cosine", "linear", "wsd")

METRICS = ("test", "val")   # the accuracy a comparison tests on
# What a frontier study slims (`study --targets`): the FFN, the attention projections, or both.
FRONTIER_TARGETS = ("ffn", "attn", "all")
