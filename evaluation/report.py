"""The summary printed after an evaluation, shaped like the Qwen2.5-Coder report's base-model table: one row per
task (its paper column, its language), one column per metric, then the program statuses; a task's further
metrics (hm_fim's exact match per language, the report's Python / Java / JavaScript columns) on a line below
it. evaluation.run_log logs the same numbers to the run."""
from __future__ import annotations

from typing import List

from evaluation.tasks import get

METRICS = ("pass@1", "exact_match")


def table(summaries: List[dict]) -> str:
    header = f"{'task':<16} {'paper column':<16} {'language':<9} {'problems':>8} " + " ".join(
        f"{m:>11}" for m in METRICS) + "  statuses"
    lines = [header]
    for s in summaries:
        values = " ".join(f"{s[m]:>11.3f}" if m in s else f"{'-':>11}" for m in METRICS)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
        lines.append(f"{s['task']:<16} {get(s['task']).column or '-':<16} {s['language']:<9} {s['problems']:>8} "
                     f"{values}  {statuses}")
        further = [m for m in get(s["task"]).metrics if m not in METRICS and m in s]
        if further:
            lines.append(f"{'':<16} " + ", ".join(f"{m} {s[m]:.3f}" for m in further))
    return "\n".join(lines)
