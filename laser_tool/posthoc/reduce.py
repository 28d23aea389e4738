"""Post-hoc rank reduction of a trained run: pick layers, truncate them, write a new run.

    reduce_run("runs/base", ["*.ffn.in", "3:fc_out=rho:0.1"],
               ReduceSettings(rank="params:0.5", method="whiten", store="factored")) -> Path of the new run

Layers are chosen by selectors (models/selectors.py) with rank SPECs (ranks.py), truncated by one of
the methods of decompose.py (calibrated on the training split, calibration.py). The input run is never
written to. The output is a run directory the other commands read like a trained one, whose config
records every reduction step, so reductions compose.
"""
import contextlib
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..data import canonical_name, load_dataset
from ..device import resolve_device
from ..errors import UserError, is_positive_int
from ..fileio import remove_debris
from ..lock import output_lock
from ..models import ModelSpec, count_params
from ..models.evaluate import eval_amp_dtype, evaluate, evaluate_with_predictions, precision_name
from ..models.layers import FactoredLinear, SNLinear, dense_weight, layer_kind
from ..models.surgery import slots
from ..runs.checkpoint import check_checkpoint, checkpoint_path, load_run
from ..runs.predictions import predictions_bytes
from ..runs.reader import check_input_run, check_rescored, finished_run
from ..runs.schema import CONFIG, FINAL, PREDICTIONS, REDUCE, ReducedFinal
from ..runs.writer import check_out, default_out, write_run
from ..vocab import CALIB_BATCHES, STORES
from .calibration import (CALIB_BATCH_SIZE, calibrate_sequentially, calibration_batches, check_calibrate,
                          collect_calibration)
from .decompose import Decomposition, energy_kept, numerical_rank, relative_error, singular_values
from .layer_time import no_time_saved
from .methods import calibrated
from .ranks import resolve_rank, select


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Replacing one layer


def reduced_module(module: nn.Module, U: torch.Tensor, V: torch.Tensor, store: str):
    """(new module, ModelSpec.layers override or None) holding U @ V; `module` is left untouched."""
    bias = module.bias
    bias = None if bias is None else bias.detach().clone()
    dev = dense_weight(module).device
    U, V = U.to(dev), V.to(dev)
    if store == "factored":
        return FactoredLinear(U, V, bias), {"kind": "factored", "rank": V.shape[0], "bias": bias is not None}
    W = (U @ V).to(dense_weight(module).dtype)
    if isinstance(module, SNLinear):
        new = copy.deepcopy(module)
        new.load_dense_weight(W)                        # keeps sigmaReparam, so the spec is unchanged
        return new, None
    new = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device=dev, dtype=W.dtype)
    with torch.no_grad():
        new.weight.copy_(W)
        if bias is not None:
            new.bias.copy_(bias)
    if type(module) is nn.Linear:
        return new, None
    return new, {"kind": "linear", "bias": bias is not None}   # a structured layer becomes dense


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Runs


def run_data(config: dict, data_dir=None, dataset=None):
    """The run's own train/val/test split (same seed, val size and subset as training)."""
    check_own_dataset(config, dataset)
    name = dataset or config.get("dataset")
    if not name:
        raise UserError("the run's config names no dataset; pass --dataset (and --data-dir)")
    model = config.get("model", {})  # a folder dataset is decoded to the size and channels the model was built for
    return load_dataset(name, data_dir or config.get("data_dir"), False, config.get("val_size"),
                        config.get("seed", 0), config.get("train_subset"), model.get("image_size"),
                        model.get("channels"), bool(config.get("skip_bad_images")))


def check_own_dataset(config: dict, dataset) -> None:
    """--dataset names the data of a checkpoint whose config names none; a run is scored only on its own
    (a folder: the same folder), or its new run would record the parent's data beside another's scores."""
    own = config.get("dataset")
    if dataset and own and canonical_name(dataset) != canonical_name(own):
        raise UserError(f"--dataset {dataset} is not the data this run was trained on ({own}); drop --dataset "
                        f"(it is for checkpoints whose config names no dataset)")


@dataclass(frozen=True)
class ReduceSettings:
    """How a reduction cuts and where it runs: one object, built once (by `reduce`, `search --apply` or a
    study step) and handed on whole. `rank` is the SPEC for selectors without their own; `calibrate`
    original | sequential (calibration.py); `data_dir` and `dataset` override the run's own data."""
    rank: str = None
    method: str = "svd"
    store: str = "dense"
    calib_batches: int = CALIB_BATCHES
    calibrate: str = "original"
    device: str = "cpu"
    batch_size: int = 500
    data_dir: str = None
    dataset: str = None


