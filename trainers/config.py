"""Every setting of a training run, as one dataclass (stored in config.json and in each checkpoint),
and the one way to build it from a preset plus the settings given (`build_config`)."""
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import torch

from laser_tool.data import canonical_name, fit_model, folder_defaults, is_folder
from laser_tool.errors import UserError, flag_name
from laser_tool.models import ModelSpec, build_model
from laser_tool.models.external import is_external
from laser_tool.vocab import SCHEDULES

from .presets import PRESETS


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    download: bool = False
    val_size: Optional[int] = None        # None: the dataset's default (5,000)
    train_subset: Optional[int] = None    # keep only this many training images (quick CPU runs)
    augment: bool = True                  # the dataset's default augmentation (data.DEFAULT_AUGMENT)
    skip_bad_images: bool = False         # folder datasets: leave unreadable files out (counted) instead of stopping
    epochs: float = 10                    # may be fractional: round(epochs * steps per epoch) optimizer
                                          # steps in ceil(epochs) passes, the last one cut short
    batch_size: int = 256                 # per optimizer step, summed over ranks and accumulation
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "cosine"              # the lr's shape after warmup: cosine | linear | wsd (trainers/optim.py)
    ema: float = 0.0                      # decay per optimizer step of an EMA of the weights (trainers/ema.py);
                                          # 0 = off. On: evaluation and the saved models use the average
    grad_clip: Optional[float] = 5.0      # max gradient norm; None = no clipping (`--grad-clip off`)
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda
    amp: str = "auto"                     # auto (bf16 on CUDA, fp16+scaler without bf16, off on CPU) | off
    compile: bool = False
    decay_all: bool = False               # weight decay on every parameter (the seed's AdamW) or on matrices only
    init_from: Optional[str] = None       # start from this run's weights and structure (fine-tuning, healing)
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

    tensorboard: bool = False             # also write TensorBoard event files to RUN/tb
    # `study --match-compute`: this run's epochs were set so its training FLOPs equal a heal's
    # (study/compute.py): {"base_epochs": E, "heal_epochs": H}. A label (it changes nothing trained) that
    # keeps the run apart from the same row at the baseline's epochs and names that baseline's length.
    matched_to: Optional[dict] = None
    # `study --lr-grid`: this run is one point of a learning-rate grid, {"base_lr": lr, "mult": m}
    # (lr = base_lr * m); compare keeps the grid point with the best validation accuracy. A label too.
    lr_grid: Optional[dict] = None

    def __post_init__(self):
        # One spelling per setting, so a config read back from JSON compares equal to the one written.
        if self.reduce_at is not None and not isinstance(self.reduce_at, str):
            at = self.reduce_at if isinstance(self.reduce_at, (list, tuple)) else [self.reduce_at]
            self.reduce_at = ",".join(f"{a:g}" if isinstance(a, float) else str(a) for a in at)
        if self.reduce_to is not None and not isinstance(self.reduce_to, str):
            self.reduce_to = ",".join(map(str, self.reduce_to))
        self.reduce_layers = [self.reduce_layers] if isinstance(self.reduce_layers, str) else list(self.reduce_layers)
        if isinstance(self.epochs, float) and self.epochs.is_integer():
            self.epochs = int(self.epochs)  # 4.0 and 4 are one setting

    def validate(self) -> "TrainConfig":
        """Every number in its valid range, checked before any data is read; UserError names the option."""
        def num(name, value, lo, hi=math.inf, lo_open=False, hi_open=False, integer=False):
            flag = flag_name(name)
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                raise UserError(f"{flag} {value!r} is not a{'n integer' if integer else ' finite number'}")
            if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
                rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open or hi == math.inf else ']'}"
                raise UserError(f"{flag} {value!r} is outside its valid range {rng}")
        num("epochs", self.epochs, 0, lo_open=True)
        num("batch_size", self.batch_size, 1, integer=True)
        num("eval_batch_size", self.eval_batch_size, 1, integer=True)
        num("grad_accum", self.grad_accum, 1, integer=True)
        num("lr", self.lr, 0, lo_open=True)
        num("weight_decay", self.weight_decay, 0)
        num("warmup_epochs", self.warmup_epochs, 0)
        if self.grad_clip is not None:
            num("grad_clip", self.grad_clip, 0, lo_open=True)
        num("label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise UserError(f"--ema {self.ema!r} is outside [0, 1): give the decay per optimizer step (e.g. 0.999), "
                            f"or 0 for no average")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule {self.schedule!r}: choose {', '.join(SCHEDULES)}")
        num("seed", self.seed, 0, integer=True)
        if self.val_size is not None:
            if isinstance(self.val_size, int) and self.val_size == 0:
                raise UserError("--val-size 0 leaves no validation images, which the best epoch, search, heal and "
                                "compare's --metric val choose on; hold out at least 1 image (default 5000)")
            num("val_size", self.val_size, 1, integer=True)
        if self.train_subset is not None:
            num("train_subset", self.train_subset, 1, integer=True)
        if self.amp not in ("auto", "off"):
            raise UserError(f"--amp {self.amp!r}: choose auto or off")
        self.model.validated()  # model sizes and dropouts (patch vs image size: once the data is known)
        return self

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


