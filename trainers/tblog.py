"""TensorBoard event files for a run (`--tensorboard`): RUN/tb, one point per epoch for every number
the epoch's metrics row holds (losses, accuracies, lr, speed, and any spectral statistics a run
records there, nested dicts flattened to `group/key`). metrics.jsonl stays the record; these files are
for watching with `tensorboard --logdir STUDY/runs`.

A resumed run starts a new event file with purge_step at the resume epoch, so TensorBoard drops any
points a killed run wrote past its resume point instead of showing them twice.
"""
from pathlib import Path

from laser_tool.errors import UserError

GROUPS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
          "val_acc": "accuracy/val", "lr": "lr", "seconds": "time/epoch_seconds",
          "images_per_s": "time/images_per_s"}


def _flat(row: dict, prefix=""):
    for k, v in row.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", float(v)


class TBLog:
    def __init__(self, run_dir, start_epoch: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=start_epoch + 1 if start_epoch else None)

    def epoch(self, row: dict) -> None:
        step = row["epoch"]
        for key, value in _flat({k: v for k, v in row.items() if k != "epoch"}):
            self.writer.add_scalar(GROUPS.get(key, key), value, step)
        self.writer.flush()  # an interrupted run must not lose what it already showed

    def close(self) -> None:
        self.writer.close()
