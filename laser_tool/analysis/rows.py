"""One comparison row per group of runs (the seeds of one experiment): its accuracy statistics over
seeds, its costs (keep, forward and training FLOPs, training seconds) and the slots its tests fill."""
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from ..errors import UserError
from ..runs.reader import Run, finished_run
from . import costs
from .describe import curve, layer_role, roles_text
from .stats import summarize

# What a row is tested against (its vs_NAME entries): its baseline, and for a post-hoc row the train-time
# row of matching parameters it is paired with.
VERSUS = ("baseline", "paired")


@dataclass(eq=False)  # compared and hashed by identity
class Group:
    desc: dict
    runs: list
    label: str = ""
    family: str = ""
    base: "Group" = None

    @property
    def accs(self) -> list:
        return [r.acc for r in self.runs]

    @property
    def params(self):
        counts = [r.final.get("params") for r in self.runs if r.final.get("params") is not None]
        return max(set(counts), key=counts.count) if counts else None

    def _split(self, which):
        sizes = [(r.config.get("split") or {}).get(which) for r in self.runs]
        return sizes[0] if sizes and isinstance(sizes[0], int) and sizes[0] > 0 else None

    @property
    def test_size(self):
        """Test-set size (the trainer records it in config.json's split)."""
        return self._split("test")

    @property
    def val_size(self):
        return self._split("val")


def costs_of(g: Group) -> dict:
    """keep (mean over seeds) and targeted layers against the group's baseline; FLOPs of a forward pass
    and of training the weights it holds (costs.trained_flops: a post-hoc row its baseline's training, a
    healed row that plus the heal, a progressive row its dense phase at dense cost)."""
    out = dict(keep=None, targeted_layers=None, forward_flops=None, train_flops=None)
    try:
        spec = lambda r: r.config["model"]
        if g.base is not None:
            keeps = [costs.keep(spec(r), spec(g.base.runs[0]), g.desc["targeted"]) for r in g.runs]
            out.update(keep=mean(k for k, _ in keeps), targeted_layers=roles_text(layer_role(n)[1] for n in keeps[0][1])
                       if keeps[0][1] else None)
        r = g.runs[0]
        out["forward_flops"] = costs.forward_flops(spec(r))[0]
        out["train_flops"] = costs.trained_flops(r.config)
    except (UserError, TypeError, ValueError, KeyError, RuntimeError):
        pass  # an unbuildable spec leaves the costs unknown; the row itself still stands
    return out


def train_seconds(run: Run):
    """Training time of the weights a run holds: a run started from another (`train --init-from`, e.g.
    healing) adds the time that made its source's weights (a reduced source carries its baseline's)."""
    own = run.final.get("train_seconds")
    if not isinstance(own, (int, float)):
        return None
    src = run.config.get("init_source")
    if isinstance(src, dict) and src.get("run"):
        source = finished_run(Path(src["run"]))
        before = source.final.get("train_seconds") if source is not None else None
        own += before if isinstance(before, (int, float)) else 0
    return own


def make_row(g: Group, section: str, speed: dict, roots: dict, metric: str) -> dict:
    st, seeds = summarize(g.accs, g.test_size), [r.seed for r in g.runs]
    val_accs = [r.val_acc for r in g.runs]
    vst = summarize([v for v in val_accs if v is not None], g.val_size)
    secs = [t for t in map(train_seconds, g.runs) if t is not None]
    warnings = [f"{r.name}: {w}" for r in g.runs for w in r.warnings]
    if len({r.final.get("params") for r in g.runs}) > 1:
        warnings.append("parameter counts differ between seeds; the most common is shown")
    if len(set(seeds)) < len(seeds):
        warnings.append(f"runs share a seed ({seeds}): they are not independent samples, so n overstates the evidence")
    if g.base is None:
        warnings.append("no same-recipe baseline: no dense unreduced run shares this row's training recipe "
                        "and base model, so it is not tested")
    row = dict(status="ok", section=section, label=g.label, family=g.family, curve=curve(g.desc, g.family),
               dataset=g.desc["section"][0], arch=g.desc["spec"].arch, metric=metric, n=st["n"], seeds=seeds,
               runs=[str(r.path) for r in g.runs], roots=[roots[id(r)] for r in g.runs], params=g.params,
               accs=g.accs, acc_mean=st["mean"], acc_std=st["std"], acc_ci_low=st["ci_low"],
               acc_ci_high=st["ci_high"], ci_kind=st["ci_kind"], test_size=g.test_size,
               val_accs=val_accs, val_acc_mean=vst["mean"], val_acc_std=vst["std"], val_size=g.val_size,
               baseline=g.base.label if g.base is not None else None, budget=g.runs[0].config.get("budget"),
               length=g.base.desc["recipe"].get("epochs") if g.base is not None else None,
               **costs_of(g),
               train_seconds=mean(secs) if secs else None, latency=speed.get(id(g)),
               heal_epochs=g.desc["heal"], iso_compute=bool(g.desc.get("iso_compute")),
               reduction=[list(e) for e in g.desc["reductions"]], warnings=warnings)
    row.update(**no_versus("baseline"), **no_versus("paired"), paired_with=None, params_vs_paired=None)
    return row


def no_versus(name: str) -> dict:
    return {f"diff_vs_{name}": None, f"diff_vs_{name}_ci": None, f"diff_vs_{name}_ci_kind": None,
            f"p_vs_{name}": None, f"p_vs_{name}_kind": None, f"p_vs_{name}_holm": None, f"vs_{name}": None}
