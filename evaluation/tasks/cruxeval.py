"""cruxeval_input_cot and cruxeval_output_cot: CRUXEval (800 short Python functions `f`, each with one input and
its output), scored as CRUXEval's evaluation scores them and with the chain-of-thought prompts the Qwen2.5-Coder
report used (its qwencoder-eval ships CRUXEval's own prompts and scorer unchanged).

Prompt: CRUXEval's CoT prompt, one worked example, then `[PYTHON] code; assert f(??) == output [/PYTHON]
[THOUGHT]` (input prediction) or `assert f(input) == ?? ` (output prediction). Greedy, at most 2,048 new tokens
(CRUXEval's max_length_generation, which vLLM counts as new tokens), stopped at `[/ANSWER]` (excluded).

Answer extraction (CRUXEval's postprocess for CoT): the text after the first `[ANSWER]`, stripped; input
prediction keeps what precedes the first `==` and, when it holds `assert f`, `f` + what follows it (so the
answer is a call `f(...)`); output prediction keeps what lies between the first and the second `==`. A
completion without `[ANSWER]` is used as it is (so already-extracted answers score the same).

Check (CRUXEval's evaluate_score): `code` + `\\nassert {output} == {answer}` executed; passed when it raises
nothing. CRUXEval allows 3 s per program, the sandbox its --timeout (10 s by default): only a program that runs
between 3 and 10 s could be judged differently (on the 3,200 published generations in bench/eval_parity.py
the verdicts agree).
An input answer without `f(` and an output answer that contains the call `f(input)` itself are failed without
running (they would restate the question).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

from evaluation.problem import Problem, truncate
from evaluation.tasks.base import Answer, Task, TaskContext, TaskError

DATA = Path(__file__).resolve().parents[1] / "data" / "cruxeval" / "cruxeval.jsonl"
SHA256 = "8368b81047dc5014e4caf5a2f97604eff7644e0ecd7415e3ceeb184bbc2e0c96"
ITEMS = 800
STOP = "[/ANSWER]"
PLACEHOLDER = re.compile(r"\{(code|input|output)\}")
MAX_NEW_TOKENS = 2048
REJECTED = "answer rejected unrun: an input answer must call f, an output answer must not call f(input)"

# CRUXEval's prompts.py (make_cot_input_prompt / make_cot_output_prompt), verbatim: a benchmark's prompt is part
# of its definition. tests/test_eval_cruxeval.py checks them against prompts recorded in published generations.
INPUT_COT = """You will be given a function f and an output in the form f(??) == output. Your task is to find any \
input such that executing f on the input leads to the given output. There may be multiple answers, but only output \
one. First, think step by step. You MUST surround the answer with [ANSWER] and [/ANSWER] tags. Express your answer \
as a passing assertion containing the input and the given output.

[PYTHON]
def f(x):
    return x + 1
assert f(??) == 17
[/PYTHON]
[THOUGHT]
To find an input such that executing f on the input leads to the given output, we can work backwards from the \
given assertion. We know that f(??) == 17. \n\nSince the function f(x) returns x + 1, for f(??) to be equal to 17, \
the value of ?? should be 16. \n[/THOUGHT]
[ANSWER]
assert f(16) == 17
[/ANSWER]

[PYTHON]
{code}
assert f(??) == {output}
[/PYTHON]
[THOUGHT]
"""
OUTPUT_COT = """You are given a Python function and an assertion containing an input to the function. Complete the \
assertion with a literal (no unsimplified expressions, no function calls) containing the output when executing the \
provided code on the given input, even if the function is incorrect or incomplete. Do NOT output any extra \
information. Execute the program step by step before arriving at an answer, and provide the full assertion with \
the correct output in [ANSWER] and [/ANSWER] tags, following the examples.

[PYTHON]
def f(s):
    s = s + s
    return "b" + s + "a"
assert f("hi") == ??
[/PYTHON]
[THOUGHT]
Let's execute the code step by step:

