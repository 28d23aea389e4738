"""Rank search under a parameter budget, on the validation split.

1. Sensitivity table. For every selected layer and every rank of the grid, reduce that layer alone
   and measure validation accuracy. Fast because
   - each layer is decomposed once (decompose.Decomposition) and every rank is sliced from it;
   - the network is run in stages (`staged`): the activations entering the layer under test are
     cached once, so a candidate re-runs only the network from that layer on (for vit-tiny: the
     stage inside the block that holds the layer, then the later blocks and the head);
   - evaluation is batched on the device, with the batches `evaluate` uses, so the numbers are the
     very ones a full evaluation gives (`naive_sweep` is the reference; tests check they agree).
2. Allocation (threshold search, as ASVD does). A threshold t lets each layer take its cheapest grid
   rank whose accuracy drop (that layer alone; or loss rise, criterion "loss") is <= t. Parameters fall
   as t grows; we take the smallest t, among the drops in the table, whose allocation fits the budget.
   The budget counts the selected layers only: params:F, their parameters in factored form must be
   <= F x their current parameters (a layer left alone counts in full); uniform:F, <= what the uniform
   cut params:F of every one of them leaves (the frontier's allocated rows against its uniform ones);
   latency:F, their measured time (layer_time.py: each layer dense and at each grid rank, on this machine)
   <= F x their dense time, so a rank whose factor pair runs slower than the dense layer is never taken.
3. LASER's greedy compose, done right. From the last layer to the first (LASER's order), try each
   layer at successively lower grid ranks with the whole allocation in place; accept a step only if
   validation accuracy is >= the best so far (LASER's script compared with the minimum); a layer
   stops at its first rejected step. Steps only remove parameters, so the budget stays met.
4. The test set is evaluated once, at the end, on the chosen model.
Only validation images choose (`val_images`: the first N of them, for a cheaper sweep). Several budgets
of one run and method share everything but steps 2-4 (`search_budgets`, what a study runs).
"""
import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..errors import UserError, is_positive_int
from ..fileio import atomic_write_json, check_output_file
from ..models import ModelSpec
from ..models.budget import factored_params
from ..models.evaluate import evaluate
from ..models.layers import dense_weight
from ..models.selectors import match_all
from ..models.surgery import find_slot, slots
from ..runs.checkpoint import load_run
from ..runs.reader import check_input_run
from ..runs.schema import SEARCH, read_reduce_report
from ..runs.writer import check_out, run_root
from ..vocab import CALIB_BATCHES, SEARCH_CRITERIA as CRITERIA
from .calibration import calibration_batches, collect_calibration
from .decompose import Decomposition, energy_kept, singular_values
from .methods import calibrated
from .ranks import RankSpec, candidate_rank, parse_spec, resolve_rank
from .reduce import (ReduceSettings, check_batch_size, n_params, reduce_run_budgets, reduced_module, run_data,
                     warn)
from .layer_time import cuts_at, latency_budget, latency_of, no_time_saved, rank_costs
from .staged import staged

DEFAULT_GRID = ("params:0.05", "params:0.1", "params:0.2", "params:0.3", "params:0.4", "params:0.5",
                "params:0.6", "params:0.8")


# ---------------------------------------------------------------------------------------------
# The sensitivity sweep: cached, and the naive reference


