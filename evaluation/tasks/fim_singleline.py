"""fim_singleline: OpenAI's HumanEval-SingleLineInfilling (1,033 tasks, the FIM and InCoder papers' single-line
set), scored as its own evaluation (human-eval-infilling) scores it.

A task masks one line of a HumanEval canonical solution: `prompt` is everything above it, `canonical_solution`
the line WITH its newline, `suffix` everything from the next line on. The model sees Qwen's PSM prompt
(<|fim_prefix|> prompt <|fim_suffix|> suffix <|fim_middle|>, sentinels as single ids, the texts tokenized apart,
as training builds FIM samples) and decodes greedily until end-of-text or the end of its first line (the newline
kept: the middle owns it), at most 64 new tokens.

Scores: pass@1 of the program human-eval-infilling executes, prompt + completion + suffix + "\\n" + test + "\\n"
+ "check(entry_point)", the completion used as given (the official scorer cuts nothing); and exact match of the
stripped completion against the stripped canonical line.
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "humaneval_infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
SHA256 = "055ca9e3fa33562173156e02e2350ceff4089deab480b368a849b6bc04f09719"
TASKS = 1033
MAX_NEW_TOKENS = 64


@functools.lru_cache(maxsize=1)
def records() -> tuple:
    """The 1,033 tasks in file order, after the sha256 check."""
    from evaluation.tasks.data_files import verified_bytes

    text = gzip.decompress(verified_bytes(DATA, SHA256)).decode()
    rows = tuple(json.loads(line) for line in text.splitlines() if line.strip())
    assert len(rows) == TASKS, "HumanEval-SingleLineInfilling passed its sha256 but not its shape"
    return rows


def test_code(record: dict) -> str:
    """What human-eval-infilling appends after prompt + completion + suffix."""
    return "\n" + record["test"] + "\n" + f"check({record['entry_point']})"


def first_line(text: str) -> str:
    """The generation stop: up to and including the first newline."""
    end = text.find("\n")
    return text if end < 0 else text[:end + 1]
