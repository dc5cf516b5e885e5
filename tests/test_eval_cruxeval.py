"""cruxeval_input_cot / cruxeval_output_cot: CRUXEval's 800 items, its CoT prompts, answer extraction and check.

- The vendored file is the upstream release (sha256 checked at load), ids sample_0 .. sample_799.
- The oracle answer ("[ANSWER] assert f(input) == output") extracts to the call f(input) (input prediction) and
  to the output literal (output prediction) on all 800 items; executed, it passes on every 8th item (100
  programs per direction; bench/eval_oracle.py runs all 800 of both).
- Negative controls: the neighbouring item's answer fails almost always; an input answer that does not call f
  and an output answer that restates f(input) fail without running, as CRUXEval's scorer rules (the second
  would pass if run).
- Extraction edge cases CRUXEval's postprocess defines (first [ANSWER], first "==", "assert f", no tags).
  tests/test_eval_parity.py replays published Qwen2.5-Coder generations against the official verdicts.
"""
from __future__ import annotations

import pytest

from evaluation.harness import score, summarize
from evaluation.sandbox import Sandbox
from evaluation.tasks import cruxeval, get, load_tasks


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox()


def test_items_and_prompts():
    records = cruxeval.records()
    assert [r["id"] for r in records] == [f"sample_{i}" for i in range(800)]
    tasks = load_tasks(["cruxeval_input_cot", "cruxeval_output_cot"])
    inputs, outputs = tasks["cruxeval_input_cot"], tasks["cruxeval_output_cot"]
    assert len(inputs) == len(outputs) == 800
    record = records[3]
    assert inputs[3].prompt.endswith(f"[PYTHON]\n{record['code']}\nassert f(??) == {record['output']}\n"
                                     "[/PYTHON]\n[THOUGHT]\n")
    assert outputs[3].prompt.endswith(f"[PYTHON]\n{record['code']}\nassert f({record['input']}) == ??\n"
                                      "[/PYTHON]\n[THOUGHT]\n")
    assert inputs[3].stops == outputs[3].stops == ("[/ANSWER]",) and inputs[3].max_new_tokens == 2048
    braces = dict(record, code="def f(x):\n    return '{output}' + x")  # a placeholder inside the code stays
    assert "return '{output}' + x\nassert f(??) == " in cruxeval.prompt(braces, "input")


def test_oracle_answers_extract_to_the_reference_on_all_items():
    for record in cruxeval.records():
        answer = cruxeval.reference(record)
        assert cruxeval.extract(answer, "input") == f"f({record['input']})"
        assert cruxeval.extract(answer, "output") == record["output"]


@pytest.mark.parametrize("mode", ["input", "output"])
def test_oracle_passes_and_neighbours_fail(mode, sandbox):
    task = get(f"cruxeval_{mode}_cot")
    subset = task.problems(0, None)[::8]
    oracle = summarize(task, score(task, subset, {p.task_id: task.oracle(p) for p in subset}, sandbox))
    assert (oracle["problems"], oracle["pass@1"]) == (100, 1.0), oracle
    few = subset[:30]
    shifted = {p.task_id: few[(i + 1) % len(few)].reference for i, p in enumerate(few)}
    wrong = summarize(task, score(task, few, shifted, sandbox))
    assert wrong["pass@1"] < 0.2, wrong


def test_answers_cruxeval_rejects_fail_unrun(sandbox):
    record = cruxeval.records()[0]  # f(nums) counts: input [1, 1, 3, 1, 3, 1]
    for mode, text, passed in [("input", "[ANSWER]\nassert f([1, 1, 3, 1, 3, 1]) == x\n", True),
                               ("input", "[ANSWER]\n[1, 1, 3, 1, 3, 1]\n", False),  # no call of f
                               ("output", f"[ANSWER]\nassert f(x) == {record['output']}", True),
                               ("output", "[ANSWER]\nassert f(x) == f([1, 1, 3, 1, 3, 1])", False)]:
        task = get(f"cruxeval_{mode}_cot")
        problem = task.problems(1, None)[0]
        row = score(task, [problem], {problem.task_id: text}, sandbox)[0]
        assert row["passed"] is passed, (mode, text, row)
    assert cruxeval.rejected(record, "[1, 1, 3, 1, 3, 1]", "input")
    assert not cruxeval.rejected(record, "f([1, 1, 3, 1, 3, 1])", "input")


def test_extraction_follows_cruxeval_postprocess(sandbox):
    generation = "Let's think: f(1) == 2?\n[/THOUGHT]\n[ANSWER]\nassert f(1, 'a==b') == 'x'\n"
    assert cruxeval.extract(generation, "input") == "f(1, 'a"  # the FIRST "==" ends the call (as upstream)
    assert cruxeval.extract(generation, "output") == "b')"  # between the first and the second "=="
    assert cruxeval.extract("[ANSWER]\nassert f(2) == 3\n[ANSWER]\nassert f(9) == 9", "input") == "f(2)"
    assert cruxeval.extract("no tags, f(3) == 4", "input") == "no tags, f(3)"
    assert cruxeval.extract("[ANSWER]\n  'abc'  \n", "output") == "'abc'"
    row = score(get("cruxeval_output_cot"), get("cruxeval_output_cot").problems(1, None),
                {"sample_0": "[ANSWER]\nassert f(x) == 1\n[/ANSWER] trailing [ANSWER] 2"}, sandbox)[0]
    assert row["completion"] == "[ANSWER]\nassert f(x) == 1\n" and row["answer"] == "1"  # cut at [/ANSWER]
