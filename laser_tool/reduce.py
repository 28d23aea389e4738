"""Post-hoc rank reduction of a trained run: pick layers, truncate them, write a new run.

    reduce_run("runs/base", ["*.ffn.in", "3:fc_out=rho:0.1"], rank="params:0.5", method="whiten",
               store="factored") -> Path of the new run directory

Selectors (`--layer`), matched against the names `laser-tool info` prints:
  blocks.3.ffn.in      one layer by name
  *.ffn.in, blocks.*   shell-style globs
  3:fc_in, *:mlp       LASER's (block, type): block number or *, type one of LAYER_TYPES
  ...=SPEC             any selector may carry its own rank; later selectors override earlier ones
The input run is never written to. The output is a run directory the other commands read like a
trained one, whose config records every reduction step, so reductions compose.
"""
import contextlib
import copy
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import check_checkpoint, checkpoint_path, load_run, save_model
from .device import resolve_device
from .errors import UserError
from .evaluate import eval_amp_dtype, evaluate, evaluate_with_predictions, precision_name
from .fileio import atomic_write_bytes, atomic_write_json, check_output_dir, dir_mode, remove_debris
from .lock import output_lock
from .layers import FactoredLinear, SNLinear, dense_weight, layer_kind
from .models import ModelSpec, count_params
from .predictions import FILE as PRED_FILE, predictions_bytes
from .spectrum import (Calib, Decomposition, break_even_rank, energy_kept, numerical_rank, parse_spec,
                       relative_error, resolve_rank, singular_values, truncate)  # noqa: F401 (re-exported)
from .surgery import slots

# LASER's layer types -> our slot roles. vit-tiny fuses q, k, v into one layer (type qkv).
LAYER_TYPES = {
    "q": {"attn-q"}, "k": {"attn-k"}, "v": {"attn-v"}, "qkv": {"attn-qkv"}, "out": {"attn-out"},
    "fc_in": {"ffn-in"}, "fc_out": {"ffn-out"}, "mlp": {"ffn-in", "ffn-out"},
    "attn": {"attn-q", "attn-k", "attn-v", "attn-qkv", "attn-out"},
    "all": {"attn-q", "attn-k", "attn-v", "attn-qkv", "attn-out", "ffn-in", "ffn-out"},
}
CALIB_BATCH_SIZE = 128


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Selecting layers


def split_selector(text: str):
    """'blocks.3.ffn.in=rho:0.1' -> ('blocks.3.ffn.in', RankSpec); no '=' -> (text, None)."""
    pattern, eq, spec = text.partition("=")
    if not pattern.strip():
        raise UserError(f"selector {text!r} names no layer; e.g. blocks.0.ffn.in, '*.ffn.in' or 3:fc_in")
    return pattern.strip(), (parse_spec(spec) if eq else None)


def match_selector(all_slots, pattern: str) -> list:
    """The slots one selector pattern names, in model order; UserError (with hints) if none."""
    names = [s.name for s in all_slots]
    if ":" in pattern:
        block, _, typ = pattern.partition(":")
        if typ not in LAYER_TYPES:
            raise UserError(f"unknown layer type {typ!r} in {pattern!r}; choose one of {', '.join(LAYER_TYPES)}")
        depth = 1 + max(s.block for s in all_slots)
        if block != "*" and not (block.isdigit() and int(block) < depth):
            raise UserError(f"block {block!r} in {pattern!r} is not a block number 0..{depth - 1} or *")
        got = [s for s in all_slots if s.role in LAYER_TYPES[typ] and (block == "*" or s.block == int(block))]
        if not got:
            fused = " (this model fuses q, k, v into one layer: use type qkv)" if typ in ("q", "k", "v") else ""
            raise UserError(f"{pattern!r} matches no layer{fused}; run `laser-tool info` to list layers")
        return got
    got = [s for s in all_slots if fnmatch.fnmatchcase(s.name, pattern)]
    if not got:
        import difflib
        close = difflib.get_close_matches(pattern, names, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `laser-tool info` to list layer names"
        raise UserError(f"no layer matches {pattern!r}; {hint}")
    return got


def select(model, selectors, rank=None) -> dict:
    """{slot name: (Slot, RankSpec)} for the given selectors, in model order."""
    if isinstance(selectors, str):
        selectors = [selectors]
    if not selectors:
        raise UserError("no layer selected; pass --layer (a name, a glob like '*.ffn.in', or 3:fc_in)")
    default = parse_spec(rank) if rank is not None else None
    all_slots = slots(model)
    chosen = {}
    for text in selectors:
        pattern, spec = split_selector(text)
        spec = spec or default
        if spec is None:
            raise UserError(f"no rank for {pattern!r}; pass --rank SPEC or write {pattern}=SPEC")
        for s in match_selector(all_slots, pattern):
            chosen[s.name] = (s, spec)
    order = {s.name: i for i, s in enumerate(all_slots)}
    return dict(sorted(chosen.items(), key=lambda kv: order[kv[0]]))


# ---------------------------------------------------------------------------------------------
# Calibration (training split only)


def calibration_batches(splits, n_batches: int, seed: int, batch_size: int = CALIB_BATCH_SIZE):
    """(images, labels) pairs from the training split, a fixed function of the run's seed."""
    if n_batches < 1:
        raise UserError(f"--calib-batches {n_batches}: activation-aware methods need at least one batch")
    n = len(splits.train_x)
    if n == 0:
        raise UserError("the training split is empty: no calibration data for an activation-aware method; "
                        "use --method svd or a run with training data")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:n_batches * batch_size]
    return [(splits.train_x[idx[i:i + batch_size]], splits.train_y[idx[i:i + batch_size]])
            for i in range(0, len(idx), batch_size)]


