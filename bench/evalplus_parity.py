"""EvalPlus parity: the official evalplus scorer and ours (humaneval_plus, mbpp_plus; mbpp is the base half) on
the same whole-program samples, per-sample verdicts compared.

Samples per problem (EvalPlus's {task_id, solution} format): the canonical program, two mutants made by the
first applicable textual operators below (rotated per problem, so most fail somewhere: off-by-one bounds,
flipped comparisons, dropped negations), and on every 9th problem a result nudged by a relative 3e-7 (floats
only: the atol/rtol rule decides) and on every 23rd a program that never returns (per-test time limits).

    python bench/evalplus_parity.py --evalplus-python /tmp/evalplus-venv/bin/python [--limit N] [--workers N]
    python bench/evalplus_parity.py --evalplus-python ... --published QWEN_OUTPUTS/qwen2.5-coder/7b-base/evalplus

--published takes real model outputs instead of the mutants: the programs Qwen published for its own base model
(qwencoder-eval/base/outptus in QwenLM/Qwen2.5-Coder: `<humaneval|mbpp>/generated_eval_results.json`, each
problem's `solution` as their evalplus run scored it, with its base/plus status), one per problem of our data;
both tools score them here on our data files, and each row also keeps the status they published (their run used
older data releases: HumanEval+ and MBPP+ files with other hashes, MBPP+ with 399 problems, so a plus verdict
may differ for that reason alone). That repository carries no licence: the rows keep each program's sha256,
not its text. Written to bench/evalplus_published_parity.json.

The checked-in bench/evalplus_parity.json is `--limit 50` (the first 50 problems of each benchmark, every sample
of theirs; evalplus scored the other problems' canonical programs too, not compared): at 2 workers on 2 cores
shared with other jobs evalplus took 9 min for HumanEval+ alone.

The evalplus interpreter is a separate virtual environment with the official package (evalplus master
26d6d00: `pip install evalplus==0.3.1` and its dependencies, then its sources from that commit); it reads our
data files through HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH. Writes bench/evalplus_parity.json: per
sample the mutant name and both tools' base/plus status, and the agreement counts.
"""
import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from evaluation.harness import score
from evaluation.sandbox import Sandbox
from evaluation.tasks import get, load_tasks
from evaluation.tasks.base import SOLUTION, Answer
from evaluation.tasks.evalplus import FILES, records

OUT = Path(__file__).with_name("evalplus_parity.json")
PUBLISHED_OUT = Path(__file__).with_name("evalplus_published_parity.json")
PUBLISHED_SAMPLE = "published"
OPERATORS = (("<=", "<"), (">=", ">"), ("<", "<="), (">", ">="), ("==", "!="), ("!=", "=="), ("+ 1", "+ 2"),
             ("- 1", "- 2"), (" + ", " - "), (" - ", " + "), ("True", "False"), ("False", "True"),
             (" and ", " or "), (" or ", " and "), ("not ", ""), ("[0]", "[1]"), ("[-1]", "[0]"), ("0", "1"),
             ("1", "2"), ("return ", "return 1 + "))
WRAP = ("\n\n_evalplus_parity_inner = {entry}\n\ndef {entry}(*args):\n{body}\n")
NUDGE = "    result = _evalplus_parity_inner(*args)\n    return result * (1 + 3e-7) if type(result) is float else result"
HANG = "    while True:\n        pass"
TASKS = {"humaneval_plus": "humaneval", "mbpp_plus": "mbpp"}


def operator_mutants(number: int, canonical: str, count: int = 2) -> dict:
    """Up to `count` mutants of the canonical solution, each the first occurrence of one operator replaced."""
    mutants, rotated = {}, OPERATORS[number % len(OPERATORS):] + OPERATORS[:number % len(OPERATORS)]
    for old, new in rotated:
        if old in canonical and len(mutants) < count:
            mutants[f"replace {old!r} by {new!r}"] = canonical.replace(old, new, 1)
    return mutants


def samples(record: dict, number: int) -> dict:
    """{name: whole program} for one problem."""
    prompt, canonical, entry = record["prompt"], record["canonical_solution"], record["entry_point"]
    programs = {"canonical": prompt + canonical}
    programs.update({name: prompt + body for name, body in operator_mutants(number, canonical).items()})
    if number % 9 == 0:
        programs["nudged by 3e-7"] = prompt + canonical + WRAP.format(entry=entry, body=NUDGE)
    if number % 23 == 0:
        programs["never returns"] = prompt + canonical + WRAP.format(entry=entry, body=HANG)
    return programs


PUBLISHED: dict = {}  # task -> {task_id: (solution, their base status, their plus status)} under --published


def published_solutions(directory: Path, task: str) -> dict:
    results = json.loads((directory / TASKS[task] / "generated_eval_results.json").read_text())["eval"]
    return {task_id: (r[0]["solution"], r[0]["base_status"], r[0]["plus_status"]) for task_id, r in results.items()}