def reduce_run(run, selectors, settings: ReduceSettings = ReduceSettings(), out=None, splits=None,
               extra=None) -> Path:
    """Reduce the selected layers of a run and write a new run directory; returns its path.

    `splits` reuses data already loaded; `extra` ({file name: JSON object}) adds files to the new run."""
    return reduce_run_budgets(run, {0: selectors}, settings, outs={0: out}, splits=splits,
                              extra={0: extra or {}})[0]


def reduce_run_budgets(run, selectors_by_budget: dict, settings: ReduceSettings = ReduceSettings(), outs=None,
                       splits=None, extra=None, requests=None) -> dict:
    """One reduced run per budget ({budget: selectors} -> {budget: Path}), each identical to what
    `reduce_run(run, selectors, settings)` writes, but sharing the work budgets have in common: the model
    and data are loaded once, the calibration pass runs once over the union of the selected layers,
    each layer is decomposed once (any rank is two slices of the same factors, spectrum.py), and the
    unreduced model is scored once. Only the cut, its scoring and the write are per budget (and, with
    calibrate="sequential", the calibration and decomposition, which depend on the budget's earlier cuts).
    `outs`, `extra` ({file name: JSON object}) and `requests` are keyed by budget like the selectors; a
    request (what a rank search asked for, search.py) is recorded in the reduction step beside the selectors
    it chose, and stands for them when runs are grouped (analysis/describe.py)."""
    run, rank, method, store = Path(run), settings.rank, settings.method, settings.store
    calib_batches, calibrate = settings.calib_batches, settings.calibrate
    if store not in STORES:
        raise UserError(f"unknown store {store!r}; choose dense or factored")
    aware = calibrated(method)   # refuses an unknown method, naming the registered ones (methods.py)
    check_batch_size(settings.batch_size)
    check_calibrate(calibrate, method)
    if aware and not is_positive_int(calib_batches):
        raise UserError(f"--calib-batches {calib_batches!r}: activation-aware methods need at least one batch")
    if not selectors_by_budget:
        raise UserError("no budget given: pass at least one set of layer selectors")
    outs, extra = outs or {}, extra or {}
    dev = resolve_device(settings.device)
    src = checkpoint_path(run)
    check_checkpoint(src)  # a missing, corrupt or lying input fails before anything is written
    check_input_run(run, "reduce:")
    jobs = {}
    for budget, selectors in selectors_by_budget.items():
        args = dict(selectors=list(selectors) if not isinstance(selectors, str) else [selectors],
                    rank=None if rank is None else str(rank), method=method, store=store,
                    calib_batches=calib_batches if aware else 0)
        if calibrate != "original":  # recorded only when not the default, so earlier outputs keep their names
            args["calibrate"] = calibrate
        if (requests or {}).get(budget) is not None:
            args["request"] = requests[budget]
        jobs[budget] = (selectors, args, check_out(outs.get(budget) or default_out(run, "reduced", args), run))
    if len({j[2].resolve() for j in jobs.values()}) < len(jobs):
        raise UserError("two budgets would write the same output directory; give each its own --out")
    with contextlib.ExitStack() as stack:
        for budget in sorted(jobs, key=lambda b: str(jobs[b][2])):  # one writer per output, in a fixed order
            out = jobs[budget][2]
            stack.enter_context(output_lock(out))
            remove_debris(out.parent, {out.name})  # what a killed writer left is cleared first
            check_out(out, run)  # again under the lock: another writer may have finished meanwhile
        return _reduce(run, src, jobs, settings, dev, splits, extra)


def check_batch_size(batch_size) -> None:
    if not is_positive_int(batch_size):
        raise UserError(f"--batch-size {batch_size!r} must be an integer >= 1")


