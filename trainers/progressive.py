"""Progressive rank reduction: train dense, cut the selected layers' rank during training.

The seed's closing hypothesis (start wide, reduce rank while training), as in Pufferfish (a dense
warm-up, then factored training) and Cuttlefish (switch each layer once its stable rank stops moving).

    --reduce-at E --reduce-to SPEC --reduce-layer SEL...   one cut at epoch E (may be fractional)
    --reduce-at E1,E2 --reduce-to S1,S2                    rank annealing: one cut per epoch listed
    --reduce-at auto --reduce-to params:F                  Cuttlefish's rule (below)

A cut at epoch E happens before optimizer step round(E * steps_per_epoch): for an integer E, at the
start of epoch E + 1 counting from 1, i.e. after E epochs of training. It is `laser-tool reduce
--store factored` applied to the model of that moment, with the same functions (posthoc's select,
collect_calibration on the training split, Decomposition, resolve_rank, reduced_module), so the model
right after a cut equals `laser-tool reduce` of the checkpoint of that moment.

The optimizer after a cut: a new AdamW over the new parameter list, in which every parameter that the
cut did not replace keeps its moments and step count, and the new factors U, V (and their bias copy)
start with fresh moments (step 0, so Adam's bias correction starts over for them alone). The learning
rate stays a function of the global step, so the schedule runs on without a jump.

auto: every epoch the stable rank ||W||_F^2 / ||W||_2^2 of each selected layer is measured (and logged,
with the effective rank and the top singular value, in metrics.jsonl). A layer is cut at the start of
epoch e once its stable rank moved less than `reduce_tolerance` (relative) over the last
`reduce_window` epochs. Ranks are proportional to the stable ranks, scaled by one factor chosen so the
selected layers hold at most what `params:F` would give every one of them (the seed's low-rank count);
layers already cut keep their share. A layer still moving at the start of the last epoch is cut there,
so the final model always meets the budget.
"""
import math
import sys
import time

import hashlib
import re

from laser_tool.data import fit_model
from laser_tool.errors import UserError
from laser_tool.lists import comma_list
from laser_tool.models import build_model, count_params
from laser_tool.models.budget import break_even_rank, factored_params
from laser_tool.models.layers import dense_weight as weight_of
from laser_tool.models.selectors import split_selector
from laser_tool.models.surgery import find_slot, slots
from laser_tool.posthoc.calibration import calibration_batches, collect_calibration
from laser_tool.posthoc.decompose import Decomposition, singular_values
from laser_tool.posthoc.ranks import parse_spec, resolve_rank, select

from .config import passes
from laser_tool.posthoc.reduce import n_params, reduced_module
from laser_tool.posthoc.spectrum import effective_rank, stable_rank
from laser_tool.runs.checkpoint import save_model
from laser_tool.posthoc.methods import calibrated, cut_methods
from laser_tool.runs.schema import write_config
from laser_tool.runs.state import read_state
from laser_tool.vocab import CALIB_BATCHES

from .optim import make_optimizer

OPTIMIZER_POLICY = ("AdamW rebuilt at each cut: parameters the cut did not replace keep their moments and "
                    "step count; new factors start with fresh moments; the learning rate stays a function "
                    "of the global step")


def structural_rank(module) -> int:
    """The rank a layer's structure allows: its factored rank, or min(d_in, d_out) for a full matrix."""
    return int(getattr(module, "rank", min(module.in_features, module.out_features)))


def layer_stats(model, names) -> dict:
    """{name: stable rank, effective rank, top singular value, structural rank} of the named layers."""
    by_name = {s.name: s.module for s in slots(model)}
    out = {}
    for n in names:
        s = singular_values(weight_of(by_name[n]).detach())
        out[n] = dict(stable_rank=stable_rank(s), effective_rank=effective_rank(s), top_sv=float(s[0]),
                      rank=structural_rank(by_name[n]))
    return out


