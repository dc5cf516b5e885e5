"""Every benchmark text a training corpus must not contain, for decontamination: the problems of every registered
evaluation task (its prompt with the reference solution) and the GSM8K test set (question with worked answer).

GSM8K: evaluation/data/gsm8k/test.jsonl, byte-identical to openai/grade-school-math
(grade_school_math/data/test.jsonl, 1,319 problems, MIT, LICENSE beside it), sha256 checked when read. Tasks
built from the user's own data (fim_heldout) are not benchmarks and are left out.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Tuple

from evaluation.tasks import get, load_tasks, names
from evaluation.tasks.data_files import verified_bytes

GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k" / "test.jsonl"
GSM8K_SHA256 = "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"


def gsm8k() -> Iterator[Tuple[str, str, str]]:
    lines = verified_bytes(GSM8K, GSM8K_SHA256).decode().splitlines()
    for number, line in enumerate(lines):
        record = json.loads(line)
        yield "gsm8k", f"gsm8k/test/{number}", record["question"] + "\n" + record["answer"]


def benchmark_documents() -> Iterator[Tuple[str, str, str]]:
    """(benchmark, task_id, text) for every problem of every benchmark task, then GSM8K's test set."""
    for name in names():
        task = get(name)
        if task.benchmark:
            for problem in load_tasks([name])[name]:
                yield name, problem.task_id, task.document(problem)
    yield from gsm8k()
