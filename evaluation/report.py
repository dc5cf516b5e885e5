"""The summary table printed after an evaluation."""
from __future__ import annotations

from typing import List


def table(summaries: List[dict]) -> str:
    lines = [f"{'task':<15} {'problems':>8} {'pass@1':>7} {'exact':>7}  statuses"]
    for s in summaries:
        exact = f"{s['exact_match']:.3f}" if "exact_match" in s else "-"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
        lines.append(f"{s['task']:<15} {s['problems']:>8} {s['pass@1']:>7.3f} {exact:>7}  {statuses}")
    return "\n".join(lines)
