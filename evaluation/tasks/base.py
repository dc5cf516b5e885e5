"""What an evaluation task is: a named set of problems, the cut of a model's output, the program that tests
it, and the verdict. One module per task under evaluation/tasks/ holds a subclass instance in `TASKS`; the
registry (evaluation.tasks) finds it by its name, so adding a benchmark is adding a file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

from evaluation.problem import Problem, truncate

COMPLETION, SOLUTION, GENERATION = "completion", "solution", "generation"  # the --completions record fields


@dataclass(frozen=True)
class TaskContext:
    """What the command line gives every task's loader (most tasks need nothing)."""
    data: str = ""  # fim_heldout: a data/prepare.py output prefix
    split: str = ""  # fim_heldout: the training run's data.split


@dataclass(frozen=True)
class Answer:
    """One answer to one problem. `completion` continues the prompt (cut at the problem's stops); `solution`
    (EvalPlus's samples) and `generation` (MultiPL-E's: prompt + body) are the whole program text before the
    tests, scored as given."""
    text: str
    kind: str = COMPLETION

    @property
    def whole(self) -> bool:
        return self.kind != COMPLETION


class TaskError(ValueError):
    """A task that cannot load or cannot take an answer: the message names the cause and the fix."""


class Task:
    name: str = ""
    language: str = "python"  # the sandbox language of its programs
    metrics: Tuple[str, ...] = ("pass@1",)  # summary metrics, in the table's order
    column: str = ""  # the column of the Qwen2.5-Coder base-model table it fills; "" = not in that table
    minimum_limits: Dict[str, float] = {}  # sandbox Limits fields this task's programs need at least
    benchmark: bool = True  # published problems (decontamination); False for tasks on the user's own data

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        """The first `limit` problems (all when 0), in the benchmark's order."""
        raise NotImplementedError

    def unavailable(self, oracle: bool) -> str:
        """Why this task cannot be scored in this run ("" when it can; `oracle`: the answers are the references):
        `--tasks paper` skips it with this reason, naming it alone stops the run with it."""
        return ""

    def oracle(self, problem: Problem) -> Answer:
        """The reference answer (launch/evaluate.py --oracle must score 1.0 with it)."""
        return Answer(problem.reference)

    def document(self, problem: Problem) -> str:
        """The problem as text a training corpus must not contain: prompt, reference answer, suffix."""
        return problem.prompt + problem.reference + problem.suffix

    def head(self, problem: Problem, answer: Answer) -> Tuple[str, str]:
        """(what the row records as the answer, the program text before the suffix and tests)."""
        if not answer.whole:
            completion = truncate(answer.text, problem.stops)
            return completion, problem.prompt + completion
        if problem.fim:
            raise TaskError(f"{self.name}: {problem.task_id} is an infilling problem: give the middle as "
                            f"{{\"task_id\", \"{COMPLETION}\"}}, not a whole program ({answer.kind})")
        return answer.text, answer.text

    def program(self, problem: Problem, head: str) -> str:
        """The source the sandbox runs; it exits 0 when every test passes."""
        return head + problem.suffix + "\n\n" + problem.test

    def summary_metrics(self, rows: List[dict]) -> Dict[str, float]:
        """The summary's metrics; by default each is the mean over all rows of its row field (pass@1: passed)."""
        count = max(len(rows), 1)
        return {metric: sum(r["passed" if metric == "pass@1" else metric] for r in rows) / count
                for metric in self.metrics}

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        """Row fields for one answer from the sandbox outcome (None for problems without tests)."""
        return dict(status=outcome.status, passed=outcome.passed)