def _reduce(run, src, jobs, settings: ReduceSettings, dev, splits, extra) -> dict:
    """The work of reduce_run_budgets, under the output locks: load once, decompose and calibrate once,
    score the unreduced model once, then cut, score and write each budget."""
    t0 = time.time()
    method, store, batch_size = settings.method, settings.store, settings.batch_size
    model, config = load_run(run, dev)
    chosen_by = {budget: select(model, selectors, settings.rank) for budget, (selectors, _, _) in jobs.items()}
    splits = splits or run_data(config, settings.data_dir, settings.dataset)
    layer, plans = _plan_layers(chosen_by, method)
    sequential = settings.calibrate == "sequential"
    calib, calib_info, batches = _calibrate(model, layer, method, splits, settings.calib_batches, config, dev,
                                            sequential)
    amp = eval_amp_dtype(dev, config.get("amp", "auto"))  # as the parent was scored
    before = dict(val=evaluate(model, splits.val_x, splits.val_y, batch_size, dev, amp),
                  test=evaluate(model, splits.test_x, splits.test_y, batch_size, dev, amp),
                  params=count_params(model), seconds=time.time() - t0)
    check_rescored(run, before["test"][1], len(splits.test_y), "reduce:")  # a legacy parent's claim, re-scored
    written = {}
    for budget, (_, args, out) in jobs.items():
        t1 = time.time()
        reduced = copy.deepcopy(model) if len(jobs) > 1 else model
        spec, layers, warnings = _cut(reduced, config, plans[budget], layer, method, calib, store,
                                      batches if sequential else None, dev)
        if store == "factored":  # a measurement of this machine now: said, not recorded in reduce.json
            for w in no_time_saved(reduced, spec, layers):
                warn(w)
        for w in warnings:
            warn(w)
        after = dict(val=evaluate_with_predictions(reduced, splits.val_x, splits.val_y, batch_size, dev, amp),
                     test=evaluate_with_predictions(reduced, splits.test_x, splits.test_y, batch_size, dev, amp))
        cut = dict(spec=spec, layers=layers, warnings=warnings, model=reduced, before=before, after=after,
                   calib=calib_info, seconds=before["seconds"] + time.time() - t1)
        files = _run_files(run, src, args, config, out, cut, splits, dev, amp)
        new_config = files.pop(CONFIG)
        write_run(out, {**files, **extra.get(budget, {})}, reduced, new_config)
        written[budget] = out
    return written


def _plan_layers(chosen_by: dict, method: str):
    """({layer: (W, s, Decomposition or None)}, {budget: [(layer, RankSpec, rank)]}). Every rank is
    resolved before calibration and evaluation, so bad SPECs fail fast. Plain SVD's decomposition is W's
    own spectrum, so it is computed here, once per layer for all budgets."""
    layer = {}
    for chosen in chosen_by.values():
        for name, (slot, _) in chosen.items():
            if name not in layer:
                W = dense_weight(slot.module).detach()
                dec = None if calibrated(method) else Decomposition(W)
                layer[name] = (W, dec.s if dec is not None else singular_values(W), dec)
    plans = {b: [(name, spec, resolve_rank(spec, *layer[name][0].shape, layer[name][1], name))
                 for name, (_, spec) in chosen.items()] for b, chosen in chosen_by.items()}
    return layer, plans


def _calibrate(model, layer: dict, method: str, splits, calib_batches: int, config: dict, dev, sequential=False):
    """({layer: Calib} on the unreduced model, what the run records about the calibration, the batches);
    none for a method without calibration (svd). Sequential calibration happens during each budget's cut:
    here its batches are drawn."""
    if not calibrated(method):
        return {}, None, None
    batches = calibration_batches(splits, calib_batches, config.get("seed", 0))
    info = dict(split="train", batches=len(batches), batch_size=CALIB_BATCH_SIZE,
                images=sum(len(b[0]) for b in batches), seed=config.get("seed", 0) + 1)
    if sequential:
        return {}, dict(info, mode="sequential"), batches
    calib = collect_calibration(model, forward_order(model, layer), batches, method, dev)
    return calib, info, batches


def forward_order(model, names) -> list:
    order = {s.name: i for i, s in enumerate(slots(model))}
    return sorted(names, key=order.get)


