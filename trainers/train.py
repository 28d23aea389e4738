"""The training loop: read it top to bottom.

train(cfg) makes or continues runs/NAME/:
  config.json        every setting (TrainConfig + schedule, split, versions, git commit)
  state.safetensors  the resume point: model, optimizer, scaler, RNG, counters, metric history
  model.safetensors  the best checkpoint by VALIDATION accuracy (never chosen on the test set); with --ema,
                     every checkpoint and evaluation is of the EMA of the weights (ema.py)
  last.safetensors   the latest epoch's model
  metrics.jsonl      one line per epoch
  predictions.safetensors  the best-by-val checkpoint's predicted class per test and validation image
  final.json         test accuracy of the best-by-val and of the last checkpoint, written at the end
  cutK.safetensors   progressive runs (--reduce-at, trainers/progressive.py): the model right after cut K;
                     model.safetensors is then the best epoch after the last cut
Every file is written atomically. Resuming replays nothing: the data order and augmentation are pure
functions of (seed, epoch, step), and the RNG that dropout uses is restored from the resume point, so
on the CPU an interrupted and resumed run ends bitwise identical to an uninterrupted one.
What each epoch and the end write is records.py's.
"""
import contextlib
import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from laser_tool.data import Augment, BatchLoader, default_augment, fit_model, is_folder, load_dataset, short_name
from laser_tool.device import resolve_device
from laser_tool.errors import UserError
from laser_tool.fileio import deferred_commit
from laser_tool.models import ModelSpec, build_model, count_params
from laser_tool.models.evaluate import eval_amp_dtype, evaluate
from laser_tool.models.families import FAMILIES
from laser_tool.runs.checkpoint import save_model
from laser_tool.runs.safety import finished, guarded, remove_run
from laser_tool.runs.schema import config_path, model_path, read_config, write_config, write_metrics
from laser_tool.runs.state import state_path
from laser_tool.signals import Interrupted, StopFlag, signal_name
from laser_tool.vocab import RECIPE_NEUTRAL

from . import distributed as dist_
from . import init_from as init_
from . import progressive
from .config import TrainConfig, check_model_builds, passes, total_steps
from .ema import EMA
from .optim import lr_at, make_optimizer, set_lr
from .records import end_of_epoch, finish, run_config
from .state import load_state, save_state
from .tblog import TBLog


def default_name(cfg: TrainConfig) -> str:
    if cfg.init_from:
        return f"{Path(cfg.init_from).name}-ft{cfg.epochs}-seed{cfg.seed}"
    m = cfg.model
    arch = m.arch.replace(":", "-")  # timm:NAME, python:MODULE:FUNCTION: no colons in a directory name
    if m.arch_args:  # two timm models of one name differ by their arguments
        arch += "-" + hashlib.sha1(json.dumps(m.arch_args, sort_keys=True).encode()).hexdigest()[:6]
    data = short_name(cfg.dataset) if is_folder(cfg.dataset) else cfg.dataset  # no '/' in a run name
    parts = [arch, data, m.variant or "baseline"]
    if m.variant in FAMILIES:
        budget = f"k{m.keep:g}" if m.keep is not None else FAMILIES[m.variant].run_tag(m)
        parts += ["+".join(m.targets), budget]
        parts += [x for x in (m.param, m.init) if x not in ("standard", "default")]
        if not m.sigma_reparam:
            parts.append("nosr")
    if m.mlp_dim:
        parts.append(f"mlp{m.mlp_dim}")
    if cfg.reduce_at is not None:
        parts.append(progressive.name_part(cfg))
    return "-".join(parts + [f"seed{cfg.seed}"])


def settings(d: dict) -> dict:
    """The part of a config.json that identifies what is trained. Settings added to TrainConfig after
    the file was written take their defaults, so an older run still matches the command that made it."""
    full = TrainConfig.from_dict(d.get("train", d)).to_dict()
    return {k: v for k, v in full.items() if k not in RECIPE_NEUTRAL}