def parse_at(text, epochs: int):
    """'auto' or a list of epochs (floats); UserError for anything else."""
    t = str(text).strip()
    if t == "auto":
        return "auto"
    at = []
    for part in comma_list(t, "--reduce-at", example="1 or 1,2 or auto"):
        try:
            e = float(part)
        except ValueError:
            raise UserError(f"--reduce-at {t!r}: {part.strip()!r} is not a number of epochs; "
                            f"write E, E1,E2,... or auto") from None
        if not math.isfinite(e) or e < 0:
            raise UserError(f"--reduce-at {t!r}: {part.strip()} is not an epoch count >= 0")
        if e >= epochs:
            raise UserError(f"--reduce-at {part.strip()} is at or beyond the end of training (--epochs {epochs}); "
                            f"a cut must leave epochs to train the factored model: pick E < {epochs}")
        at.append(e)
    if at != sorted(set(at)):
        raise UserError(f"--reduce-at {t!r}: list the cut epochs in increasing order, each once")
    return at


def auto_stable(history: list, name: str, window: int, tol: float) -> bool:
    """True once `name`'s stable rank moved less than `tol` (relative) over the last `window` epochs.
    history[e] holds the layer statistics after e epochs (history[0]: at initialisation)."""
    if len(history) <= window:
        return False
    now = history[-1][name]["stable_rank"]
    past = [h[name]["stable_rank"] for h in history[-1 - window:-1]]
    return now > 0 and max(abs(now - p) for p in past) / now < tol


def auto_ranks(stable: dict, shapes: dict, budget: float) -> dict:
    """{name: rank} proportional to the stable ranks, one scale c for all: rank = floor(c * stable rank),
    at least 1, below the rank where factoring saves nothing; the largest c whose factored weights
    sum(rank * (d_in + d_out)) fit in `budget`."""
    def ranks(c):
        out = {}
        for n, sr in stable.items():
            d_out, d_in = shapes[n]
            top = min(math.ceil(break_even_rank(d_out, d_in)) - 1, d_out, d_in)
            out[n] = max(1, min(top, math.floor(c * sr)))
        return out

    def cost(r):
        return sum(r[n] * sum(shapes[n]) for n in r)

    lo, hi = 0.0, 1.0
    while cost(ranks(hi)) <= budget and hi < 1e9 and ranks(hi) != ranks(2 * hi):
        hi *= 2
    for _ in range(60):  # bisection: cost is non-decreasing in c
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(ranks(mid)) <= budget else (lo, mid)
    return ranks(hi) if cost(ranks(hi)) <= budget else ranks(lo)


def name_part(cfg) -> str:
    """'cut1-to-params0.5-3f2a1c': the default run name's progressive part (selectors and method hashed)."""
    h = hashlib.sha1(repr((cfg.reduce_layers, cfg.reduce_method, cfg.reduce_tolerance, cfg.reduce_window))
                     .encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9.,_-]+", "", f"cut{cfg.reduce_at}-to-{cfg.reduce_to or 'layer'}") + f"-{h}"


def plan_for(cfg, spec, steps_per_epoch=None, splits=None, device="cpu", fused=False):
    """The run's Progressive plan, or None when it asks for no cut; UserError for bad settings."""
    if cfg.reduce_at is None:
        if cfg.reduce_to or cfg.reduce_layers:
            raise UserError("--reduce-to and --reduce-layer need --reduce-at E (or auto): when to cut")
        return None
    return Progressive(cfg, spec, steps_per_epoch, splits, device, fused)


def check(cfg) -> None:
    """Refuse bad progressive settings before the run directory or the data is touched (the model's
    input and output sizes come from the dataset's description, not its files)."""
    if cfg.reduce_at is None and not (cfg.reduce_to or cfg.reduce_layers):
        return
    plan_for(cfg, fit_model(cfg.model, cfg.dataset))