def _cut(reduced, config: dict, plan: list, layer: dict, method: str, calib: dict, store: str, batches=None,
         dev="cpu"):
    """Replace one budget's layers in `reduced`, in place: (its ModelSpec, per-layer records, warnings).
    With `batches` (sequential calibration) the layers are cut in forward order, each calibrated on
    `reduced` as the earlier cuts left it, and decomposed for this budget alone."""
    by_name = {s.name: s for s in slots(reduced)}
    spec = ModelSpec.from_dict(copy.deepcopy(config["model"]))  # its layers dict is filled per budget
    layers, warnings = [], []
    entry = {name: (rspec, r) for name, rspec, r in plan}

    def cut(name, layer_calib=None):
        (rspec, r), (W, s, dec) = entry[name], layer[name]
        slot = by_name[name]
        old = slot.module
        d_out, d_in = W.shape
        if layer_calib is not None:                     # sequential: this budget's own decomposition
            dec = Decomposition(W, method, layer_calib)
        elif dec is None:
            dec = Decomposition(W, method, calib.get(name))
            layer[name] = (W, s, dec)
        U, V = dec.factors(r)
        new, override = reduced_module(old, U, V, store)
        if n_params(new) >= n_params(old):  # against the layer replaced: a DYAD or low-rank layer can grow
            warnings.append(f"{name}: the {store} rank-{r} layer holds {n_params(new):,} parameters, not "
                            f"fewer than the {layer_kind(old)} layer it replaces ({n_params(old):,}): it "
                            f"saves nothing")
        k = numerical_rank(s, W.shape)
        if r > k:
            warnings.append(f"{name}: rank {r} is above the layer's numerical rank {k}; nothing is cut")
        slot.set(new)
        if override is not None:
            spec.layers[name] = override
        layers.append(dict(name=name, shape=[d_out, d_in], kind_before=layer_kind(old),
                           kind_after=layer_kind(new), method=method, spec=str(rspec), rank_before=k,
                           rank_after=r, max_rank=min(d_out, d_in), params_before=n_params(old),
                           params_after=n_params(new), rel_frobenius_error=relative_error(W, U, V),
                           # W's own spectrum; for whiten/asvd/fisher also the weighted one they truncate
                           energy_kept_weight=energy_kept(s, r), energy_kept_truncated=energy_kept(dec.s, r),
                           **({"decomposition": dec.info} if dec.info else {})))

    if batches is None:
        for name in entry:
            cut(name)
    else:
        calibrate_sequentially(reduced, forward_order(reduced, entry), batches, method, cut, dev)
    return spec, layers, warnings


def _run_files(run, src, args, config, out, cut: dict, splits, dev, amp) -> dict:
    """The new run's config.json, reduce.json, final.json and predictions, as objects and bytes. `args` is
    the reduction step's request (method and store among it); `cut` what one budget's cut made: its
    ModelSpec, per-layer records, warnings, reduced model, scores before and after, calibration record
    and seconds."""
    spec, layers, warnings, reduced = cut["spec"], cut["layers"], cut["warnings"], cut["model"]
    before, after, calib_info, seconds = cut["before"], cut["after"], cut["calib"], cut["seconds"]
    method, store = args["method"], args["store"]
    (val_loss0, val_acc0), (test_loss0, test_acc0) = before["val"], before["test"]
    val_after, test_after = after["val"], after["test"]
    step = dict(parent=str(run), parent_checkpoint=str(src), **args, calib=calib_info,
                ranks={l["name"]: l["rank_after"] for l in layers})
    new_config = dict(config, model=spec.to_dict(), name=out.name, parent=str(run), written_by="laser-tool",
                      reduction=list(config.get("reduction", [])) + [step])
    params_after = count_params(reduced)
    report = dict(parent=str(run), method=method, store=store, calib=calib_info, layers=layers,
                  params_before=before["params"], params_after=params_after, warnings=warnings,
                  val_acc_before=val_acc0, val_acc_after=val_after[1],
                  test_acc_before=test_acc0, test_acc_after=test_after[1],
                  val_loss_before=val_loss0, val_loss_after=val_after[0],
                  test_loss_before=test_loss0, test_loss_after=test_after[0])
    parent = finished_run(run if run.is_dir() else run.parent)
    final = ReducedFinal(parent=str(run), test_acc=test_after[1],
                         val_acc=val_after[1], test_loss=test_after[0], val_loss=val_after[0], params=params_after,
                         params_before=before["params"], test_acc_before=test_acc0, val_acc_before=val_acc0,
                         # training cost of the weights this run holds, so `compare` can put it beside trained runs
                         train_seconds=parent.final.get("train_seconds") if parent is not None else None,
                         reduce_seconds=round(seconds, 3), device=str(dev), eval_precision=precision_name(amp))
    preds = predictions_bytes(splits.name, test_after[2], splits.test_y, val_after[2], splits.val_y,
                              splits.val_indices)
    return {CONFIG: new_config, REDUCE: report, FINAL: final, PREDICTIONS: preds}
