"""A study's report: STUDY/report.md (the answer, the table, the plot, the commands), results.json,
plot.png, and study.json (every invocation with its wall time and the runs it made)."""
import os
import time
from pathlib import Path

import torch

from ..analysis.answer import answer, confirmatory_pairs
from ..analysis.answer import markdown as answer_markdown
from ..analysis.compare import adopt_confirmatory, compare_runs
from ..analysis import decided as decided_answer
from ..analysis import latency_frontier
from ..analysis.plot import plot, plot_decided
from ..analysis.render import markdown, to_json
from ..device import cpu_name, resolve_device
from ..fileio import atomic_write_text
from . import decide, journal
from .record import describe_request


def write_report(out: Path, study, steps: list, notes: list, t_start: float, work: int = 0, invocation: int = None,
                 requests=(), decided=None) -> Path:
    """STUDY/report.md (+ plot.png, results.json) from the runs under STUDY/runs, for `study` (run.py's
    StudyRequest: its preset, device and margin); `invocation` is this invocation's index in the journal
    (study.json), which it marks ended; `requests`, what each invocation asked for (the seeds are the
    most any asked; more than one request: the study was extended); `decided`, the confirmation's
    comparisons (run.py's confirm), which become the report's answer and results.json's `answer`."""
    preset, margin = study.preset, study.margin
    seeds = max((r["seeds"] for r in requests), default=study.seeds or 1)
    dev = str(resolve_device(study.device))
    result = compare_runs([out / "runs"], speed=study.speed, device=dev)
    result.notes += notes
    items = answer(result.rows, margin)  # chosen on validation; its tests are the confirmatory family
    adopt_confirmatory(result, confirmatory_pairs(items))
    plot(result.rows, out / "plot.png", title=f"study {preset}", winners={i["best"]["label"] for i in items})
    decision = decide.read_decision(out) if decided else None
    extra = dict(answer=decided_answer.answer_json(decision, decided)) if decided else {}
    at_latency = latency_section(result.rows, decision, decided)
    extra["latency_frontier"] = at_latency[0]
    if decided:
        plot_decided(decided, margin, out / "decided.png")
    atomic_write_text(out / "results.json", to_json(result, **extra))
    wall = time.time() - t_start  # this invocation, the report's own timing passes included
    if invocation is None:
        invocation = journal.start(out, {})
    journal.end(out, invocation, wall, work)
    t = journal.totals(journal.read(out))
    stopped = f", {t['interrupted']} of them interrupted" if t["interrupted"] else ""
    gpu = f", {torch.cuda.get_device_name()}" if dev.startswith("cuda") else ""
    head = [f"# Study `{preset}`: {seeds} seed(s)", "",
            f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu}; "
            f"torch {torch.__version__}. Latency: " + ("every row's model as deployed, timed in shared rounds (see "
                                                     "the table's notes)." if study.speed else "not measured (--no-speed)."),
            f"Wall time: {t['seconds'] / 60:.1f} min over {t['invocations']} invocation(s) of `laser-tool study`"
            f"{stopped} (this one {wall / 60:.1f} min, {work} run(s) made; {t['runs_made']} in all).",
            ""]
    if len(requests) > 1:
        head += ["Extended: the study is the union of what each invocation asked (`--extend`):", ""]
        head += [f"- {describe_request(r)}" for r in requests] + [""]
    found = answer_markdown(result.rows, margin, items)
    if decided:
        head += ["## The decided answer: confirmed on fresh seeds", "",
                 decided_answer.markdown(decision, decided, margin),
                 "![per-seed differences, the verdicts' intervals and the margin](decided.png)", ""]
    elif found:
        head += ["## The answer: which way of slimming loses least at each budget", "", found]
    if at_latency[1]:
        head += ["## The answer per measured latency", "", at_latency[1]]
    head += ["![test accuracy against the baseline's, over parameters kept, training FLOPs and latency](plot.png)", "",
             "## All rows (exploratory)", ""]
    text = "\n".join(head) + markdown(result, commands={s.name: [s.command] for s in steps})
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def latency_section(rows, decision, decided) -> tuple:
    """(the latency frontier as results.json records it, its markdown): the one chosen on the exploration seeds
    with the decided verdicts where the study confirmed, else the rows' own (exploratory)."""
    if decision and "latency_frontier" in decision:
        verdicts = {frozenset((c["a_label"], c["b_label"])): c["verdict"] for c in decided}
        points = decision["latency_frontier"]
        return points, latency_frontier.markdown(points, verdicts, decision["chosen_on"])
    points = latency_frontier.to_json(latency_frontier.frontier(rows))
    return points, latency_frontier.markdown(points)