def collect_calibration(model, names, batches, method: str, device="cpu") -> dict:
    """{layer name: Calib} from one pass (two for fisher: it needs a backward) over the batches.

    Statistics are taken on the unreduced model for every selected layer at once, as SVD-LLM does.
    """
    by_name = {s.name: s for s in slots(model)}
    stats = {n: Calib() for n in names}
    captured = {}

    def hook(name):
        def fn(module, args, out):
            x = args[0].detach()
            c = stats[name]
            x2 = x.reshape(-1, x.shape[-1]).double()
            if method == "whiten":
                c.xtx = x2.T @ x2 if c.xtx is None else c.xtx + x2.T @ x2
            if method == "asvd":
                a = x2.abs().sum(0)
                c.abs_sum = a if c.abs_sum is None else c.abs_sum + a
            c.tokens += x2.shape[0]
            if method == "fisher":
                captured[name] = (x.reshape(x.shape[0], -1, x.shape[-1]), out)
        return fn

    handles = [by_name[n].module.register_forward_hook(hook(n)) for n in names]
    model.eval()
    try:
        for images, labels in batches:
            x = images.to(device).float().div_(255)
            if method != "fisher":
                with torch.no_grad():
                    model(x)
                continue
            with torch.enable_grad():
                loss = F.cross_entropy(model(x).float(), labels.to(device), reduction="sum")
                grads = torch.autograd.grad(loss, [captured[n][1] for n in names])
            for n, g in zip(names, grads):
                xin = captured[n][0]
                g = g.reshape(xin.shape[0], -1, g.shape[-1]).double()
                xin = xin.double()
                # Per-sample gradient G_b = g_b^T x_b; its squared row norms are g_b^T (x_b x_b^T) g_b,
                # which never forms the (batch, d_out, d_in) gradient tensor.
                K = xin @ xin.transpose(1, 2)
                rows = torch.einsum("bti,btu,bui->i", g, K, g).cpu()
                c = stats[n]
                c.row_fisher = rows if c.row_fisher is None else c.row_fisher + rows
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    return stats


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
    from .data import load_dataset
    name = dataset or config.get("dataset")
    if not name:
        raise UserError("the run's config names no dataset; pass --dataset (and --data-dir)")
    return load_dataset(name, data_dir or config.get("data_dir"), False, config.get("val_size"),
                        config.get("seed", 0), config.get("train_subset"))


def run_root(run: Path):
    """The run directory holding `run` (itself, or a checkpoint file's folder if that is a run)."""
    if run.is_dir():
        return run
    return run.parent if (run.parent / "config.json").is_file() else None


