"""The evaluation task registry and the command line built on it: task names and the `paper` group come from
the task modules; the help lists them; every answer format scores; bad arguments end in one `error:` line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.command import oracle_failures
from evaluation.tasks import PAPER, expand, get, load_tasks, names, paper, select
from evaluation.tasks.base import TaskError
from tests.run_helpers import environment

REPO = Path(__file__).resolve().parents[1]
OURS = {"humaneval", "fim_singleline", "fim_heldout", "humaneval_plus", "mbpp", "mbpp_plus"}


def evaluate(*arguments, timeout=300):
    """The command as a user types it, on a machine without hm_fim's file (the default: it is not shipped)."""
    env = {k: v for k, v in environment().items() if k != "HM_FIM_DATA"}
    return subprocess.run([sys.executable, "launch/evaluate.py", *arguments], cwd=REPO, env=env,
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
    (["--tasks", "multiple_cpp"], "multiple_cpp: MultiPL-E publishes no reference solutions"),
    (["--tasks", "paper,hm_fim"], "hm_fim: $HM_FIM_DATA is unset"),  # named on its own: an error, not a skip
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


def test_oracle_of_paper_skips_what_has_no_references_or_no_data_in_one_notice():
    """`--oracle --tasks paper` as typed on a machine without hm_fim's file: MultiPL-E (no references) and hm_fim
    (no data) are named in one notice line, every other paper task scores 1.0, exit 0 (it stopped with an error
    before). --limit 2 keeps it short; the full command's figures are in docs/evaluation.md."""
    completed = evaluate("--oracle", "--tasks", PAPER, "--limit", "2", timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    notices = [line for line in completed.stdout.splitlines() if line.startswith("note:")]
    skipped = {"hm_fim"} | {name for name in paper() if name.startswith("multiple_")}
    assert len(notices) == 1 and all(name in notices[0] for name in skipped), notices
    assert "HM_FIM_DATA" in notices[0] and "no reference solutions" in notices[0]
    summaries = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {s["task"] for s in summaries} == set(paper()) - skipped and len(summaries) >= 6
    assert all(s["pass@1"] == 1.0 and s["problems"] == 2 for s in summaries), summaries


def test_paper_skips_a_task_only_where_it_cannot_be_scored(monkeypatch, tmp_path):
    monkeypatch.delenv("HM_FIM_DATA", raising=False)
    multiple = {name for name in paper() if name.startswith("multiple_")}
    chosen, skipped = select(PAPER)  # a model's run: MultiPL-E runs, hm_fim has no file
    assert set(skipped) == {"hm_fim"} and multiple <= set(chosen)
    chosen, skipped = select(PAPER, oracle=True)
    assert set(skipped) == multiple | {"hm_fim"} and "humaneval" in chosen
    monkeypatch.setenv("HM_FIM_DATA", str(tmp_path / "santacoder.parquet"))  # control: given, it is not skipped
    assert "hm_fim" in select(PAPER)[0]
    with pytest.raises(TaskError, match="no reference solutions"):
        select(f"{PAPER},multiple_js", oracle=True)


def test_oracle_below_one_exits_1_naming_the_metric(capsys):
    perfect = {"task": "fim_singleline", "pass@1": 1.0, "exact_match": 1.0}
    assert oracle_failures([perfect]) == 0 and capsys.readouterr().err == ""
    short = dict(perfect, task="humaneval", **{"pass@1": 163 / 164})
    assert oracle_failures([perfect, short]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "humaneval pass@1 0.9939" in error