def _batches(images, batch_size, device):
    # Exactly evaluate()'s batches and preprocessing, so the logits are the same bits.
    return [images[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
            for i in range(0, len(images), batch_size)]


def layer_grid(slot, specs, s) -> list:
    """Distinct ranks the grid SPECs give this layer, largest first (ranks.candidate_rank's rule)."""
    m = slot.module
    ranks = {candidate_rank(spec, m.out_features, m.in_features, s, slot.name) for spec in specs}
    return sorted(ranks - {None}, reverse=True)


@torch.no_grad()
def sweep(model, names, specs, images, labels, batch_size=500, device="cpu", method="svd", calib=None):
    """Sensitivity table {layer: [{rank, val_acc, val_loss, ...}]} and the decompositions used."""
    model.eval()
    device = torch.device(device)
    xs, ys = _batches(images, batch_size, device), labels.to(device).split(batch_size)
    st = staged(model, xs[0] if xs else None)
    by_name = {s.name: s for s in slots(model)}
    todo = sorted(names, key=lambda n: st.index[n])
    table, decomps = {}, {}
    cache, at = [st.prefix(x) for x in xs], 0             # cache[i] = input of stage `at`, batch i
    for name in todo:
        k = st.index[name]
        while at < k:                                     # advance the cache with the original layers
            cache = [st.stages[at][1](c) for c in cache]
            at += 1
        slot = by_name[name]
        orig = slot.module
        W = dense_weight(orig).detach()
        dec = Decomposition(W, method, (calib or {}).get(name))
        s = singular_values(W) if calibrated(method) else dec.s
        decomps[name] = dec
        rows = []
        for r in layer_grid(slot, specs, s):
            slot.set(reduced_module(orig, *dec.factors(r), "dense")[0])
            try:
                loss, correct = 0.0, 0
                for c, y in zip(cache, ys):
                    logits = st.run_from(k, c)
                    loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
                    correct += (logits.argmax(-1) == y).sum().item()
            finally:
                slot.set(orig)
            n = max(len(images), 1)
            rows.append(dict(rank=r, val_acc=correct / n, val_loss=loss / n, energy=energy_kept(s, r),
                             params=factored_params(W.shape[0], W.shape[1], r, orig.bias is not None)))
        table[name] = rows
    return table, decomps


def naive_sweep(run, ranks: dict, images, labels, batch_size=500, device="cpu", method="svd", calib=None):
    """LASER's way, the reference: for each (layer, rank) in `ranks` ({layer: [ranks]}) reload the
    checkpoint, decompose the layer, write the truncated matrix back and evaluate the whole model."""
    table = {}
    for name, rs in ranks.items():
        table[name] = []
        for r in rs:
            model, _ = load_run(run, device)
            slot = find_slot(model, name)
            dec = Decomposition(dense_weight(slot.module).detach(), method, (calib or {}).get(name))
            slot.set(reduced_module(slot.module, *dec.factors(r), "dense")[0])
            loss, acc = evaluate(model, images, labels, batch_size, device)
            table[name].append(dict(rank=r, val_acc=acc, val_loss=loss))
    return table


# ---------------------------------------------------------------------------------------------
# Allocation and compose


BUDGET_HELP = ("params:F, at most fraction F of the selected layers' parameters, uniform:F, at most the "
               "parameters the uniform cut --rank params:F of every selected layer leaves (the frontier's budget), "
               "or latency:F, at most fraction F of the selected layers' dense time measured on this machine")


def parse_budget(text) -> tuple:
    """'params:0.5' -> ('params', 0.5); 'uniform:0.25', 'latency:0.8' likewise; UserError for anything else."""
    t = str(text).strip()
    kind, _, rest = t.partition(":")
    if kind not in ("params", "uniform", "latency"):
        raise UserError(f"cannot parse --budget {t!r}; use {BUDGET_HELP}, e.g. params:0.5")
    return kind, parse_spec(f"params:{rest}").value


def budget_params(budget, model, names, layer_params) -> float:
    """The budget in parameters of the selected layers. uniform:F is what `reduce --layer NAME=params:F
    --store factored` leaves in them: each layer at rank int(F*m*n/(m+n)), r*(m+n) weights plus its bias,
    so an allocated row holds at most the parameters of the uniform row it is compared with."""
    kind, frac = parse_budget(budget)
    if kind == "params":
        return frac * sum(layer_params.values())
    total = 0
    for n in names:
        m = find_slot(model, n).module
        r = resolve_rank(RankSpec("params", frac, f"params:{frac}"), m.out_features, m.in_features, layer=n)
        total += factored_params(m.out_features, m.in_features, r, m.bias is not None)
    return total


def allocate(table, base_acc, layer_params, budget_params, criterion="acc", base_loss=None):
    """(threshold, {layer: rank}) by threshold search; UserError if no allocation fits. The drop a
    threshold bounds is in validation accuracy (`acc`) or validation loss (`loss`): on a small split
    single-layer accuracy drops are mostly 0, so every layer looks free and the budget goes unused;
    the loss still ranks them."""
    if criterion not in CRITERIA:
        raise UserError(f"unknown --criterion {criterion!r}; choose acc or loss")
    score = (lambda c: c["val_acc"]) if criterion == "acc" else (lambda c: -c["val_loss"])
    base_acc = base_acc if criterion == "acc" else -base_loss       # scores: higher is better
    opts = {n: [(layer_params[n], None, base_acc)] +
               [(c["params"], c["rank"], score(c)) for c in rows if c["params"] < layer_params[n]]
            for n, rows in table.items()}
    floor = sum(min(o[0] for o in os_) for os_ in opts.values())
    if floor > budget_params:
        raise UserError(f"the budget cannot be met: the smallest grid ranks still leave {floor:,} parameters "
                        f"in the selected layers, above the budget of {budget_params:,.0f}; add lower ranks to "
                        f"--ranks, select more layers, or raise the budget")
    drops = sorted({base_acc - o[2] for os_ in opts.values() for o in os_} | {0.0})
    for t in drops:
        alloc, total = {}, 0
        for n, os_ in opts.items():
            ok = [o for o in os_ if base_acc - o[2] <= t + 1e-12] or [os_[0]]
            p, r, _ = min(ok, key=lambda o: (o[0], -o[2]))
            total += p
            if r is not None:
                alloc[n] = r
        if total <= budget_params:
            return t, alloc
    raise AssertionError("unreachable: the largest threshold allows every layer's smallest rank")


def _apply(model, decomps, alloc, store="factored"):
    by_name = {s.name: s for s in slots(model)}
    for n, r in alloc.items():
        s = by_name[n]
        s.set(reduced_module(s.module, *decomps[n].factors(r), store)[0])
    return model


def compose(base, decomps, table, alloc, start_acc, val, batch_size, device):
    """LASER's greedy compose with the right acceptance rule; returns (alloc, acc, steps)."""
    alloc, best, steps = dict(alloc), start_acc, []
    for name in reversed(list(table)):
        for c in table[name]:                       # grid ranks, largest first
            if name in alloc and c["rank"] >= alloc[name] or c["params"] >= n_params(find_slot(base, name).module):
                continue
            trial = dict(alloc, **{name: c["rank"]})
            acc = evaluate(_apply(copy.deepcopy(base), decomps, trial), *val, batch_size, device)[1]
            ok = acc >= best
            steps.append(dict(layer=name, rank=c["rank"], val_acc=acc, best_before=best, accepted=ok))
            if not ok:
                break
            alloc, best = trial, acc
    return alloc, best, steps




@dataclass(frozen=True)
class SearchSettings:
    """What a rank search considers and where it runs: one object, built once (by `search` or a study step)
    and handed on whole. `layers` selects the candidates, `ranks` is the grid (default DEFAULT_GRID),
    `compose` runs the greedy pass after the allocation, `val_images` N searches on the first N validation
    images only; `data_dir` and `dataset` override the run's own data."""
    layers: tuple = ("*",)
    method: str = "svd"
    ranks: tuple = None
    compose: bool = True
    val_images: int = None
    criterion: str = "acc"
    calib_batches: int = CALIB_BATCHES
    device: str = "cpu"
    batch_size: int = 500
    data_dir: str = None
    dataset: str = None


def search_run(run, budget="params:0.5", settings: SearchSettings = SearchSettings(), apply=False, out=None,
               report=None) -> dict:
    """Run the search (module docstring); write the report JSON; with apply, also the reduced run."""
    return search_budgets(run, {0: budget}, settings, apply, outs={0: out}, reports={0: report})[0]


def search_budgets(run, budgets: dict, settings: SearchSettings = SearchSettings(), apply=False, outs=None,
                   reports=None, splits=None, write_reports=True) -> dict:
    """{key: report} for budgets {key: budget}, each the report (and with apply the run) that
    `search_run(run, budget, settings)` makes, sharing what no budget changes: the load, the calibration pass,
    the decompositions and the sensitivity sweep; the applied runs are written together (reduce_run_budgets).
    `settings.val_images` N searches on the first N validation images only (cheaper; the rows still report the
    whole validation split). With apply, the test set is evaluated once, by the reduction that writes the run."""
    t0 = time.time()
    run, outs, reports = Path(run), outs or {}, reports or {}
    for b in budgets.values():
        parse_budget(b)
    layers, method, batch_size, val_images = settings.layers, settings.method, settings.batch_size, settings.val_images
    specs = [parse_spec(s) for s in (settings.ranks or DEFAULT_GRID)]
    check_batch_size(batch_size)
    if settings.criterion not in CRITERIA:
        raise UserError(f"unknown --criterion {settings.criterion!r}; choose acc or loss")
    if val_images is not None and not is_positive_int(val_images):
        raise UserError(f"--val-images {val_images!r} must be an integer >= 1 (or left out: the whole split)")
    for k in budgets:  # checked before the work: never an input, a device or a directory
        if write_reports and reports.get(k) is not None:
            check_output_file(reports[k], inputs=[run_root(run) or run], what="--report", ours=is_search_report)
        if apply and outs.get(k) is not None:
            check_out(outs[k], run)
    dev = resolve_device(settings.device)
    check_input_run(run, "search:")
    model, config = load_run(run, dev)
    names = [s.name for s in match_all(slots(model), [layers] if isinstance(layers, str) else list(layers or ["*"]))]
    splits = splits or run_data(config, settings.data_dir, settings.dataset)
    if len(splits.val_x) == 0:
        raise UserError("the run has no validation split (val_size 0); search selects on validation data only")
    calib = None
    if calibrated(method):
        batches = calibration_batches(splits, settings.calib_batches, config.get("seed", 0))
        calib = collect_calibration(model, names, batches, method, dev)
    val = (splits.val_x[:val_images], splits.val_y[:val_images])
    base_loss, base_acc = evaluate(model, *val, batch_size, dev)
    t_sweep = time.time()
    table, decomps = sweep(model, names, specs, *val, batch_size, dev, method, calib)
    shared = dict(run=str(run), method=method, criterion=settings.criterion, layers=names, grid=[str(s) for s in specs], val_images=len(val[0]),
                  layer_params={n: n_params(find_slot(model, n).module) for n in names}, base_val_acc=base_acc,
                  base_val_loss=base_loss, calib_batches=settings.calib_batches if calibrated(method) else 0,
                  sweep_seconds=round(time.time() - t_sweep, 3), device=str(dev))
    shared["selected_params"] = sum(shared["layer_params"].values())
    if any(parse_budget(b)[0] == "latency" for b in budgets.values()):  # measured once, for every latency budget
        shared["layer_ms"] = rank_costs(model, ModelSpec.from_dict(config["model"]), table)
    shared["table"] = {n: [dict(c, layer_params=shared["layer_params"][n]) for c in rows] for n, rows in table.items()}
    reps, test = {}, not apply
    for k, budget in budgets.items():
        reps[k] = _choose(model, decomps, table, shared, budget, val, splits if test else None, settings.compose,
                          batch_size, dev)
        reps[k]["seconds"] = round(time.time() - t0, 3)
        reps[k]["report"] = str(reports.get(k) or _default_report(run, budget, shared))
    for rep in reps.values():  # a measurement of this machine now: said, not recorded in the report
        if not apply:  # an applied search is warned about by the reduction that writes it
            for w in no_time_saved(model, ModelSpec.from_dict(config["model"]), cuts_at(model, rep["chosen"]["ranks"])):
                warn(w)
    if apply:
        _apply_all(run, reps, settings, outs, splits)
    for k, rep in reps.items():
        if write_reports:
            atomic_write_json(rep["report"], rep)
    return reps


def _choose(model, decomps, table, shared, budget, val, splits, do_compose, batch_size, dev) -> dict:
    """One budget's report: the allocation, the compose, the chosen ranks against the budget and, when
    `splits` is given, the chosen model's test accuracy."""
    names, layer_params, total = shared["layers"], shared["layer_params"], shared["selected_params"]
    kind, frac = parse_budget(budget)
    if kind == "latency":  # each option costs its measured time; one slower than the dense layer never fits
        priced, dense, limit = latency_budget(shared["layer_ms"], table, frac)
    else:
        priced, dense, limit = table, layer_params, budget_params(budget, model, names, layer_params)
    t, alloc = allocate(priced, shared["base_val_acc"], dense, limit, shared["criterion"], shared["base_val_loss"])
    alloc_acc = evaluate(_apply(copy.deepcopy(model), decomps, alloc), *val, batch_size, dev)[1]
    chosen, chosen_acc, steps = alloc, alloc_acc, []
    if do_compose:
        chosen, chosen_acc, steps = compose(model, decomps, table, alloc, alloc_acc, val, batch_size, dev)
        if kind == "latency" and latency_of(shared["layer_ms"], chosen) > limit:
            chosen, chosen_acc = alloc, alloc_acc  # a lower rank measured slower: the allocation stands

    def params_of(a):
        return sum(table_params(table, n, a[n]) if n in a else layer_params[n] for n in names)

    chosen = {n: chosen[n] for n in names if n in chosen}
    test_loss = test_acc = None
    if splits is not None:
        final_model = _apply(copy.deepcopy(model), decomps, chosen)
        test_loss, test_acc = evaluate(final_model, splits.test_x, splits.test_y, batch_size, dev)
    used = params_of(chosen)
    cost = latency_of(shared["layer_ms"], chosen) if kind == "latency" else used
    timed = dict(latency_ms=cost, dense_ms=sum(dense.values())) if kind == "latency" else {}
    return dict(shared, budget=str(budget), budget_kind=kind, budget_params=limit if kind != "latency" else None,
                budget_ms=limit if kind == "latency" else None,
                allocation=dict(threshold=t, ranks=alloc, params=params_of(alloc), val_acc=alloc_acc),
                compose=dict(enabled=do_compose, steps=steps),
                # The budget is an upper bound: grid ranks are discrete, so the chosen ranks use at most it.
                chosen=dict(ranks=chosen, params=used, val_acc=chosen_acc, test_acc=test_acc, test_loss=test_loss,
                            meets_budget=cost <= limit, fraction_kept=used / total,
                            budget_fraction=limit / total if kind != "latency" else frac,
                            budget_unused=limit - cost, **timed))


def _default_report(run, budget, shared) -> Path:
    base = run_root(run) or run.with_suffix("")
    h = hashlib.sha1(json.dumps([str(budget), shared["layers"], shared["grid"], shared["method"]]).encode()).hexdigest()[:8]
    return base.parent / f"{base.name}-search-{shared['method']}-{h}.json"


def is_search_report(path) -> bool:
    """A JSON file search wrote (recognised by its shape: reports carry no writer mark)."""
    try:
        rep = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(rep, dict) and {"run", "method", "grid", "budget", "allocation", "chosen"} <= set(rep)


def search_request(rep: dict, layers, do_compose: bool) -> dict:
    """What an applied search asked for, recorded in its reduction step in place of per-seed selectors, so
    the seeds of one search are one row in `compare` (analysis/describe.py)."""
    return dict(search=rep["budget"], layers=[layers] if isinstance(layers, str) else list(layers or ["*"]),
                targets=rep["layers"], grid=rep["grid"], val_images=rep["val_images"], criterion=rep["criterion"],
                compose=do_compose)


def _apply_all(run, reps, settings: SearchSettings, outs, splits) -> None:
    """Write every budget's chosen model as a factored run; the test set is evaluated there, once."""
    for k, rep in reps.items():
        if not rep["chosen"]["ranks"]:
            raise UserError(f"budget {rep['budget']}: the budget is met without reducing any layer; nothing to --apply")
    reduction = ReduceSettings(method=settings.method, store="factored", calib_batches=settings.calib_batches,
                               device=settings.device, batch_size=settings.batch_size)
    written = reduce_run_budgets(
        run, {k: [f"{n}={r}" for n, r in rep["chosen"]["ranks"].items()] for k, rep in reps.items()}, reduction,
        outs=outs, splits=splits, extra={k: {SEARCH: rep} for k, rep in reps.items()},
        requests={k: search_request(rep, settings.layers, settings.compose) for k, rep in reps.items()})
    for k, rep in reps.items():
        red = read_reduce_report(written[k])
        rep["chosen"].update(test_acc=red["test_acc_after"], test_loss=red["test_loss_after"])
        rep["applied"] = str(written[k])


def table_params(table, name, rank):
    return next(c["params"] for c in table[name] if c["rank"] == rank)