def default_out(run: Path, tag: str, args: dict) -> Path:
    """Sibling directory RUN-<tag>-<method>-<hash of the arguments>: one request, one place."""
    h = hashlib.sha1(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = run_root(run) or run.with_suffix("")
    return base.parent / f"{base.name}-{tag}-{args.get('method', 'svd')}-{h}"


def write_run(out: Path, files: dict, model, config: dict) -> None:
    """Build the run in a hidden temp directory, then rename it into place: no half-written runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes 0700; a run directory gets the user's umask
        save_model(tmp / "model.safetensors", model, config)
        atomic_write_json(tmp / "config.json", config)
        for name, obj in files.items():  # bytes are written as they are (predictions.safetensors)
            atomic_write_bytes(tmp / name, obj) if isinstance(obj, bytes) else atomic_write_json(tmp / name, obj)
        try:
            os.rename(tmp, out)
        except OSError as e:
            raise UserError(f"cannot move the new run into {out} ({e.strerror or e}); another command wrote "
                            f"there meanwhile? pick another --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_out(out: Path, run: Path) -> Path:
    """The new run's place: not inside the input, not existing yet, writable, not too long."""
    return check_output_dir(out, inputs=[run_root(run) or run])


def parent_final(run: Path) -> dict:
    f = (run if run.is_dir() else run.parent) / "final.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        return {}


def reduce_run(run, selectors, rank=None, method="svd", store="dense", out=None, calib_batches=8,
               device="cpu", data_dir=None, dataset=None, batch_size=500, splits=None, extra=None) -> Path:
    """Reduce the selected layers of a run and write a new run directory; returns its path.

    `splits` reuses data already loaded; `extra` ({file name: JSON object}) adds files to the new run."""
    return reduce_run_budgets(run, {0: selectors}, rank, method, store, {0: out}, calib_batches, device, data_dir,
                              dataset, batch_size, splits, {0: extra or {}})[0]


def reduce_run_budgets(run, selectors_by_budget: dict, rank=None, method="svd", store="dense", outs=None,
                       calib_batches=8, device="cpu", data_dir=None, dataset=None, batch_size=500, splits=None,
                       extra=None) -> dict:
    """One reduced run per budget ({budget: selectors} -> {budget: Path}), each identical to what
    `reduce_run(run, selectors, ...)` writes, but sharing the work budgets have in common: the model
    and data are loaded once, the calibration pass runs once over the union of the selected layers,
    each layer is decomposed once (any rank is two slices of the same factors, spectrum.py), and the
    unreduced model is scored once. Only the cut, its scoring and the write are per budget.
    `outs` and `extra` ({file name: JSON object}) are keyed by budget like the selectors."""
    run = Path(run)
    if store not in ("dense", "factored"):
        raise UserError(f"unknown store {store!r}; choose dense or factored")
    if method not in ("svd", "whiten", "asvd", "fisher"):
        raise UserError(f"unknown method {method!r}; choose svd, whiten, asvd or fisher")
    check_batch_size(batch_size)
    if method != "svd" and (isinstance(calib_batches, bool) or not isinstance(calib_batches, int) or calib_batches < 1):
        raise UserError(f"--calib-batches {calib_batches!r}: activation-aware methods need at least one batch")
    if not selectors_by_budget:
        raise UserError("no budget given: pass at least one set of layer selectors")
    outs, extra = outs or {}, extra or {}
    dev = resolve_device(device)
    src = checkpoint_path(run)
    check_checkpoint(src)  # a missing, corrupt or lying input fails before anything is written
    jobs = {}
    for budget, selectors in selectors_by_budget.items():
        args = dict(selectors=list(selectors) if not isinstance(selectors, str) else [selectors],
                    rank=None if rank is None else str(rank), method=method, store=store,
                    calib_batches=calib_batches if method != "svd" else 0)
        jobs[budget] = (selectors, args, check_out(outs.get(budget) or default_out(run, "reduced", args), run))
    if len({j[2].resolve() for j in jobs.values()}) < len(jobs):
        raise UserError("two budgets would write the same output directory; give each its own --out")
    with contextlib.ExitStack() as stack:
        for budget in sorted(jobs, key=lambda b: str(jobs[b][2])):  # one writer per output, in a fixed order
            out = jobs[budget][2]
            stack.enter_context(output_lock(out))
            remove_debris(out.parent, {out.name})  # what a killed writer left is cleared first
            check_out(out, run)  # again under the lock: another writer may have finished meanwhile
        return _reduce(run, src, jobs, rank, method, store, calib_batches, dev, data_dir, dataset, batch_size,
                       splits, extra)


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch-size {batch_size!r} must be an integer >= 1")


def _reduce(run, src, jobs, rank, method, store, calib_batches, dev, data_dir, dataset, batch_size, splits,
            extra) -> dict:
    t0 = time.time()
    model, config = load_run(run, dev)
    chosen_by = {budget: select(model, selectors, rank) for budget, (selectors, _, _) in jobs.items()}
    splits = splits or run_data(config, data_dir, dataset)

    # Resolve every rank before calibration and evaluation, so bad SPECs fail fast. Plain SVD's
    # decomposition is W's own spectrum, so it is computed once, here; one per layer for all budgets.
    layer = {}  # name -> (W, s, dec)
    for chosen in chosen_by.values():
        for name, (slot, _) in chosen.items():
            if name not in layer:
                W = dense_weight(slot.module).detach()
                dec = Decomposition(W) if method == "svd" else None
                layer[name] = (W, dec.s if dec is not None else singular_values(W), dec)
    plans = {b: [(name, spec, resolve_rank(spec, *layer[name][0].shape, layer[name][1], name))
                 for name, (_, spec) in chosen.items()] for b, chosen in chosen_by.items()}

    calib, calib_info = {}, None
    if method != "svd":
        order = {s.name: i for i, s in enumerate(slots(model))}
        batches = calibration_batches(splits, calib_batches, config.get("seed", 0))
        calib = collect_calibration(model, sorted(layer, key=order.get), batches, method, dev)
        calib_info = dict(split="train", batches=len(batches), batch_size=CALIB_BATCH_SIZE,
                          images=sum(len(b[0]) for b in batches), seed=config.get("seed", 0) + 1)

    amp = eval_amp_dtype(dev, config.get("amp", "auto"))  # as the parent was scored
    val_before = evaluate(model, splits.val_x, splits.val_y, batch_size, dev, amp)
    test_before = evaluate(model, splits.test_x, splits.test_y, batch_size, dev, amp)
    params_before = count_params(model)
    shared_seconds = time.time() - t0
    written = {}
    for budget, (_, args, out) in jobs.items():
        t1 = time.time()
        reduced = copy.deepcopy(model) if len(jobs) > 1 else model
        by_name = {s.name: s for s in slots(reduced)}
        spec = ModelSpec.from_dict(copy.deepcopy(config["model"]))  # its layers dict is filled per budget
        layers, warnings = [], []
        for name, rspec, r in plans[budget]:
            W, s, dec = layer[name]
            slot = by_name[name]
            old = slot.module
            d_out, d_in = W.shape
            if dec is None:
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
        for w in warnings:
            warn(w)
        val_after = evaluate_with_predictions(reduced, splits.val_x, splits.val_y, batch_size, dev, amp)
        test_after = evaluate_with_predictions(reduced, splits.test_x, splits.test_y, batch_size, dev, amp)

        step = dict(parent=str(run), parent_checkpoint=str(src), **args, calib=calib_info,
                    ranks={l["name"]: l["rank_after"] for l in layers})
        new_config = dict(config, model=spec.to_dict(), name=out.name, parent=str(run), written_by="laser-tool",
                          reduction=list(config.get("reduction", [])) + [step])
        params_after = count_params(reduced)
        report = dict(parent=str(run), method=method, store=store, calib=calib_info, layers=layers,
                      params_before=params_before, params_after=params_after, warnings=warnings,
                      val_acc_before=val_before[1], val_acc_after=val_after[1],
                      test_acc_before=test_before[1], test_acc_after=test_after[1],
                      val_loss_before=val_before[0], val_loss_after=val_after[0],
                      test_loss_before=test_before[0], test_loss_after=test_after[0])
        pf = parent_final(run)
        final = dict(status="complete", kind="post-hoc", parent=str(run), test_acc=test_after[1],
                     val_acc=val_after[1], test_loss=test_after[0], val_loss=val_after[0], params=params_after,
                     params_before=params_before, test_acc_before=test_before[1], val_acc_before=val_before[1],
                     # training cost of the weights this run holds, so `compare` can put it beside trained runs
                     train_seconds=pf.get("train_seconds"),
                     reduce_seconds=round(shared_seconds + time.time() - t1, 3), device=str(dev),
                     eval_precision=precision_name(amp))
        preds = predictions_bytes(splits.name, test_after[2], splits.test_y, val_after[2], splits.val_y,
                                  splits.val_indices)
        write_run(out, {"reduce.json": report, "final.json": final, PRED_FILE: preds, **extra.get(budget, {})},
                  reduced, new_config)
        written[budget] = out
    return written
