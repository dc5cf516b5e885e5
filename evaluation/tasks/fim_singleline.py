"""fim_singleline: OpenAI's HumanEval-SingleLineInfilling (1,033 tasks, the FIM and InCoder papers' single-line
set), scored as its own evaluation (human-eval-infilling) scores it.

A task masks one line of a HumanEval canonical solution: `prompt` is everything above it, `canonical_solution`
the line WITH its newline, `suffix` everything from the next line on. The model sees Qwen's PSM prompt
(<|fim_prefix|> prompt <|fim_suffix|> suffix <|fim_middle|>, sentinels as single ids, the texts tokenized apart,
as training builds FIM samples) and decodes greedily until end-of-text or the end of its first line (the newline
kept: the middle owns it), at most 64 new tokens.

Scores: pass@1 of the program human-eval-infilling executes, prompt + completion + suffix + "\\n" + test + "\\n"
+ "check(entry_point)"; and exact match of the stripped completion against the stripped canonical line. A
completion is cut after its first newline, the single-line protocol's stop (Qwen's tokens often join a newline
with the next line's indentation, which would shift the suffix). The official scorer cuts nothing: on completions
of one line, as decoding here produces, the verdicts are the same (bench/eval_parity.py).
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import List, Tuple

from evaluation.problem import Problem
from evaluation.tasks.base import Answer, Task, TaskContext

DATA = Path(__file__).resolve().parents[1] / "data" / "humaneval_infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
SHA256 = "1277073e7ddce163ef68598c2bca777f688a53df99422f097e37362090f88e1f"
COUNT = 1033
MAX_NEW_TOKENS = 64


@functools.lru_cache(maxsize=1)
def records() -> tuple:
    """The 1,033 tasks in file order, after the sha256 check."""
    from evaluation.tasks.data_files import verified_bytes

    text = gzip.decompress(verified_bytes(DATA, SHA256)).decode()
    rows = tuple(json.loads(line) for line in text.splitlines() if line.strip())
    assert len(rows) == COUNT, "HumanEval-SingleLineInfilling passed its sha256 but not its shape"
    return rows


def test_code(record: dict) -> str:
    """What human-eval-infilling appends after prompt + completion + suffix."""
    return "\n" + record["test"] + "\n" + f"check({record['entry_point']})"


def first_line(text: str) -> str:
    """The generation stop: up to and including the first newline."""
    end = text.find("\n")
    return text if end < 0 else text[:end + 1]


class FIMSingleLine(Task):
    name, metrics = "fim_singleline", ("pass@1", "exact_match")

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        return [Problem(r["task_id"], r["prompt"], r["canonical_solution"], test_code(r), suffix=r["suffix"],
                        fim=True, stops=("\n",), max_new_tokens=MAX_NEW_TOKENS)
                for r in records()][:limit or None]

    def head(self, problem: Problem, answer: Answer) -> Tuple[str, str]:
        if answer.whole:
            return super().head(problem, answer)  # refused: an infilling problem takes a middle
        completion = first_line(answer.text)
        return completion, problem.prompt + completion

    def program(self, problem: Problem, head: str) -> str:
        return head + problem.suffix + problem.test

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        return dict(status=outcome.status, passed=outcome.passed,
                    exact_match=completion.strip() == problem.reference.strip())


TASKS = [FIMSingleLine()]