def settle_run_dir(run_dir: Path, cfg: TrainConfig, resume, overwrite: bool) -> TrainConfig:
    """Refuse to mix two different runs in one directory; returns the config to train with.

    Reads only, so every DDP rank can call it and agree; rank 0 alone deletes for --overwrite.
    """
    cfg_file = config_path(run_dir)
    if not cfg_file.exists() or overwrite:
        return cfg
    try:
        old, why = read_config(run_dir)
        if why or not isinstance(old, dict) or not isinstance(old.get("train"), dict):
            raise ValueError(why or "not a training run's config")
        kept = TrainConfig.from_dict(old["train"]).validate()
    except (ValueError, UnicodeDecodeError, TypeError, UserError) as e:
        raise UserError(f"{cfg_file} is corrupt or not a laser-tool training config ({str(e)[:80]}); "
                        f"use --overwrite to start this run afresh") from None
    new = settings(cfg.to_dict())
    if settings(old) == new:
        return cfg
    diff = sorted(k for k in set(new) | set(settings(old)) if new.get(k) != settings(old).get(k))
    if resume:
        # --resume continues the run as it was configured; only recipe-neutral settings come from the command.
        print(f"note: --resume continues {run_dir} with its saved settings; ignoring this command's "
              + ", ".join(f"{k}={new.get(k)!r} (saved {settings(old).get(k)!r})" for k in diff), file=sys.stderr)
        return replace(kept, **{k: getattr(cfg, k) for k in RECIPE_NEUTRAL})
    raise UserError(f"{run_dir} holds a run with different settings ({', '.join(diff)}); "
                    f"use --resume to continue it, --overwrite to replace it, or --name for a new run")


def check_finite(loss_sum, run_dir, epoch, step):
    if not math.isfinite(loss_sum.item()):
        kept = [p.name for p in (state_path(run_dir), model_path(run_dir, last=True)) if p.is_file()]
        where = (f"the last good checkpoint is kept in {run_dir} ({', '.join(kept)})" if kept else
                 f"no checkpoint was saved before it")  # name only files that are there
        raise UserError(f"the loss became non-finite at epoch {epoch + 1}, step {step}; {where}: lower --lr or "
                        f"raise --warmup-epochs")


def interrupted(d, where, signum=signal.SIGINT):
    """After the resume point is saved: leave cleanly, telling how to go on (exit code 128 + signal)."""
    if d.is_main:
        by = "" if signum == signal.SIGINT else f" by {signal_name(signum)}"
        print(f"\ninterrupted{by} {where}: saved; run the same command again to resume", file=sys.stderr)
    dist_.cleanup(d)
    raise Interrupted(signum)

