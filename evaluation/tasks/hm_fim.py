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
so it is read from the path in $HM_FIM_DATA, or from the Hugging Face hub (downloaded once, then cached) only
when the user opts in with HM_FIM_DATA=hub: nothing is fetched from a hub unasked. Unset, `--tasks paper` skips
the task with that reason and `--tasks hm_fim` stops with it; docs/evaluation.md says how to get the file. Its
sha256 is checked either way.
Task ids: `<language>/<name>` (`py/humaneval-HumanEval_0_has_close_elements.json-L10`): upstream `name` alone
repeats across the three languages.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Dict, List

from evaluation.problem import Problem
from evaluation.tasks.base import Task, TaskContext, TaskError

ENV = "HM_FIM_DATA"
HUB_REPO, HUB_FILE = "bigcode/santacoder-fim-task", "data/train-00000-of-00001-b6ec1fdd66018baa.parquet"
SHA256 = "54d62b5a4f1554ca3f7ab65f901fe1fecdb3eaebac28ebd52a90397c9239c6d9"
ROWS = 4792
LANGUAGES = {"py": "python", "java": "java", "js": "javascript"}
MAX_SEQ_LENGTH, GEN_LENGTH, RIGHT_CONTEXT = 2048, 64, 512
LEFT_CONTEXT = MAX_SEQ_LENGTH - GEN_LENGTH - RIGHT_CONTEXT  # 1,472 tokens of prefix


def records(path: Path) -> List[dict]:
    """The rows of the santacoder-fim-task parquet file at `path`, after the sha256 check, in file order."""
    import pyarrow.parquet as parquet

    from evaluation.tasks.data_files import verified_bytes

    fix = f"give the file of {HUB_REPO} ({HUB_FILE}) in ${ENV}"
    rows = parquet.read_table(io.BytesIO(verified_bytes(path, SHA256, fix))).to_pylist()
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


HUB = "hub"  # the value of $HM_FIM_DATA that lets the task download the file
UNSET = (f"${ENV} is unset: SantaCoder's FIM set is not shipped; set {ENV}=/path/to/{Path(HUB_FILE).name} "
         f"(`hf download {HUB_REPO} --repo-type dataset`) or {ENV}={HUB} to let it download, see docs/evaluation.md")


def data_path() -> Path:
    """The parquet file: $HM_FIM_DATA, or the Hugging Face hub's copy when it says `hub` (downloaded, cached)."""
    given = os.environ.get(ENV)
    if not given:
        raise TaskError(f"hm_fim: {UNSET}")
    if given != HUB:
        return Path(given)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset"))
    except Exception as error:  # offline, no cache, hub refused: one reason, one fix
        raise TaskError(f"hm_fim: {ENV}={HUB} but the hub could not give {HUB_REPO}'s {HUB_FILE} "
                        f"({type(error).__name__}): download it where there is network and set {ENV} to its "
                        f"path") from None


class HumanEvalFIMSantaCoder(Task):
    name, column = "hm_fim", "HumanEval-FIM"
    # Not listed for decontamination: its file is not shipped (loading it would need $HM_FIM_DATA), and its rows
    # are lines of HumanEval and of MultiPL-E's Java/JavaScript translations, which humaneval and multiple_* give.
    benchmark = False
    metrics = ("exact_match", *(f"exact_match/{language}" for language in LANGUAGES.values()))

    def unavailable(self, oracle: bool) -> str:
        return "" if os.environ.get(ENV) else UNSET

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        from data.tokenizer import load_tokenizer

        tokenizer, problems = load_tokenizer("qwen2.5"), []
        for row in records(data_path())[:limit or None]:
            prefix, suffix = truncated_context(tokenizer, row["prompt"], row["suffix"])
            problems.append(Problem(f"{row['language']}/{row['name']}", prefix, row["canonical_solution"], "",
                                    suffix=suffix, fim=True, max_new_tokens=GEN_LENGTH))
        return problems

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        exact = exact_match(completion, problem.reference)
        return dict(status="passed" if exact else "mismatch", passed=exact, exact_match=exact,
                    language=LANGUAGES[problem.task_id.split("/", 1)[0]])

    def summary_metrics(self, rows: List[dict]) -> Dict[str, float]:
        """Exact match over all rows and per language (the report's Python / Java / JavaScript columns)."""
        metrics = {"exact_match": sum(r["exact_match"] for r in rows) / max(len(rows), 1)}
        for language in LANGUAGES.values():
            chosen = [r["exact_match"] for r in rows if r["language"] == language]
            if chosen:
                metrics[f"exact_match/{language}"] = sum(chosen) / len(chosen)
        return metrics


TASKS = [HumanEvalFIMSantaCoder()]
