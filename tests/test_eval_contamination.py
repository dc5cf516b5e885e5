"""evaluation.contamination.benchmark_documents(): every benchmark problem a training corpus must not contain,
with its reference solution, and GSM8K's test set (the release file, sha256 checked)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter

from evaluation import contamination
from evaluation.tasks import load_tasks


def test_documents_cover_every_benchmark_and_gsm8k():
    documents = list(contamination.benchmark_documents())
    counts = Counter(benchmark for benchmark, _, _ in documents)
    assert counts["gsm8k"] == 1319 and counts["humaneval"] == counts["humaneval_plus"] == 164
    assert counts["mbpp"] == counts["mbpp_plus"] == 378 and "fim_heldout" not in counts  # user data is no benchmark
    texts = {(b, t): text for b, t, text in documents}
    first = load_tasks(["humaneval"], 1)["humaneval"][0]
    assert texts["humaneval", "HumanEval/0"] == first.prompt + first.reference
    assert "def similar_elements" in texts["mbpp", "Mbpp/2"] and "return tuple(set(" in texts["mbpp", "Mbpp/2"]
    line = contamination.GSM8K.read_text().splitlines()[0]
    record = json.loads(line)
    assert texts["gsm8k", "gsm8k/test/0"] == record["question"] + "\n" + record["answer"]
    assert hashlib.sha256(contamination.GSM8K.read_bytes()).hexdigest() == contamination.GSM8K_SHA256
    assert (contamination.GSM8K.parent / "LICENSE").read_text().startswith("MIT License")