@dataclass
class Job:
    """One training run in progress: what the loop reads and the parts a progressive cut replaces."""
    cfg: TrainConfig
    d: object                 # distributed.Dist
    device: torch.device
    run_dir: Path
    splits: object
    spec: ModelSpec
    loader: BatchLoader
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    prog: object              # progressive.Progressive or None
    model: torch.nn.Module    # the raw model (checkpoints, cuts)
    optimizer: object
    scaler: object
    amp_dtype: object
    config: dict
    counters: dict
    wrapped: torch.nn.Module = None  # what the loop calls: compiled and/or DDP-wrapped
    ema: EMA = None                  # --ema: the average of the raw model's weights

    @property
    def scored(self) -> torch.nn.Module:
        """What is evaluated and saved: the EMA of the weights with --ema, else the model."""
        return self.model if self.ema is None else self.ema.module

    def steps_in(self, epoch: int) -> int:
        """Optimizer steps of pass `epoch`: a whole epoch's, or what is left of the run's in the last."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))


@guarded(lambda cfg: Path(cfg.out) / (cfg.name or default_name(cfg)))
def train(cfg: TrainConfig, resume=None, overwrite=False, progress=None, _interrupt_at_step=None) -> Path:
    """Train (or continue) the run `cfg` describes; returns its directory. A finished run returns at once."""
    progressive.check(cfg)  # bad --reduce-* settings fail before anything is read or written
    check_model_builds(cfg)  # and a variant's sizes
    device = resolve_device(cfg.device)
    d = dist_.setup(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    source = None
    if cfg.init_from:  # the model is the source's, exactly: its train-time variant and factored layers
        source = init_.source_config(cfg.init_from)
        cfg = replace(cfg, model=ModelSpec.from_dict(source["model"]))
    run_dir = Path(cfg.out) / (cfg.name or default_name(cfg))
    cfg = settle_run_dir(run_dir, cfg, resume, overwrite)
    dist_.barrier(d)  # every rank has read the old config before rank 0 may delete it
    if overwrite and d.is_main and run_dir.exists():
        remove_run(run_dir)
    dist_.barrier(d)
    if finished(run_dir) and not overwrite:
        if d.is_main:
            print(f"{run_dir}: already complete", file=sys.stderr)
        return run_dir
    if source:  # the source's split, or its training images could sit in our validation set
        init_.check_split(cfg, source, cfg.init_from)
    job = prepare(cfg, d, device, run_dir, source)
    run_epochs(job, progress, _interrupt_at_step)
    if d.is_main:
        finish(run_dir, job.scored, job.config, job.counters, job.splits, cfg, job.spec, device, job.amp_dtype,
               count_params(job.model))
    dist_.barrier(d)
    dist_.cleanup(d)
    return run_dir


def prepare(cfg, d, device, run_dir: Path, source) -> Job:
    """The data, loader and schedule; the model (built, or rebuilt with a resume point's factored layers),
    optimizer and scaler, restored from the resume point if there is one; config.json written."""
    m = cfg.model  # a folder dataset's images are decoded to the model's size and channels (data/folder.py)
    splits = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_size, cfg.seed, cfg.train_subset,
                          m.image_size, m.channels, cfg.skip_bad_images)
    # config["train"] keeps what was asked, for comparisons; "model" what was built
    spec = ModelSpec.from_dict(source["model"]) if source else fit_model(cfg.model, splits)
    micro, rem = divmod(cfg.batch_size, d.world_size * cfg.grad_accum)
    if rem or micro < 1:
        raise UserError(f"--batch-size {cfg.batch_size} is not divisible by world size {d.world_size} x "
                        f"--grad-accum {cfg.grad_accum}; pick a multiple")
    augment = default_augment(cfg.dataset) if cfg.augment else Augment()
    loader = BatchLoader(splits.train_x, splits.train_y, micro, shuffle=True, drop_last=True, augment=augment,
                         seed=cfg.seed, device=device, rank=d.rank, world_size=d.world_size)
    steps_per_epoch = len(loader) // cfg.grad_accum
    if steps_per_epoch < 1:
        raise UserError(f"{len(splits.train_x)} training images make no full batch of {cfg.batch_size}; "
                        f"lower --batch-size")
    all_steps = total_steps(cfg, steps_per_epoch)
    warmup_steps = min(all_steps, round(cfg.warmup_epochs * steps_per_epoch))

    prog = progressive.plan_for(cfg, spec, steps_per_epoch, splits, device, fused=device.type == "cuda")
    state_file = state_path(run_dir)
    if prog is not None and state_file.exists():  # the resume point may hold factored layers: build those
        spec = replace(spec, layers={**spec.layers, **prog.resumed_layers(state_file)})
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    init_info = init_.load_init_weights(model, cfg.init_from) if source else None
    model = model.to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, fused=device.type == "cuda",
                               decay_all=cfg.decay_all)
    amp_dtype = eval_amp_dtype(device, cfg.amp)  # training and every evaluation use the same precision
    if amp_dtype is not None:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    schedule = dict(steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps, total_steps=all_steps)
    batching = {"micro_batch_per_rank": micro, "world_size": d.world_size, "grad_accum": cfg.grad_accum}
    config = run_config(cfg, spec, model, splits, augment, amp_dtype, schedule, batching, source, init_info)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    counters = resume_point(state_file, model, optimizer, scaler, device, d, run_dir, ema)
    if prog is not None:
        prog.start(model, counters, config)
    if d.is_main:
        write_config(run_dir, config)
        write_metrics(run_dir, counters["history"])
    if source and not counters["history"] and counters["best_epoch"] < 0:
        # The starting model is the epoch-0 candidate of the validation selection: a fine-tune
        # (e.g. healing) that never beats it on validation keeps it, so it can never end up worse.
        _, val0 = evaluate(model, splits.val_x, splits.val_y, cfg.eval_batch_size, device, amp_dtype)
        counters.update(best_val_acc=val0, best_epoch=0, init_val_acc=val0)
        if d.is_main:
            save_model(model_path(run_dir), model, config)
    return Job(cfg, d, device, run_dir, splits, spec, loader, steps_per_epoch, all_steps, warmup_steps, prog,
               model, optimizer, scaler, amp_dtype, config, counters, ema=ema)


def resume_point(state_file: Path, model, optimizer, scaler, device, d, run_dir: Path, ema=None) -> dict:
    """The counters (epoch, step, best so far, history) of a fresh run, or restored with everything else."""
    counters = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val_acc": -1.0, "best_epoch": -1,
                "history": [], "partial": None, **({"ema_start": 0} if ema is not None else {})}
    if state_file.exists():
        counters = load_state(state_file, model, optimizer, scaler, device, ema)
        if d.is_main:
            print(f"{run_dir}: resuming at epoch {counters['epoch'] + 1}, step {counters['step_in_epoch']}",
                  file=sys.stderr)
    return counters


def run_epochs(job: Job, progress, interrupt_at_step) -> None:
    """Every epoch left: train it, then (rank 0) evaluate and write its files; a stop signal saves the
    resume point at the next step (or the epoch's end) and raises Interrupted."""
    cfg, d, counters = job.cfg, job.d, job.counters
    job.wrapped = wrap_model(job.model, cfg, job.device, d)
    show_bar = progress if progress is not None else (d.is_main and sys.stderr.isatty())
    tb = TBLog(job.run_dir, counters["epoch"]) if cfg.tensorboard and d.is_main else None
    with StopFlag() as stop:
        n_passes = passes(cfg, job.steps_per_epoch)
        for epoch in range(counters["epoch"], n_passes):
            bar = _bar(show_bar, job.steps_in(epoch), counters["step_in_epoch"], epoch, n_passes)
            loss_sum, correct, seen, seconds, stopped = train_epoch(job, epoch, stop, bar, interrupt_at_step)
            if stopped:
                if d.enabled:  # every rank stops at the same step; the saved totals cover them all
                    loss_sum, correct, seen = dist_.sum_over_ranks(d, loss_sum, correct, seen)
                counters["partial"] = {"loss_sum": loss_sum.item(), "correct": int(correct.item()),
                                       "seen": seen, "seconds": seconds}
                if d.is_main:
                    save_state(state_path(job.run_dir), job.model, job.optimizer, job.scaler, counters,
                               job.config, job.ema)
                interrupted(d, f"at epoch {epoch + 1}, step {counters['step_in_epoch']}", stop.signum)
            if d.enabled:  # metrics over the whole global batch, not rank 0's shard
                loss_sum, correct, seen = dist_.sum_over_ranks(d, loss_sum, correct, seen)
            check_finite(loss_sum, job.run_dir, epoch, counters["step_in_epoch"])  # another rank's NaN shows here
            extra = job.prog.end_epoch(job.model, counters) if job.prog is not None else None  # every rank
            if d.is_main:
                with deferred_commit():  # the epoch's files land together, or (disk full) none of them
                    end_of_epoch(job, epoch, loss_sum.item() / seen, correct.item() / seen, seen, seconds,
                                 extra=extra)
                if tb is not None:
                    tb.epoch(counters["history"][-1])
            else:
                counters.update(epoch=epoch + 1, step_in_epoch=0, partial=None)
            dist_.barrier(d)
            if stop.set and epoch + 1 < n_passes:
                interrupted(d, f"after epoch {epoch + 1}", stop.signum)
    if tb is not None:
        tb.close()


def train_epoch(job: Job, epoch: int, stop, bar, interrupt_at_step):
    """The optimizer steps of one epoch from where the counters stand (a resumed epoch carries its
    partial totals); returns (loss sum, correct, images, seconds, stopped early)."""
    cfg, d, counters, device = job.cfg, job.d, job.counters, job.device
    job.wrapped.train()
    # A resumed epoch's partial totals are over all ranks (summed when it stopped): rank 0 carries them.
    p = (counters["partial"] if d.is_main else None) or {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    loss_sum = torch.tensor(p["loss_sum"], dtype=torch.float64, device=device)
    correct = torch.tensor(p["correct"], dtype=torch.int64, device=device)
    seen, seconds = p["seen"], p["seconds"]
    first_micro = counters["step_in_epoch"] * cfg.grad_accum
    steps = job.steps_in(epoch)
    t0 = time.perf_counter()
    stopped = False
    for i, (x, y) in enumerate(job.loader.epoch(epoch, first_micro), start=first_micro):
        if i >= steps * cfg.grad_accum:
            break
        last_micro = (i + 1) % cfg.grad_accum == 0
        if i % cfg.grad_accum == 0:
            if job.prog is not None and job.prog.due(counters):  # trainers/progressive.py: cut rank now
                job.optimizer = job.prog.cut(job.model, job.optimizer, counters, job.config, job.run_dir, d.is_main)
                job.wrapped = wrap_model(job.model, cfg, device, d)
                if job.ema is not None:  # new layers: the average starts again from the cut model
                    job.ema.restart(job.model, counters)
            set_lr(job.optimizer, lr_at(counters["global_step"], job.total_steps, job.warmup_steps, cfg.lr,
                                        cfg.schedule))
        sync_ctx = job.wrapped.no_sync() if d.enabled and not last_micro else contextlib.nullcontext()
        with sync_ctx:
            with torch.autocast(device.type, dtype=job.amp_dtype or torch.bfloat16, enabled=job.amp_dtype is not None):
                logits = job.wrapped(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            job.scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(-1) == y).sum()
        seen += len(y)
        if not last_micro:
            continue
        optimizer_step(job)
        step = counters["step_in_epoch"]
        if step % 25 == 0 or step == steps:
            check_finite(loss_sum, job.run_dir, epoch, step)
            if bar is not None:
                el = seconds + time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen * d.world_size / max(el, 1e-9):.0f}")
        if bar is not None:
            bar.update(1)
        if interrupt_at_step is not None and counters["global_step"] == interrupt_at_step:
            stop.set = True
        if d.enabled and step % 25 == 0:  # all ranks must agree to stop at the same step
            stop.set = dist_.any_rank(d, stop.set, device)
        if stop.set and step < steps and (not d.enabled or step % 25 == 0):
            stopped = True  # mid-epoch; at an epoch's end the normal save below serves
            break
    seconds += time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return loss_sum, correct, seen, seconds, stopped


def optimizer_step(job: Job) -> None:
    """Unscale, clip, step, zero the gradients, count the step; then move the EMA (--ema) towards it."""
    job.scaler.unscale_(job.optimizer)
    if job.cfg.grad_clip is not None:  # None: --grad-clip off
        torch.nn.utils.clip_grad_norm_(job.model.parameters(), job.cfg.grad_clip)
    job.scaler.step(job.optimizer)
    job.scaler.update()
    job.optimizer.zero_grad(set_to_none=True)
    job.counters["global_step"] += 1
    job.counters["step_in_epoch"] += 1
    if job.ema is not None:
        job.ema.update(job.model, job.counters)


def wrap_model(raw_model, cfg, device, d):
    """The module the loop calls: compiled and/or DDP-wrapped; rebuilt after a progressive cut."""
    model = raw_model
    if cfg.compile:  # CUDA, or the CPU through inductor's C++ backend (bench/train.py measures both)
        model = torch.compile(model)
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    return model


def _bar(show, total, initial, epoch, epochs):
    if not show:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=0.5)
