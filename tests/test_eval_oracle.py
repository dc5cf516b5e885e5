"""The harness checked with the canonical solutions (launch/evaluate.py --oracle), and the task construction.

- humaneval: `launch/evaluate.py --oracle --tasks humaneval` must give pass@1 1.000 on all 164 problems (every
  canonical solution, cut at the stop sequences, executed in the sandbox against the problem's tests).
- Negative control: an empty humaneval completion fails every problem, so a pass cannot come from the harness
  alone. (The infilling and CRUXEval oracles: tests/test_eval_fim.py, tests/test_eval_cruxeval.py.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.harness import score, summarize
from evaluation.sandbox import Sandbox
from evaluation.tasks import load_tasks
from evaluation.tasks.base import TaskContext

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox()


def test_oracle_cli_passes_all_164_humaneval_problems(tmp_path):
    output = tmp_path / "oracle.jsonl"
    completed = subprocess.run([sys.executable, "launch/evaluate.py", "--oracle", "--tasks", "humaneval",
                                "--output", str(output)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])[0]
    assert (summary["problems"], summary["pass@1"], summary["status"]) == (164, 1.0, {"passed": 164})
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(164)]
    assert all(r["passed"] and r["status"] == "passed" for r in rows)


def test_negative_control_fails(sandbox):
    problems = load_tasks(["humaneval"], 20)["humaneval"]
    empty = summarize("humaneval", score("humaneval", problems, {p.task_id: "" for p in problems}, sandbox))
    assert empty["pass@1"] == 0.0, empty


def test_fim_heldout_cuts_validation_documents_as_training_does(tmp_path):
    """Prompt ids are training's PSM sample up to <|fim_middle|>; prefix + middle + (suffix cut at its end to
    pay for the sentinels) is the document's text; the oracle scores 1.000, a shifted oracle 0."""
    from data.tokenizer import load_tokenizer
    from evaluation.tasks.fim_heldout import WINDOW
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tests.run_helpers import prepare_code_dataset

    prefix = prepare_code_dataset(tmp_path, packages=("json",))
    tasks = load_tasks(["fim_heldout"], 0, TaskContext(str(prefix), "20,80,0"))["fim_heldout"]
    documents = IndexedDataset(str(prefix))
    assert len(tasks) >= 3 and all(int(t.task_id.split("/")[1]) >= 1 for t in tasks)  # docs 1..4 of 5
    tokenizer = load_tokenizer("qwen2.5")
    for task in tasks:
        text = tokenizer.decode(documents[int(task.task_id.split("/")[1])][:WINDOW])
        assert (task.prompt + task.reference + task.suffix) in text
        assert tokenizer.decode(task.ids) == f"<|fim_prefix|>{task.prompt}<|fim_suffix|>{task.suffix}<|fim_middle|>"
    sandbox = Sandbox()
    oracle = summarize("fim_heldout", score("fim_heldout", tasks, {t.task_id: t.reference for t in tasks}, sandbox))
    shifted = {t.task_id: tasks[i - 1].reference for i, t in enumerate(tasks)}
    wrong = summarize("fim_heldout", score("fim_heldout", tasks, shifted, sandbox))
    assert (oracle["exact_match"], oracle["pass@1"], wrong["exact_match"]) == (1.0, 1.0, 0.0)


def test_oracle_cli_passes_evalplus_problems(tmp_path):
    """The first three problems of humaneval_plus, mbpp and mbpp_plus through the CLI (the reference run here
    computes its own expected outputs, so this checks the driver end to end; all 920 programs:
    bench/eval_oracle.py)."""
    completed = subprocess.run([sys.executable, "launch/evaluate.py", "--oracle", "--tasks",
                                "humaneval_plus,mbpp,mbpp_plus", "--limit", "3", "--output",
                                str(tmp_path / "rows.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summaries = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [(s["task"], s["problems"], s["pass@1"]) for s in summaries] == [
        ("humaneval_plus", 3, 1.0), ("mbpp", 3, 1.0), ("mbpp_plus", 3, 1.0)]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert {(r["base_status"], r.get("plus_status", "pass")) for r in rows} == {("pass", "pass")}