1. The function f is defined, which takes a single argument s.
2. The function is called with the argument "hi", so within the function, s is initially "hi".
3. Inside the function, s is concatenated with itself, so s becomes "hihi".
4. The function then returns a new string that starts with "b", followed by the value of s (which is now \
"hihi"), and ends with "a".
5. The return value of the function is therefore "bhihia".
[/THOUGHT]
[ANSWER]
assert f("hi") == "bhihia"
[/ANSWER]

[PYTHON]
{code}
assert f({input}) == ??
[/PYTHON]
[THOUGHT]
"""


@functools.lru_cache(maxsize=1)
def records() -> tuple:
    """The 800 items, in file order, after the sha256 check."""
    from evaluation.tasks.data_files import verified_bytes

    rows = tuple(json.loads(line) for line in verified_bytes(DATA, SHA256).decode().splitlines() if line.strip())
    assert len(rows) == ITEMS and rows[0]["id"] == "sample_0", "cruxeval.jsonl passed its sha256 but not its shape"
    return rows


@functools.lru_cache(maxsize=1)
def by_id() -> Dict[str, dict]:
    return {r["id"]: r for r in records()}


def prompt(record: dict, mode: str) -> str:
    """One pass over the template, so a `{output}` inside the code stays as written."""
    return PLACEHOLDER.sub(lambda match: record[match.group(1)], INPUT_COT if mode == "input" else OUTPUT_COT)


def reference(record: dict) -> str:
    """The answer as a model should write it: the oracle's completion for both modes."""
    return f"[ANSWER]\nassert f({record['input']}) == {record['output']}\n"


def extract(generation: str, mode: str) -> str:
    """The answer in a CoT generation (text after the prompt, already cut at [/ANSWER])."""
    if "[ANSWER]" in generation:
        generation = generation.split("[ANSWER]")[1].strip()
    if mode == "input":
        if "==" in generation:
            generation = generation.split("==")[0].strip()
        if "assert f" in generation:
            generation = "f" + generation.split("assert f")[1].strip()
    elif "==" in generation:
        generation = generation.split("==")[1].strip()
    return generation.strip()


def rejected(record: dict, answer: str, mode: str) -> bool:
    """CRUXEval fails these without running them: an input answer that does not call f, an output answer that
    contains the call f(input) itself."""
    return "f(" not in answer if mode == "input" else f"f({record['input']})" in answer


class CRUXEvalCoT(Task):
    """One direction of CRUXEval; the row's `answer` is what the extraction found."""
    metrics = ("pass@1",)

    def __init__(self, mode: str, column: str):
        self.mode, self.name, self.column = mode, f"cruxeval_{mode}_cot", column

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        return [Problem(r["id"], prompt(r, self.mode), reference(r), f"{r['code']}\nassert {r['output']} == ",
                        stops=(STOP,), max_new_tokens=MAX_NEW_TOKENS)
                for r in records()][:limit or None]

    def head(self, problem: Problem, answer: Answer) -> Tuple[str, str]:
        if answer.whole:
            raise TaskError(f"{self.name}: give the model's text after the prompt as {{\"task_id\", "
                            f"\"completion\"}} ({problem.task_id} came as {answer.kind!r})")
        completion = truncate(answer.text, problem.stops)
        return completion, extract(completion, self.mode)

    def program(self, problem: Problem, head: str) -> str:
        """`code` + `assert output == ` + the answer (what CRUXEval executes), or a program that fails."""
        if rejected(by_id()[problem.task_id], head, self.mode):
            return f"raise SystemExit({REJECTED!r})"
        return problem.test + head

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        return dict(status=outcome.status, passed=outcome.passed, answer=extract(completion, self.mode))


TASKS = [CRUXEvalCoT("input", "CRUXEval-I-CoT"), CRUXEvalCoT("output", "CRUXEval-O-CoT")]
