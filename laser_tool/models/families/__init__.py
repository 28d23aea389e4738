"""The structured layer families, kept in one registry as timm keeps its models: a family is one module
here (its layer class and everything the tool needs to know about it) plus one line below that imports
it. Every other module asks the registry (`FAMILIES`, `family_of`, `flag_fields`) instead of naming a family.

A family is its nn.Module class, a drop-in replacement for nn.Linear(d_in, d_out) offering
`dense_weight()` and `bias` (models/layers.py), decorated with `@register_family` and carrying:

  kind               its name: `--variant KIND`, the `kind` `info` prints and config.json records
  description        one line saying what it is
  build(d_in, d_out, bias, **setting)
                     the layer for a slot; `setting` holds the family's ModelSpec flags (`flags`) and,
                     under `--keep`, the structure setting the budget chose (it wins over the flags)
  settings(d_in, d_out, bias)
                     [(setting, parameter count)] of every structure it can make on that layer: the
                     budget-to-structure rule `--keep` picks from (budget.choose)
  setting()          the structure setting a built layer records in config.json ("structure")
  factor_fans()      {parameter: (fan_in, fan_out)} of its factors, for `--param structured`
  run_tag(spec), label(spec)
                     its setting in a run's default name and in a table row, when no --keep is given
  flags              the ModelSpec fields that set it without --keep (config.json keys, so they stay
                     ModelSpec fields; their command-line flags are in cli/options.py, which must not
                     import torch to print its help)
and optionally `spectral_init(W, bias)` (`--init spectral`) and `label_options(spec)` (words a row carries
with or without --keep). Its dense and ONNX export need nothing of its own: export multiplies out
`dense_weight()` (export/dense.py) or traces `forward` (export/onnx.py).
"""
from .registry import FAMILIES, family, family_of, flag_fields, names, register_family, unregister_family  # noqa: F401

# The registration: one line per family, in the order `--variant` lists them.
from . import lowrank, skl, dyad, monarch, btt  # noqa: E402,F401  each module registers its family