class Progressive:
    """The cut plan of one run and the cuts themselves; the trainer calls due(), cut(), end_epoch()."""

    def __init__(self, cfg, spec, steps_per_epoch=None, splits=None, device="cpu", fused=False):
        self.cfg, self.spe, self.splits, self.device, self.fused = cfg, steps_per_epoch, splits, device, fused
        self.steps, self.budget = None, None
        if cfg.reduce_method not in cut_methods():
            raise UserError(f"--reduce-method {cfg.reduce_method!r}: choose one of {', '.join(cut_methods())}")
        if not cfg.reduce_layers:
            raise UserError("--reduce-at needs the layers to cut: --reduce-layer SELECTOR (e.g. '*.ffn.*')")
        self.at = parse_at(cfg.reduce_at, cfg.epochs)
        self.auto = self.at == "auto"
        per_layer = any(split_selector(s)[1] is not None for s in cfg.reduce_layers)
        specs = comma_list(cfg.reduce_to, "--reduce-to", example="params:0.5") if cfg.reduce_to else []
        model = build_model(spec)
        if self.auto:
            self._check_auto(model, specs, per_layer)
        else:
            self._check_plan(model, specs, per_layer)
        if steps_per_epoch is not None and not self.auto:
            self.steps = [round(e * steps_per_epoch) for e in self.at]
            for a, b, sa, sb in zip(self.at, self.at[1:], self.steps, self.steps[1:]):
                if sa == sb:
                    raise UserError(f"--reduce-at {a:g} and {b:g} fall on the same optimizer step ({sa}; "
                                    f"{steps_per_epoch} steps per epoch): space the cuts further apart")
            if self.steps[-1] >= round(steps_per_epoch * cfg.epochs):
                raise UserError(f"--reduce-at {self.at[-1]:g} falls on the last optimizer step: pick an earlier epoch")
        self._pending = None

    # ---------------------------------------------------------------------------------------------
    # validation, before any training

    def _check_plan(self, model, specs, per_layer):
        if per_layer and len(self.at) > 1:
            raise UserError("a rank in --reduce-layer (SELECTOR=SPEC) needs a single --reduce-at; for rank "
                            "annealing give one --reduce-to SPEC per cut instead")
        if specs and len(specs) != len(self.at):
            raise UserError(f"--reduce-to gives {len(specs)} SPEC(s) for {len(self.at)} cut(s) in --reduce-at "
                            f"{self.cfg.reduce_at}: give one SPEC per cut, comma-separated")
        if not specs and not per_layer:
            raise UserError("--reduce-at needs a rank: --reduce-to SPEC (e.g. params:0.5, rho:0.25, 32)")
        self.specs = specs or [None]
        current = {}                                   # layer -> (rank, params) as the plan goes; None: unknown
        for e, text in zip(self.at, self.specs):
            chosen = select(model, self.cfg.reduce_layers, text)
            for name, (slot, rspec) in chosen.items():
                m = slot.module
                d_out, d_in = m.out_features, m.in_features
                bias = getattr(m, "bias", None) is not None
                before = current.get(name, (structural_rank(m), n_params(m)))
                if rspec.kind == "energy" or before is None:
                    current[name] = None               # the rank depends on the trained spectrum
                    continue
                r = resolve_rank(rspec, d_out, d_in, None, name)
                after = factored_params(d_out, d_in, r, bias)
                if after >= before[1]:
                    raise UserError(f"--reduce-to {rspec} at epoch {e:g} gives {name} rank {r}, {after:,} parameters "
                                    f"factored against {before[1]:,} now: the cut would not shrink the layer; "
                                    f"pick a smaller SPEC")
                current[name] = (r, after)

    def _check_auto(self, model, specs, per_layer):
        if per_layer:
            raise UserError("--reduce-at auto sets every layer's rank itself: drop the =SPEC from --reduce-layer")
        if len(specs) != 1 or parse_spec(specs[0]).kind != "params":
            raise UserError("--reduce-at auto needs a budget: --reduce-to params:F (the fraction of the selected "
                            "layers' parameters to keep, as the seed's low-rank layers count them)")
        if self.cfg.epochs < 2:  # (fractional epochs: the last pass is cut short; the rule is the same)
            raise UserError("--reduce-at auto needs at least 2 epochs: it measures the stable rank over epochs")
        if self.cfg.reduce_window < 1 or not self.cfg.reduce_tolerance > 0:
            raise UserError("--reduce-window must be >= 1 and --reduce-tolerance > 0")
        budget = parse_spec(specs[0])
        chosen = select(model, self.cfg.reduce_layers, budget)
        self.shapes = {n: (s.module.out_features, s.module.in_features) for n, (s, _) in chosen.items()}
        self.budget = 0
        for n, (d_out, d_in) in self.shapes.items():
            r = resolve_rank(budget, d_out, d_in, None, n)
            self.budget += r * (d_out + d_in)
        self.names = list(self.shapes)
        self.specs = specs

    # ---------------------------------------------------------------------------------------------
    # resume and bookkeeping

    @staticmethod
    def resumed_layers(state_file) -> dict:
        """The factored layers (ModelSpec.layers overrides) a resume point holds, read from its metadata,
        so the model can be rebuilt with that structure before its tensors are loaded."""
        try:
            counters = read_state(state_file, tensors=False).counters
        except UserError:  # an unreadable resume point is reported by load_state, with its fix
            return {}
        return (counters.get("progressive") or {}).get("layers", {})

    def start(self, model, counters, config):
        """Fresh run: measure the layers at initialisation. Both: write the plan into config."""
        if "progressive" not in counters:
            counters["progressive"] = dict(cuts=[], layers={}, stats=[layer_stats(model, self.layer_names(model))])
        self._record(counters, config)

    def layer_names(self, model):
        return self.names if self.auto else list(select(model, self.cfg.reduce_layers, self.specs[0]))

    def _record(self, counters, config):
        p = counters["progressive"]
        c = self.cfg
        config["progressive"] = dict(
            reduce_at=c.reduce_at, reduce_to=c.reduce_to, layers=c.reduce_layers, method=c.reduce_method,
            steps="auto" if self.auto else self.steps, steps_per_epoch=self.spe,
            **(dict(tolerance=c.reduce_tolerance, window=c.reduce_window, budget_weights=self.budget,
                    deadline_epoch=passes(c, self.spe) - 1) if self.auto else {}),
            optimizer_after_cut=OPTIMIZER_POLICY, spectral_at_start=p["stats"][0], cuts=p["cuts"])

    # ---------------------------------------------------------------------------------------------
    # the cut

    def due(self, counters) -> bool:
        """Is a cut due before optimizer step counters['global_step']? Remembers what to cut."""
        step, p = counters["global_step"], counters["progressive"]
        if not self.auto:
            done = len(p["cuts"])
            if done < len(self.steps) and step == self.steps[done]:
                self._pending = ("plan", self.specs[done], None)
                return True
            return False
        if step == 0 or step % self.spe:
            return False
        e = step // self.spe
        todo = [n for n in self.names if n not in p["layers"]]
        hist = p["stats"][:e + 1]
        if not todo or len(hist) != e + 1:
            return False
        deadline = e >= passes(self.cfg, self.spe) - 1
        now = todo if deadline else [n for n in todo if auto_stable(hist, n, self.cfg.reduce_window,
                                                                     self.cfg.reduce_tolerance)]
        if not now:
            return False
        spent = sum(o["rank"] * sum(self.shapes[n]) for n, o in p["layers"].items() if n in self.shapes)
        ranks = auto_ranks({n: hist[-1][n]["stable_rank"] for n in todo}, self.shapes, self.budget - spent)
        self._pending = ("deadline" if deadline else "stable", None, {n: ranks[n] for n in now})
        self._stable = {n: hist[-1][n]["stable_rank"] for n in now}
        return True

    def cut(self, model, optimizer, counters, config, run_dir, is_main):
        """Cut the layers due now, in place; returns the optimizer for the new parameter list."""
        t0 = time.perf_counter()
        reason, spec, ranks = self._pending
        self._pending = None
        if ranks is None:
            chosen = select(model, self.cfg.reduce_layers, spec)
        else:
            chosen = {n: (find_slot(model, n), parse_spec(str(r))) for n, r in ranks.items()}
        params_before = count_params(model)
        layers, overrides = self._truncate(model, chosen)
        if ranks is not None:  # auto: the stable rank each rank was scaled from
            for l in layers:
                l["stable_rank"] = self._stable[l["name"]]
        optimizer = self._rebuild_optimizer(model, optimizer)
        p = counters["progressive"]
        p["layers"].update(overrides)
        step = counters["global_step"]
        record = dict(step=step, epoch=step / self.spe, reason=reason, spec=spec, method=self.cfg.reduce_method,
                      params_before=params_before, params_after=count_params(model), layers=layers,
                      checkpoint=f"cut{len(p['cuts']) + 1}.safetensors")
        # The best checkpoint is chosen among epochs with the final structure: reset the running best.
        counters["best_val_acc"], counters["best_epoch"] = -1.0, -1
        config["model"] = dict(config["model"], layers={**config["model"].get("layers", {}), **overrides})
        config["params"] = record["params_after"]
        record["seconds"] = round(time.perf_counter() - t0, 4)  # the cut itself, not the file writes below
        p["cuts"].append(record)
        self._record(counters, config)
        if is_main:
            save_model(run_dir / record["checkpoint"], model, config)
            write_config(run_dir, config)
            print(f"cut at epoch {record['epoch']:g} (step {step}, {reason}): "
                  + ", ".join(f"{l['name']} {l['rank_before']}->{l['rank_after']}" for l in layers)
                  + f"; {params_before:,} -> {record['params_after']:,} params", file=sys.stderr, flush=True)
        return optimizer

    def _truncate(self, model, chosen):
        """reduce_run's per-layer steps, store='factored'. Energy SPECs that would not shrink a layer
        leave it as it is (their rank is only known now)."""
        method = self.cfg.reduce_method
        plan = []
        for name, (slot, rspec) in chosen.items():
            W = weight_of(slot.module).detach()
            dec = None if calibrated(method) else Decomposition(W)
            s = dec.s if dec is not None else singular_values(W)
            r = resolve_rank(rspec, W.shape[0], W.shape[1], s, name)
            bias = getattr(slot.module, "bias", None) is not None
            if factored_params(W.shape[0], W.shape[1], r, bias) >= n_params(slot.module):
                print(f"warning: {name}: {rspec} asks rank {r}, which would not shrink the layer; kept as it is",
                      file=sys.stderr)
                continue
            plan.append((name, slot, rspec, W, dec, r))
        calib = {}
        if calibrated(method) and plan:
            was_training = model.training
            batches = calibration_batches(self.splits, CALIB_BATCHES, self.cfg.seed)  # as reduce: the same cut
            calib = collect_calibration(model, [q[0] for q in plan], batches, method, self.device)
            model.train(was_training)
        layers, overrides = [], {}
        for name, slot, rspec, W, dec, r in plan:
            old = slot.module
            dec = dec or Decomposition(W, method, calib.get(name))
            U, V = dec.factors(r)
            new, override = reduced_module(old, U, V, "factored")
            slot.set(new)
            overrides[name] = override
            layers.append(dict(name=name, spec=str(rspec), rank_before=structural_rank(old), rank_after=r,
                               params_before=n_params(old), params_after=n_params(new)))
        return layers, overrides

    def _rebuild_optimizer(self, model, old):
        """A new AdamW over the new parameter list; unchanged parameters keep their state."""
        new = make_optimizer(model, self.cfg.lr, self.cfg.weight_decay, fused=self.fused, decay_all=self.cfg.decay_all)
        for group in new.param_groups:
            group["lr"] = old.param_groups[0]["lr"]
            for q in group["params"]:
                if q in old.state:
                    new.state[q] = old.state[q]
        return new

    # ---------------------------------------------------------------------------------------------
    # per-epoch statistics

    def end_epoch(self, model, counters) -> dict:
        """Measure the selected layers after an epoch; returns the keys to add to its metrics row."""
        p = counters["progressive"]
        stats = layer_stats(model, list(p["stats"][0]))
        p["stats"].append(stats)
        epoch = len(p["stats"]) - 1
        cuts = [c["epoch"] for c in p["cuts"] if epoch - 1 <= c["epoch"] < epoch]
        return dict(spectral=stats, **({"cuts": cuts} if cuts else {}))
