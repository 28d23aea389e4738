"""What a training run writes: its config.json record, one metrics row, checkpoint and resume point
per epoch, and at the end final.json with the test accuracy (the test set's only use) and the
selected model's per-image predictions."""
import dataclasses
import sys

import torch

from laser_tool.models.evaluate import evaluate, evaluate_with_predictions, precision_name, predict
from laser_tool.models.surgery import structure_record
from laser_tool.runs.checkpoint import load_model, save_model
from laser_tool.runs.predictions import predictions_bytes
from laser_tool.runs.safety import WRITER
from laser_tool.models.families import FAMILIES
from laser_tool.runs.schema import MetricsRow, TrainFinal, model_path, write_final, write_metrics
from laser_tool.runs.state import state_path

from . import init_from as init_
from .config import passes
from .ema import WARMUP
from .optim import SCHEDULE_KINDS
from .provenance import device_name, git_commit, versions
from .state import save_state


def run_config(cfg, spec, model, splits, augment, amp_dtype, schedule: dict, batching: dict, source,
               init_info) -> dict:
    """config.json: the request (`train`, and its keys flattened), what was built (`model`, `params`,
    `structure`), the schedule, batching and split, what the requests resolved to, and provenance."""
    config = {
        "kind": "train", "written_by": WRITER, "train": cfg.to_dict(), "model": spec.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "schedule": {"kind": f"{SCHEDULE_KINDS[cfg.schedule]}, stepped per optimizer step", **schedule},
        "batching": batching,
        "split": {"train": len(splits.train_x), "val": len(splits.val_x), "test": len(splits.test_x),
                  "val_indices": splits.val_indices, "source": splits.source},
        # What the requests (train.augment, train.amp, train.decay_all) resolved to.
        "resolved": {"augment": dataclasses.asdict(augment), "amp": precision_name(amp_dtype),
                     "eval_precision": precision_name(amp_dtype),
                     "weight_decay_on": "every parameter" if cfg.decay_all else "matrices (ndim >= 2)",
                     **({"ema_decay": WARMUP, "evaluated_and_saved": "the EMA of the weights"} if cfg.ema else {})},
        "versions": versions(), "git_commit": git_commit(),
        "threads": torch.get_num_threads(),  # CPU results can depend on it (reduction order in matmuls)
    }
    if spec.variant in FAMILIES:  # the budget asked for and reached, per layer, with any lr multipliers
        config["structure"] = structure_record(model, spec)
    if source:
        config["init_source"] = init_info  # "init_from" is the request (a path)
        config.update(init_.inherited(source, cfg))
    # The request's keys, flattened for readers who just want the usual keys (compare, reduce); no
    # resolved value shares a name with them. The request `schedule` (the shape's name) is train.schedule
    # only: the top-level "schedule" is the record above, which names the shape in its "kind".
    config.update({k: v for k, v in cfg.to_dict().items() if k not in ("model", "schedule")})
    return config


def end_of_epoch(job, epoch, train_loss, train_acc, images, seconds, extra=None):
    """Rank 0 after an epoch of `job` (train.py's Job, taken whole): score validation, keep the best
    model, write the last one, the resume point and the metrics row. The model scored and written is
    job.scored: the EMA of the weights with --ema (trainers/ema.py)."""
    run_dir, model, optimizer, counters, config = job.run_dir, job.scored, job.optimizer, job.counters, job.config
    splits, cfg, device, amp_dtype = job.splits, job.cfg, job.device, job.amp_dtype
    val_loss, val_acc = evaluate(model, splits.val_x, splits.val_y, cfg.eval_batch_size, device, amp_dtype)
    row = MetricsRow(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                     lr=optimizer.param_groups[0]["lr"], train_images=images, seconds=seconds,
                     images_per_s=images / max(seconds, 1e-9), extra=extra or {}).to_dict()
    counters["history"].append(row)
    if val_acc > counters["best_val_acc"]:
        counters["best_val_acc"], counters["best_epoch"] = val_acc, epoch + 1
        save_model(model_path(run_dir), model, config)
    save_model(model_path(run_dir, last=True), model, config)
    counters.update(epoch=epoch + 1, step_in_epoch=0, partial=None)
    # The resume point is written last: everything before it is re-derivable if we crash in between.
    save_state(state_path(run_dir), job.model, optimizer, job.scaler, counters, config, job.ema)
    write_metrics(run_dir, counters["history"])
    print(f"epoch {epoch + 1}/{passes(cfg, config['schedule']['steps_per_epoch'])}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
          f"val loss {val_loss:.4f} acc {val_acc:.4f}  {row['images_per_s']:.0f} img/s", file=sys.stderr)


def finish(run_dir, model, config, counters, splits, cfg, spec, device, amp_dtype, params):
    """Test accuracy of the last model and of the best-by-validation checkpoint: the test set's only use."""
    _, test_last = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size, device, amp_dtype)
    best, _ = load_model(model_path(run_dir), device)
    # The selected model's per-image test predictions come from this same pass (compare pairs runs by them).
    _, test_best, test_pred = evaluate_with_predictions(best, splits.test_x, splits.test_y, cfg.eval_batch_size,
                                                        device, amp_dtype)
    val_pred = predict(best, splits.val_x, cfg.eval_batch_size, device, amp_dtype) if len(splits.val_x) else None
    hist = counters["history"]
    final = TrainFinal(
        test_acc=test_best, test_acc_last=test_last, val_acc=counters["best_val_acc"],
        val_acc_last=hist[-1]["val_acc"], best_epoch=counters["best_epoch"], epochs=cfg.epochs, params=params,
        train_seconds=sum(r["seconds"] for r in hist), images_per_s=sum(r["images_per_s"] for r in hist) / len(hist),
        device=device_name(device), dataset=cfg.dataset, arch=spec.arch, seed=cfg.seed,
        eval_precision=precision_name(amp_dtype), threads=torch.get_num_threads(),
        init_val_acc=counters.get("init_val_acc"))
    preds = predictions_bytes(splits.name, test_pred, splits.test_y, val_pred, splits.val_y, splits.val_indices)
    write_final(run_dir, final, predictions=preds)  # the run vouches for its files; predictions land with it
    print(f"{run_dir}: test acc {test_best:.4f} (best by val, epoch {counters['best_epoch']}), "
          f"{test_last:.4f} (last); {params:,} params", file=sys.stderr)
