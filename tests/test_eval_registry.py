"""The evaluation task registry and the command line built on it: task names and the `paper` group come from
the task modules; the help lists them; every answer format scores; bad arguments end in one `error:` line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.tasks import PAPER, expand, get, load_tasks, names, paper
from evaluation.tasks.base import TaskError
from tests.run_helpers import environment

REPO = Path(__file__).resolve().parents[1]
OURS = {"humaneval", "fim_singleline", "fim_heldout", "humaneval_plus", "mbpp", "mbpp_plus"}


def evaluate(*arguments, timeout=300):
    return subprocess.run([sys.executable, "launch/evaluate.py", *arguments], cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=timeout)


def test_registry_names_the_tasks_and_the_paper_group():
    assert OURS <= set(names())
    assert {"humaneval", "humaneval_plus", "mbpp", "mbpp_plus"} <= set(paper())
    assert "fim_heldout" not in paper() and "fim_singleline" not in paper()  # not columns of the paper's table
    assert all(get(name).column for name in paper())
    chosen = expand(f"humaneval,{PAPER},mbpp")
    assert chosen[0] == "humaneval" and len(chosen) == len(set(chosen)) == len(paper())
    with pytest.raises(TaskError, match=r"unknown task 'humaneval\+'"):
        expand("humaneval+")
    assert [p.task_id for p in load_tasks(["mbpp"], 2)["mbpp"]] == ["Mbpp/2", "Mbpp/3"]


def test_help_lists_every_registered_task():
    completed = evaluate("--help")
    assert completed.returncode == 0, completed.stderr
    for name in names():
        assert f"\n  {name} " in completed.stdout, name
    assert "HumanEval+" in completed.stdout and PAPER in completed.stdout


def write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_completion_solution_and_generation_records(tmp_path):
    """humaneval's first three problems: the canonical body as a completion, the whole canonical program as an
    EvalPlus solution, a MultiPL-E style generation (prompt + a wrong body): pass, pass, fail; a record scoped to
    humaneval_plus by "task" does not reach humaneval."""
    problems = {p.task_id: p for p in load_tasks(["humaneval"], 3)["humaneval"]}
    first, second, third = problems.values()
    samples = write(tmp_path / "samples.jsonl", [
        {"task_id": first.task_id, "completion": first.reference},
        {"task_id": second.task_id, "solution": second.prompt + second.reference},
        {"task_id": third.task_id, "generation": third.prompt + "    return None\n"},
        {"task_id": first.task_id, "task": "humaneval_plus", "solution": "def broken(:\n"},
    ])
    output = tmp_path / "out" / "rows.jsonl"
    completed = evaluate("--completions", str(samples), "--tasks", "humaneval", "--limit", "3",
                         "--output", str(output))
    assert completed.returncode == 0, completed.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["task_id"], r["passed"]) for r in rows] == [(first.task_id, True), (second.task_id, True),
                                                           (third.task_id, False)]
    assert "completion" in rows[0] and rows[1]["solution"] == second.prompt + second.reference
    table = completed.stdout.splitlines()
    assert table[0].split()[:4] == ["task", "paper", "column", "language"]
    assert table[1].split()[:4] == ["humaneval", "HumanEval", "python", "3"]


@pytest.mark.parametrize("arguments, message", [
    (["--limit", "0"], "--limit: '0' is not a number N >= 1"),
    (["--limit", "-2"], "--limit: '-2' is not a number N >= 1"),
    (["--limit", "ten"], "--limit: 'ten' is not a number N >= 1"),
    (["--tasks", "fim_heldout", "--data", "/missing"], "fim_heldout: no prepared data at /missing"),
    (["--tasks", "fim_heldout"], "fim_heldout needs --data PREFIX"),
    (["--tasks", "humaneval,nope"], "unknown task 'nope'"),
])
def test_bad_arguments_give_one_error_line(arguments, message):
    completed = evaluate("--oracle", *arguments)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and completed.stderr.count("\n") == 1, completed.stderr
    assert message in completed.stderr and "Traceback" not in completed.stderr


def test_unknown_completion_ids_are_an_error_that_lists_them(tmp_path):
    samples = write(tmp_path / "samples.jsonl", [{"task_id": "HumanEval/0", "completion": "    return 1\n"}]
                    + [{"task_id": f"HumanEvl/{i}", "completion": ""} for i in range(7)])
    completed = evaluate("--completions", str(samples), "--tasks", "humaneval")
    assert completed.returncode == 2 and completed.stderr.count("\n") == 1, completed.stderr
    assert "7 completion(s) for task ids that --tasks humaneval does not have" in completed.stderr
    assert "HumanEvl/0, HumanEvl/1" in completed.stderr and " ..." in completed.stderr
    good = write(tmp_path / "good.jsonl", [{"task_id": "HumanEval/0", "completion": "    return 1\n"}])
    assert evaluate("--completions", str(good), "--tasks", "humaneval", "--limit", "1").returncode == 0  # control


def test_output_directly_in_tmp_works():
    """An --output file in /tmp itself: /tmp was hidden from programs, which broke their private /tmp and made
    the sandbox probe fail with "the kernel refused to set up the sandbox"."""
    output = Path("/tmp") / f"evaluate-test-{os.getpid()}.jsonl"
    try:
        completed = evaluate("--oracle", "--tasks", "humaneval", "--limit", "1", "--output", str(output))
        assert completed.returncode == 0, completed.stderr
        assert json.loads(output.read_text())["passed"] is True
    finally:
        output.unlink(missing_ok=True)
