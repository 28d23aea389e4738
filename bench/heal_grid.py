"""The candidate quick recipe's plateau and heal grid (issue 28, items 2 and 3), read from its study.

    .venv/bin/python bench/heal_grid.py --study /work/scratch/plateau [--out bench/results/heal_grid.json]

The study (docs/recipe.md gives its two commands) trains the quick-narrow baseline at 1x, 3x and 9x its
length, cuts each by svd at keep 0.25 and 0.1, and heals every cut 1 or 3 epochs at 0.5, 1 and 2 times the
heal's lr (a tenth of the training lr). Per length and keep the heal is chosen on VALIDATION accuracy;
the chosen heal's test accuracy is read after the choice, as is every baseline's (the plateau). Run names
carry everything (study/frontier.py): baseline[-eE]-sS, svd-kK-healH[-lrM][-eE]-sS, baseline-plusH[-eE]-sS.
"""
import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from laser_tool.fileio import atomic_write_json  # noqa: E402
from laser_tool.runs.schema import read_config, read_final  # noqa: E402

HEAL = re.compile(r"svd-k(?P<keep>[0-9.]+)-heal(?P<heal>\d+)(?:-lr(?P<mult>[0-9.]+))?(?:-e(?P<length>[0-9.]+))?-s0$")
BASE = re.compile(r"baseline(?:-plus(?P<plus>\d+))?(?:-e(?P<length>[0-9.]+))?-s0$")


def scores(run: Path) -> dict:
    final, why = read_final(run)
    if why:
        return None
    return dict(val_acc=final.get("val_acc"), test_acc=final.get("test_acc"))


def read_study(study: Path, plain_length: float) -> dict:
    """{length: {"baseline": scores, "control": {H: scores}, "heals": [{keep, heal, mult, val_acc, run}]}}."""
    out = {}
    for run in sorted((study / "runs").iterdir()):
        s = scores(run) if run.is_dir() else None
        if s is None:
            continue
        m, b = HEAL.match(run.name), BASE.match(run.name)
        if m:
            length = float(m["length"] or plain_length)
            out.setdefault(length, dict(baseline=None, control={}, heals=[]))["heals"].append(
                dict(keep=float(m["keep"]), heal=int(m["heal"]), mult=float(m["mult"] or 1), val_acc=s["val_acc"],
                     run=run.name))
        elif b:
            length = float(b["length"] or plain_length)
            entry = out.setdefault(length, dict(baseline=None, control={}, heals=[]))
            if b["plus"]:
                entry["control"][int(b["plus"])] = s
            else:
                config, _ = read_config(run)
                entry["baseline"] = dict(s, epochs=config["epochs"], run=run.name)
    return out


def choose(found: dict, study: Path) -> list:
    """Per length and keep, the heal (epochs, lr multiple) with the best validation accuracy; its test
    accuracy read only then."""
    out = []
    for length, entry in sorted(found.items()):
        for keep in sorted({h["keep"] for h in entry["heals"]}, reverse=True):
            grid = sorted((h for h in entry["heals"] if h["keep"] == keep), key=lambda h: (h["heal"], h["mult"]))
            best = max(grid, key=lambda h: h["val_acc"])  # the first of equals: the shorter, lower-lr heal
            test = scores(study / "runs" / best["run"])["test_acc"]
            out.append(dict(length=length, keep=keep, grid=[{k: h[k] for k in ("heal", "mult", "val_acc")} for h in grid],
                            chosen=dict(heal=best["heal"], mult=best["mult"], val_acc=best["val_acc"], test_acc=test)))
    return out


def table(doc: dict) -> str:
    rows = ["| length (epochs) | baseline val / test % | keep | heal grid: val % (epochs x lr multiple) | chosen on val | its test % |",
            "|---|---|---|---|---|---|"]
    for c in doc["choices"]:
        b = doc["plateau"][str(c["length"])]["baseline"]
        grid = ", ".join(f"{g['heal']}x{g['mult']:g}: {100 * g['val_acc']:.2f}" for g in c["grid"])
        ch = c["chosen"]
        rows.append(f"| {c['length']:g} | {100 * b['val_acc']:.2f} / {100 * b['test_acc']:.2f} | {c['keep']:g} | {grid} | "
                    f"{ch['heal']} ep x{ch['mult']:g} ({100 * ch['val_acc']:.2f}) | {100 * ch['test_acc']:.2f} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--plain-length", type=float, default=12.2261, help="the preset's own length (plain names)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "heal_grid.json"))
    a = ap.parse_args(argv)
    study = Path(a.study)
    found = read_study(study, a.plain_length)
    doc = dict(about=__doc__.split("\n")[0], study=str(study),
               plateau={str(k): dict(baseline=v["baseline"], control=v["control"]) for k, v in sorted(found.items())},
               choices=choose(found, study))
    atomic_write_json(a.out, doc)
    print(table(doc))


if __name__ == "__main__":
    main()
