"""Every setting of a training run, as one dataclass; stored in config.json and in each checkpoint."""
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from laser_tool.models import ModelSpec


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    download: bool = False
    val_size: Optional[int] = None        # None: the dataset's default (5,000)
    train_subset: Optional[int] = None    # keep only this many training images (quick CPU runs)
    augment: bool = True                  # the dataset's default augmentation (data.DEFAULT_AUGMENT)
    epochs: int = 10
    batch_size: int = 256                 # per optimizer step, summed over ranks and accumulation
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda
    amp: str = "auto"                     # auto (bf16 on CUDA, fp16+scaler without bf16, off on CPU) | off
    compile: bool = False
    eval_batch_size: int = 1000
    out: str = "runs"
    name: Optional[str] = None
    tensorboard: bool = False             # also write TensorBoard event files to RUN/tb

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["model"] = ModelSpec.from_dict(d.get("model", {}))
        return cls(**kw)
