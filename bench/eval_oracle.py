"""Full oracle of the evaluation tasks that have reference answers (default: humaneval, fim_singleline,
humaneval_plus, mbpp, mbpp_plus, cruxeval_input_cot, cruxeval_output_cot: 164 + 1,033 + 164 + 378 + 378 + 2 x 800
programs; add hm_fim, 4,792 exact matches, when $HM_FIM_DATA names its file) and the cost of the sandbox: the same
programs through evaluation.sandbox with namespaces, and (with --baseline) without them (unsafe mode: same
interpreter, limits and workers), in the same run.

    python bench/eval_oracle.py [--tasks a,b] [--workers N] [--baseline]

Prints each task's summary (pass@1 / exact match must all be 1.000) and the wall time.
"""
import argparse
import time

from evaluation.harness import score, summarize
from evaluation.sandbox import Sandbox
from evaluation.tasks import expand, get, load_tasks

TASKS = "humaneval,fim_singleline,humaneval_plus,mbpp,mbpp_plus,cruxeval_input_cot,cruxeval_output_cot"


def run(tasks: str, sandbox: Sandbox) -> tuple[list, float]:
    started = time.perf_counter()
    summaries = [summarize(name, score(name, problems, {p.task_id: get(name).oracle(p) for p in problems}, sandbox))
                 for name, problems in load_tasks(expand(tasks)).items()]
    return summaries, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help="also time the programs without namespaces")
    args = parser.parse_args()
    sandboxed, seconds = run(args.tasks, Sandbox(workers=args.workers))
    for summary in sandboxed:
        print(summary)
    print(f"sandboxed {seconds:.1f} s")
    if args.baseline:
        _, baseline = run(args.tasks, Sandbox(workers=args.workers, unsafe=True))
        print(f"without namespaces {baseline:.1f} s: {seconds / baseline:.2f}x")


if __name__ == "__main__":
    main()