def build_config(preset=None, given=None) -> TrainConfig:
    """TrainConfig = defaults <- preset <- the settings given, by name: ModelSpec fields set the model,
    TrainConfig fields the rest (keys come from the dataclasses, so a new field needs no list kept by
    hand). A given value of None or () means "not given"; `grad_clip` "off" means no clipping."""
    model_keys = {f.name for f in fields(ModelSpec)}
    train_keys = {f.name for f in fields(TrainConfig)} - {"model"}
    given = {k: v for k, v in (given or {}).items() if v is not None and v != ()}
    unknown = sorted(set(given) - model_keys - train_keys)
    if unknown:
        raise ValueError(f"not a ModelSpec or TrainConfig setting: {', '.join(unknown)}")
    cfg = TrainConfig()
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = dict(PRESETS[preset])
        cfg = replace(cfg, model=ModelSpec(**p.pop("model")), **p)
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if k in model_keys}
    if "arch" in model and model["arch"] != cfg.model.arch and is_external(model["arch"]):
        # A timm/python arch over a preset of the seed's models: the preset's sizes (dim, depth, patch,
        # dropouts) describe its own arch, so the model starts afresh; the recipe stays the preset's.
        cfg = replace(cfg, model=ModelSpec())
    cfg = replace(cfg, model=replace(cfg.model, **model), **{k: v for k, v in given.items() if k in train_keys})
    if is_folder(cfg.dataset):
        cfg = fit_folder(cfg, set(model) | set(PRESETS.get(preset, {}).get("model", {})))
    check_given_sizes(cfg, model)
    return replace(cfg, grad_clip=None) if cfg.grad_clip == "off" else cfg


def passes(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """How many passes over the training set a run makes: its steps in whole epochs, rounded up."""
    return -(-total_steps(cfg, steps_per_epoch) // steps_per_epoch)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The optimizer steps of the whole run: round(epochs * steps per epoch), at least one."""
    return max(1, round(cfg.epochs * steps_per_epoch))


def fit_folder(cfg: TrainConfig, set_keys: set) -> TrainConfig:
    """folder:PATH with PATH absolute (so a later command re-opens it), and the model's image size and
    channels, where neither a flag nor the preset set them, the folder's own (data/folder.py)."""
    size, channels = folder_defaults(cfg.dataset, cfg.model.image_size if "image_size" in set_keys else None,
                                     cfg.model.channels if "channels" in set_keys else None)
    return replace(cfg, dataset=canonical_name(cfg.dataset),
                   model=replace(cfg.model, image_size=size, channels=channels))


def check_given_sizes(cfg: TrainConfig, model_given: dict) -> None:
    """An explicit --num-classes, --channels or --image-size the dataset would replace by its own is a
    conflict (a folder keeps the given size and channels: it is decoded to them; its classes are its own)."""
    given = {k: model_given[k] for k in ("num_classes", "channels", "image_size") if k in model_given}
    if not given:
        return
    fitted = fit_model(cfg.model, cfg.dataset)
    for key, value in given.items():
        if getattr(fitted, key) != value:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {value} conflicts with {cfg.dataset}'s {getattr(fitted, key)}; drop {flag} "
                            f"(the model takes the dataset's)")


def check_model_builds(cfg: TrainConfig) -> None:
    """A variant's sizes (DYAD's n_dyad, Monarch's blocks, BTT's rank) fail here, before any data is read:
    the model is built on the meta device (no memory, no init drawn from the RNG, which is restored anyway)."""
    if cfg.init_from or not cfg.model.variant:
        return
    spec = fit_model(cfg.model, cfg.dataset)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            build_model(spec)
        except UserError:
            raise
        except Exception:  # noqa: BLE001 - code that cannot run on the meta device is built for real later
            pass
