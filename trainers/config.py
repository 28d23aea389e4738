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
    # Progressive rank reduction (trainers/progressive.py): train dense, cut the selected layers during
    # training with the same code path as `laser-tool reduce`.
    reduce_at: Optional[str] = None       # "E", "E1,E2,..." (epochs, may be fractional) or "auto"
    reduce_to: Optional[str] = None       # "SPEC" or "S1,S2,..." (one per cut); auto: the budget params:F
    reduce_layers: list = field(default_factory=list)   # selectors, as `laser-tool reduce --layer`
    reduce_method: str = "svd"            # svd | whiten
    reduce_tolerance: float = 0.1         # auto: a layer is stable once its stable rank moved less than this
    reduce_window: int = 2                # ... relative amount over this many epochs

    def __post_init__(self):
        # One spelling per setting, so a config read back from JSON compares equal to the one written.
        if self.reduce_at is not None and not isinstance(self.reduce_at, str):
            at = self.reduce_at if isinstance(self.reduce_at, (list, tuple)) else [self.reduce_at]
            self.reduce_at = ",".join(f"{a:g}" if isinstance(a, float) else str(a) for a in at)
        if self.reduce_to is not None and not isinstance(self.reduce_to, str):
            self.reduce_to = ",".join(map(str, self.reduce_to))
        self.reduce_layers = [self.reduce_layers] if isinstance(self.reduce_layers, str) else list(self.reduce_layers)

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
