"""One evaluation problem and the stop-sequence cut, shared by the tasks, decoding and scoring (a module of its
own so that none of them imports another for it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple


@dataclass(frozen=True)
class Problem:
    task_id: str  # the benchmark's own id ("HumanEval/0", "Mbpp/2", ...)
    prompt: str  # what the model continues, or the prefix of an infilling problem
    reference: str  # the canonical answer: a completion of the prompt, or the masked middle
    test: str  # test code run after the program; "" when the verdict is exact match alone
    suffix: str = ""  # infilling only: the text after the middle
    fim: bool = False  # infilling: the model sees prefix and suffix (PSM) and writes the middle
    stops: Tuple[str, ...] = ()  # the completion ends at the earliest of these
    max_new_tokens: int = 512
    ids: Tuple[int, ...] = ()  # the exact prompt ids, when they come from prepared data (fim_heldout)
    language: str = "python"  # what the sandbox runs the program as


def truncate(text: str, stops: Iterable[str]) -> str:
    """`text` up to the earliest stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
