"""humaneval_fim: single-line infilling built here from HumanEval's canonical solutions.

For each problem, each non-blank line of the canonical solution is masked in turn; the prefix is the prompt
plus the lines above it, the suffix the newline ending it plus the lines below. 164 problems give 1,033
infilling tasks, ids "HumanEval/N/L<line>" (0-based line in the solution). The model sees
<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> (PSM, Qwen's tokens; the sentinels as single ids,
the texts tokenized separately, as training builds FIM samples) and its output up to the first newline is the
line. Scores: exact match of the stripped line, and pass@1 of prefix + line + suffix + tests. These cuts are
not OpenAI's released HumanEval-SingleLineInfilling: the numbers are for comparing checkpoints of this recipe.
"""
from __future__ import annotations

from typing import List

from evaluation.problem import Problem
from evaluation.tasks.base import Task, TaskContext
from evaluation.tasks.humaneval import check_code, humaneval_records

FIM_STOPS = ("\n",)
LINE_TOKENS = 64


class HumanEvalFIM(Task):
    name, metrics = "humaneval_fim", ("pass@1", "exact_match")

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        problems = []
        for record in humaneval_records():
            lines = record["canonical_solution"].splitlines(keepends=True)
            for index, line in enumerate(lines):
                if not line.strip():
                    continue
                masked = line.rstrip("\n")
                problems.append(Problem(
                    f"{record['task_id']}/L{index}", record["prompt"] + "".join(lines[:index]), masked,
                    check_code(record), suffix=line[len(masked):] + "".join(lines[index + 1:]), fim=True,
                    stops=FIM_STOPS, max_new_tokens=LINE_TOKENS))
        return problems[:limit or None]

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        return dict(status=outcome.status, passed=outcome.passed,
                    exact_match=completion.strip() == problem.reference.strip())


TASKS = [HumanEvalFIM()]
