"""Decontamination: drop a training document that shares a 10-gram of whitespace words with an evaluation problem.

The Qwen2.5-Coder report removes training documents with a 10-gram overlap with HumanEval, MBPP, GSM8K and MATH.
Here the benchmark texts are every problem (prompt + reference solution) of the evaluation package's tasks plus
GSM8K's test questions and answers, all from the evaluation package (evaluation.contamination.benchmark_documents); words are `str.split()`
pieces, compared exactly (case and punctuation kept).

Speed: one pass per document. Each word is hashed once (Python's str hash), each 10-gram hash is a rolling
combination of its 10 word hashes in numpy (uint64, wrapping), and the document's n-gram hashes are looked up in
the sorted array of benchmark n-gram hashes with one `searchsorted`. A 64-bit hash keeps a chance match to about
1e-13 per document at a million benchmark n-grams. Python salts str hashes per process: each process builds the
index it checks against (default_index), so hashes are never compared across processes or machines.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

NGRAM = 10  # words, as the report counts
_ROLL = np.uint64(0x100000001B3)  # odd multiplier (FNV-1a's 64-bit prime) of the rolling n-gram hash


@dataclass(frozen=True)
class Contamination:
    """Where a document's first shared n-gram comes from."""

    benchmark: str
    task_id: str
    ngram: str

    def detail(self) -> str:
        return f"shares the {NGRAM}-gram {self.ngram[:80]!r} with {self.benchmark} {self.task_id}"


def ngram_hashes(words, n: int = NGRAM) -> np.ndarray:
    """uint64 hash of every run of n consecutive words (empty when there are fewer than n)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashed = np.array(list(map(hash, words)), dtype=np.int64).view(np.uint64)
    rolled = np.zeros(count, dtype=np.uint64)
    for offset in range(n):
        rolled = rolled * _ROLL + hashed[offset:offset + count]
    return rolled


class BenchmarkIndex:
    """The n-grams of every benchmark text: `find(text)` says whether and where a document overlaps one."""

    def __init__(self, texts: Iterable[Tuple[str, str, str]], n: int = NGRAM) -> None:
        self.n = n
        self.owner: Dict[int, Tuple[str, str]] = {}  # n-gram hash -> first (benchmark, task id) holding it
        self.tasks: Dict[str, int] = {}  # benchmark -> problems indexed
        for benchmark, task_id, text in texts:
            self.tasks[benchmark] = self.tasks.get(benchmark, 0) + 1
            for value in ngram_hashes(text.split(), n).tolist():
                self.owner.setdefault(value, (benchmark, task_id))
        self.sorted = np.array(sorted(self.owner), dtype=np.uint64)

    def find(self, text: str) -> Optional[Contamination]:
        if not len(self.sorted):
            return None
        words = text.split()
        hashes = ngram_hashes(words, self.n)
        if not len(hashes):
            return None
        position = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
        hits = np.flatnonzero(self.sorted[position] == hashes)
        if not len(hits):
            return None
        first = int(hits[0])
        benchmark, task_id = self.owner[int(hashes[first])]
        return Contamination(benchmark, task_id, " ".join(words[first:first + self.n]))


@functools.lru_cache(maxsize=1)
def default_index() -> BenchmarkIndex:
    """Built once per process, at its first document (~0.3 s: the evaluation problems are read then)."""
    from evaluation.contamination import benchmark_documents

    return BenchmarkIndex(benchmark_documents())
