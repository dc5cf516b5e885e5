"""EvalPlus: humaneval_plus (HumanEval+, 164), mbpp (MBPP+'s 378 problems with their base tests: the report's
MBPP column) and mbpp_plus (base + plus tests), scored as EvalPlus scores them (evaluation/evalplus_runner.py).

Data: evaluation/data/humanevalplus/HumanEvalPlus.jsonl.gz (v0.1.10) and evaluation/data/mbppplus/MbppPlus.jsonl.gz
(v0.2.0), byte-identical to evalplus/humanevalplus_release and evalplus/mbppplus_release (Apache-2.0, LICENSE
beside each), sha256 checked at load. MBPP+ inputs stored as JSON lists are turned back into the tuples, sets
and complex numbers their functions take, per task, as evalplus.data.mbpp does.

Prompt and cut, as EvalPlus generates with a base model: the problem's prompt stripped plus a newline, the
completion cut at EvalPlus's end-of-sequence strings and the dataset's extra ones. EvalPlus then "sanitizes"
the program (keeps the entry point and what it needs, with tree-sitter); that step is not done here: a
completion is scored as cut. `{task_id, solution}` records (EvalPlus's sample format, already sanitized) are
scored exactly as EvalPlus scores them. pass@1 of the + tasks needs both the base and the plus tests.
"""
from __future__ import annotations

import base64
import functools
import gzip
import json
import pickle
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from evaluation.problem import Problem
from evaluation.tasks.base import SOLUTION, Answer, Task, TaskContext
from evaluation.tasks.data_files import verified_bytes

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = {  # dataset: (file, sha256)
    "humaneval": (DATA / "humanevalplus" / "HumanEvalPlus.jsonl.gz",
                  "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101"),
    "mbpp": (DATA / "mbppplus" / "MbppPlus.jsonl.gz",
             "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63"),
}
RUNNER = Path(__file__).resolve().parents[1] / "evalplus_runner.py"
END_OF_SEQUENCE = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(")
STOPS = {"humaneval": END_OF_SEQUENCE + ("\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert "),
         "mbpp": END_OF_SEQUENCE + ('\n"""', "\nassert")}
MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
# A program runs the reference first (Mbpp/599's alone took 143 s at load 29 on 2 cores), then up to two test
# sets of at most 62 s each (EvalPlus's cap, enforced inside): the sandbox's wall clock is only a backstop and
# must not cut it shorter. EvalPlus lets a program use 4 GiB.
PROGRAM_SECONDS = 600.0
PROGRAM_MEMORY_MB = 4096


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _each_arg(convert: Callable) -> Callable:
    return lambda args: [convert(a) for a in args]


def _rows_to_tuples(rows):
    return [tuple(row) for row in rows]


def _sets_or_empty_dict(items):  # Mbpp/115 as evalplus builds it: an empty list becomes {}
    return [set(item) if isinstance(item, list) and item else {} for item in items]


# MBPP+ stores every argument as JSON; these tasks' functions take tuples, sets or complex numbers instead.
MBPP_ARGUMENTS: Dict[int, Callable] = {
    **dict.fromkeys((2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726,
                     740, 744, 809), _each_arg(tuple)),
    **dict.fromkeys((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
                    _each_arg(_rows_to_tuples)),
    **dict.fromkeys((75, 413, 444, 753), lambda args: [_rows_to_tuples(args[0]), args[1]]),
    **dict.fromkeys((106, 750), lambda args: [args[0], tuple(args[1])]),
    115: lambda args: [_sets_or_empty_dict(args[0])],
    124: lambda args: (float(args[0]), complex(args[1])),
    **dict.fromkeys((250, 405, 446, 617, 720, 763, 808), lambda args: [tuple(args[0]), args[1]]),
    **dict.fromkeys((259, 401, 445), _each_arg(lambda rows: tuple(_rows_to_tuples(rows)))),
    278: lambda args: [tuple(tuple(item) if isinstance(item, list) else item for item in args[0])],
    307: lambda args: [tuple(args[0]), args[1], args[2]],
    722: lambda args: [{key: tuple(value) for key, value in args[0].items()}, *args[1:]],
    252: lambda args: [complex(args[0])],
    **dict.fromkeys((580, 615, 791), _tuples),
}


@functools.lru_cache(maxsize=None)
def records(dataset: str) -> Tuple[dict, ...]:
    """The release's problems, after checking the file byte for byte; MBPP+ arguments as its functions take them."""
    path, sha256 = FILES[dataset]
    rows = [json.loads(line) for line in gzip.decompress(verified_bytes(path, sha256)).decode().splitlines()]
    if dataset == "mbpp":
        for row in rows:
            convert = MBPP_ARGUMENTS.get(int(row["task_id"].split("/")[1]))
            if convert:
                row["base_input"] = [convert(args) for args in row["base_input"]]
                row["plus_input"] = [convert(args) for args in row["plus_input"]]
    return tuple(rows)


@functools.lru_cache(maxsize=1)
def runner_source() -> str:
    return RUNNER.read_text()


class EvalPlus(Task):
    minimum_limits = {"timeout_s": PROGRAM_SECONDS, "memory_mb": PROGRAM_MEMORY_MB}

    def __init__(self, name: str, dataset: str, plus: bool, column: str):
        self.name, self.dataset, self.plus, self.column = name, dataset, plus, column

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        return [Problem(r["task_id"], r["prompt"].strip() + "\n", r["prompt"] + r["canonical_solution"],
                        self._test_call(r), stops=STOPS[self.dataset]) for r in records(self.dataset)[:limit or None]]

    def _test_call(self, record: dict) -> str:
        """The driver's main(...) call after SOLUTION, with the inputs pickled (tuples, sets, complex numbers)."""
        sets = {"base": record["base_input"], **({"plus": record["plus_input"]} if self.plus else {})}
        payload = base64.b64encode(pickle.dumps(sets, protocol=4)).decode()
        not_none = self.dataset == "mbpp" and record["entry_point"] in MBPP_NOT_NONE
        return (f"main({self.dataset!r}, SOLUTION, {record['prompt'] + record['canonical_solution']!r}, "
                f"{record['entry_point']!r}, {record['atol']!r}, {payload!r}, not_none={not_none})\n")

    def document(self, problem: Problem) -> str:
        return problem.reference  # the release's prompt + canonical solution

    def oracle(self, problem: Problem) -> Answer:
        return Answer(problem.reference, SOLUTION)  # what EvalPlus runs for its expected outputs

    def program(self, problem: Problem, head: str) -> str:
        return f"{runner_source()}\n\nSOLUTION = {head!r}\n{problem.test}"

    def verdict(self, problem: Problem, completion: str, outcome) -> dict:
        verdict = dict(status=outcome.status, passed=outcome.passed)
        report = [line for line in outcome.output.splitlines() if line.startswith("evalplus ")]
        if report:  # e.g. "evalplus base=pass plus=fail"
            verdict.update((f"{k}_status", v) for k, v in (item.split("=") for item in report[-1].split()[1:]))
        return verdict


TASKS = [EvalPlus("humaneval_plus", "humaneval", True, "HumanEval+"), EvalPlus("mbpp", "mbpp", False, "MBPP"),
         EvalPlus("mbpp_plus", "mbpp", True, "MBPP+")]