def all_samples(task: str, limit: int) -> list:
    chosen = records(TASKS[task])[:limit or None]
    if task in PUBLISHED:
        return [(r["task_id"], PUBLISHED_SAMPLE, PUBLISHED[task][r["task_id"]][0]) for r in chosen
                if r["task_id"] in PUBLISHED[task]]
    return [(r["task_id"], name, program) for number, r in enumerate(chosen)
            for name, program in samples(r, number).items()]


def ours(task: str, limit: int, sandbox: Sandbox) -> list:
    """Our verdicts, sample by sample (the harness takes one answer per problem: one round per mutant slot)."""
    problems = load_tasks([task], limit)[task]
    pending, verdicts = all_samples(task, limit), {}
    while pending:
        round_, seen = [], set()
        for item in pending:
            if item[0] not in seen:
                seen.add(item[0])
                round_.append(item)
        rows = score(get(task), problems, {t: Answer(p, SOLUTION) for t, _, p in round_}, sandbox)
        for (task_id, name, _), row in zip(round_, rows):
            verdicts[task_id, name] = dict(passed=row["passed"], base=row.get("base_status"),
                                           plus=row.get("plus_status"))
        pending = [item for item in pending if item not in round_]
    return [dict(task_id=t, sample=n, ours=verdicts[t, n]) for t, n, _ in all_samples(task, limit)]


def official(task: str, limit: int, python: str, workers: int) -> list:
    """evalplus.evaluate on the same samples (it needs every problem: with --limit the rest get the canonical)."""
    dataset = TASKS[task]
    with tempfile.TemporaryDirectory() as work:
        chosen = all_samples(task, limit)
        rest = [(r["task_id"], "canonical", r["prompt"] + r["canonical_solution"])
                for r in records(dataset)[limit:]] if limit else []
        path = Path(work) / "samples.jsonl"
        path.write_text("".join(json.dumps({"task_id": t, "solution": p}) + "\n" for t, _, p in chosen + rest))
        env = dict(os.environ, XDG_CACHE_HOME=work, PYTHONPATH="",
                   HUMANEVAL_OVERRIDE_PATH=str(FILES["humaneval"][0]), MBPP_OVERRIDE_PATH=str(FILES["mbpp"][0]))
        subprocess.run([python, "-m", "evalplus.evaluate", "--dataset", dataset, "--samples", str(path),
                        "--parallel", str(workers), "--i_just_wanna_run"], env=env, check=True, cwd=work)
        results = json.loads((Path(work) / "samples.eval_results.json").read_text())["eval"]
    by_task = {}
    for task_id, name, _ in chosen:
        by_task.setdefault(task_id, []).append(name)
    out = []
    for task_id, names in by_task.items():
        for name, result in zip(names, results[task_id]):  # evalplus keeps each problem's samples in file order
            out.append(dict(task_id=task_id, sample=name, official=dict(
                passed=result["base_status"] == result["plus_status"] == "pass", base=result["base_status"],
                plus=result["plus_status"])))
    return out


def agree(row: dict) -> bool:
    """Same pass/fail for the base tests and for base + plus (we skip plus once base failed)."""
    mine, theirs = row["ours"], row["official"]
    return mine["passed"] == theirs["passed"] and (mine["base"] == "pass") == (theirs["base"] == "pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evalplus-python", required=True, help="python of a venv with the official evalplus")
    parser.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--published", type=Path, help="a published evalplus outputs directory (replaces mutants)")
    args = parser.parse_args()
    out = PUBLISHED_OUT if args.published else OUT
    for task in TASKS if args.published else ():
        PUBLISHED[task] = published_solutions(args.published, task)
    report = {"evalplus": "master 26d6d00 (0.3.1 + fixes: find_zero, 4 s per-test floor)", "tasks": {}}
    for task in TASKS:
        started = time.time()
        theirs = official(task, args.limit, args.evalplus_python, args.workers)
        official_s = time.time() - started
        mine = ours(task, args.limit, Sandbox(workers=args.workers))
        rows = [dict(a, official=b["official"]) for a, b in zip(mine, theirs)]
        assert all(a["task_id"] == b["task_id"] and a["sample"] == b["sample"] for a, b in zip(mine, theirs))
        for row in rows:
            row["agree"] = agree(row)
            if task in PUBLISHED:
                solution, base, plus = PUBLISHED[task][row["task_id"]]
                row.update(solution_sha256=hashlib.sha256(solution.encode()).hexdigest(),
                           published=dict(base=base, plus=plus))
        report["tasks"][task] = dict(samples=len(rows), agree=sum(r["agree"] for r in rows),
                                     official_passed=sum(r["official"]["passed"] for r in rows),
                                     official_base_passed=sum(r["official"]["base"] == "pass" for r in rows),
                                     official_seconds=round(official_s), ours_seconds=round(time.time() - started
                                                                                           - official_s),
                                     rows=rows)
        print(task, {k: v for k, v in report["tasks"][task].items() if k != "rows"}, flush=True)
        out.write_text(json.dumps(report, indent=1) + "\n")  # after each benchmark: a long run keeps what it did


if __name__ == "__main__":
    main()
