"""hm_fim: SantaCoder's single-line infilling set (bigcode/santacoder-fim-task: HumanEval and its MultiPL-E
translations, one line masked; 4,792 rows: Python 1,043, JavaScript 1,969, Java 1,780), scored as the
Qwen2.5-Coder evaluation scores it (qwencoder-eval/base/benchmarks/fim-bench/hm_fim): exact match only, reported
per language.

Protocol (Qwen's humaneval_fim.py with its run_hm_fim.sh defaults, model type codelm_leftright_context):
- prompt: PSM, <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>, the prefix cut to its LAST
  2048 - 64 - 512 = 1,472 tokens and the suffix to its FIRST 512 (each cut in tokens, then decoded back to text);
- greedy, 64 new tokens, no stop sequence (only end-of-text);
- score: the first line of the output (the second when the output starts with "\\n" or " \\n"), stripped, equal
  to the stripped canonical line. Nothing is executed.

Data: not shipped here. The Qwen2.5-Coder repository that holds the file carries no license, and the dataset
card names "openrail" without the license text whose use restrictions an OpenRAIL redistribution must pass on;
so the user supplies the parquet file (docs/evaluation.md says where to get it), and its sha256 is checked.
Task ids: `<language>/<name>` (`py/humaneval-HumanEval_0_has_close_elements.json-L10`): upstream `name` alone
repeats across the three languages.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import List

SHA256 = "54d62b5a4f1554ca3f7ab65f901fe1fecdb3eaebac28ebd52a90397c9239c6d9"
ROWS = 4792
LANGUAGES = {"py": "python", "java": "java", "js": "javascript"}
MAX_SEQ_LENGTH, GEN_LENGTH, RIGHT_CONTEXT = 2048, 64, 512
LEFT_CONTEXT = MAX_SEQ_LENGTH - GEN_LENGTH - RIGHT_CONTEXT  # 1,472 tokens of prefix


def records(path: Path) -> List[dict]:
    """The rows of the santacoder-fim-task parquet file at `path`, after the sha256 check, in file order."""
    import pyarrow.parquet as parquet

    from evaluation.tasks.data_files import verified_bytes

    rows = parquet.read_table(io.BytesIO(verified_bytes(path, SHA256))).to_pylist()
    assert len(rows) == ROWS, "the hm_fim parquet passed its sha256 but not its shape"
    return rows


def truncated_context(tokenizer, prefix: str, suffix: str) -> tuple:
    """(prefix, suffix) as Qwen's prompt builder cuts them: token slices decoded back to text."""
    return tokenizer.decode(tokenizer.encode(prefix)[-LEFT_CONTEXT:]), \
        tokenizer.decode(tokenizer.encode(suffix)[:RIGHT_CONTEXT])


def scored_line(generation: str) -> str:
    """The line Qwen's evaluate_results compares: the first, or the second after a leading (space-)newline."""
    lines = generation.split("\n")
    return (lines[1] if generation.startswith(("\n", " \n")) else lines[0]).strip()


def exact_match(generation: str, canonical: str) -> bool:
    return scored_line(generation) == canonical.strip()
